"""The command line on real files: outputs, batch folders, DICOM input, and clean failures."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import cycleinr.api
from cycleinr.cli import main
from conftest import ENGINE_DIR, SHARED_DATA


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_super_resolve_file_writes_expected_grid(tmp_path, thick_head_file, tiny_model_file, capsys):
    out = tmp_path / "out.nrrd"
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "3", "--model", tiny_model_file,
                 "--device", "cpu"]) == 0
    image, source = sitk.ReadImage(str(out)), sitk.ReadImage(str(thick_head_file))
    assert image.GetSize() == (48, 40, (16 - 1) * 3 + 1)
    assert image.GetOrigin() == pytest.approx(source.GetOrigin())
    assert image.GetSpacing()[2] == pytest.approx(source.GetSpacing()[2] / 3)
    assert "scale 3" in capsys.readouterr().out
    assert _files(tmp_path) == {"out.nrrd"}  # no temporary left behind


def test_spacing_and_axis_options(tmp_path, thick_head_file, tiny_model_file):
    out = tmp_path / "out.mha"
    assert main(["super-resolve", str(thick_head_file), str(out), "--spacing", "1.5", "--axis", "K",
                 "--model", tiny_model_file, "--device", "cpu"]) == 0
    assert sitk.ReadImage(str(out)).GetSpacing()[2] == pytest.approx(1.5)


def test_existing_output_needs_overwrite(tmp_path, thick_head_file, tiny_model_file, capsys):
    out = tmp_path / "out.nii.gz"
    out.write_bytes(b"keep me")
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "2", "--model", tiny_model_file]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu", "--overwrite"]) == 0
    assert sitk.ReadImage(str(out)).GetSize()[2] == 31


def test_output_never_replaces_input(tmp_path, thick_head_file, tiny_model_file, capsys):
    copy = tmp_path / "in.nii.gz"
    copy.write_bytes(thick_head_file.read_bytes())
    before = copy.read_bytes()
    assert main(["super-resolve", str(copy), str(copy), "--scale", "2", "--model", tiny_model_file,
                 "--overwrite"]) == 2
    assert "never modified" in capsys.readouterr().err
    assert copy.read_bytes() == before


def _write(tmp_path, name, image):
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def _bad_inputs(tmp_path):
    """(input path, extra args, expected words in the one-line error)."""
    rng = np.random.default_rng(0)
    good = sitk.GetImageFromArray(rng.normal(0, 1, (6, 8, 8)).astype(np.float32))
    nan = sitk.GetArrayFromImage(good)
    nan[2, 3, 3] = np.nan
    cases = [
        (_write(tmp_path, "flat.nii.gz", sitk.GetImageFromArray(np.zeros((8, 8), np.int16))), [], "2D"),
        (_write(tmp_path, "four.nii.gz", sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((3, 8, 8), np.int16))] * 2)),
         [], "4D"),
        (_write(tmp_path, "rgb.mha", sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True)),
         [], "components"),
        (_write(tmp_path, "nan.mha", sitk.GetImageFromArray(nan)), [], "NaN"),  # MetaImage keeps NaN bytes
        (_write(tmp_path, "single.nii.gz", sitk.GetImageFromArray(np.zeros((1, 8, 8), np.int16))), [], "single slice"),
        (_write(tmp_path, "ok.nii.gz", good), ["--scale", "1"], "greater than 1"),
        (_write(tmp_path, "ok2.nii.gz", good), ["--scale", "20"], "maximum"),
        (tmp_path / "missing.nii.gz", [], "not found"),
    ]
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"\x00" * 300)
    cases.append((garbage, [], "cannot read"))
    return cases


def test_bad_inputs_fail_cleanly_with_nothing_written(tmp_path, tiny_model_file, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for path, extra, words in _bad_inputs(tmp_path):
        args = ["super-resolve", str(path), str(out_dir / "result.nii.gz"), "--model", tiny_model_file]
        args += extra if extra else ["--scale", "2"]
        assert main(args) == 2, path.name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (path.name, err)
        assert _files(out_dir) == set(), path.name


def test_output_that_does_not_fit_in_memory_is_refused(tmp_path, thick_head_file, tiny_model_file, monkeypatch, capsys):
    import cycleinr.api
    monkeypatch.setattr(cycleinr.api, "_available_host_bytes", lambda: 10 << 20)
    assert main(["super-resolve", str(thick_head_file), str(tmp_path / "o.nii.gz"), "--scale", "16",
                 "--model", tiny_model_file, "--device", "cpu"]) == 2
    assert "available" in capsys.readouterr().err
    assert _files(tmp_path) == set()


def test_bad_model_files_are_refused(tmp_path, thick_head_file, tiny_model_file, capsys):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(Path(tiny_model_file).read_bytes()[:2000])
    pickle_file = tmp_path / "model.safetensors"
    pickle_file.write_bytes(b"\x80\x04\x95 this is a pickle, never unpickled")
    for bad in (truncated, pickle_file, tmp_path / "absent.safetensors"):
        assert main(["super-resolve", str(thick_head_file), str(tmp_path / "o.nii.gz"), "--scale", "2",
                     "--model", str(bad)]) == 2
        assert "cycleinr: error:" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()


def test_batch_folder(tmp_path, thick_head_file, tiny_model_file, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.nrrd"):
        sitk.WriteImage(sitk.ReadImage(str(thick_head_file))[:, :16, :], str(inputs / name))
    outputs = tmp_path / "out"
    loads = []
    real_load = cycleinr.api.load_model
    monkeypatch.setattr(cycleinr.api, "load_model", lambda *args: loads.append(args) or real_load(*args))
    assert main(["super-resolve", str(inputs), str(outputs), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"]) == 0
    assert _files(outputs) == {"a.nii.gz", "b.nii.gz"}
    assert len(loads) == 1  # one model for the whole batch (compiled once with --compile)


def test_batch_is_shared_across_torchrun_ranks(tmp_path, thick_head_file, tiny_model_file, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        sitk.WriteImage(sitk.ReadImage(str(thick_head_file))[:, :12, :], str(inputs / name))
    outputs = tmp_path / "out"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["super-resolve", str(inputs), str(outputs), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"]) == 0
    assert _files(outputs) == {"b.nii.gz"}  # rank 1 of 2 takes every second file


def _dicom_series() -> Path:
    series = SHARED_DATA / "tcga_thca_ct_dicom_subset"
    if not series.is_dir():
        pytest.skip(f"DICOM series not found at {series}")
    return series


def test_dicom_series_is_read_as_one_volume():
    from cycleinr.jobs import expected_output
    from cycleinr.volumes import read_image

    image = read_image(_dicom_series())
    assert image.GetSize() == (512, 512, 24)
    grid = expected_output(image, scale=2.5)
    assert grid.shape == (58, 512, 512) and grid.spacing[0] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_dicom_series_folder(tmp_path, tiny_model_file):
    series = _dicom_series()
    out = tmp_path / "dicom_sr.nii.gz"
    assert main(["super-resolve", str(series), str(out), "--scale", "2.5", "--model", tiny_model_file,
                 "--device", "cpu", "--tile-size", "24", "128", "128"]) == 0
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == (512, 512, 58)  # 24 slices at 2.5 mm -> floor(23 * 2.5) + 1
    assert image.GetSpacing()[2] == pytest.approx(1.0, abs=1e-3)


def test_console_script_reports_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ENGINE_DIR))
    done = subprocess.run([sys.executable, "-m", "cycleinr", "super-resolve", str(tmp_path / "nope.nii"),
                           str(tmp_path / "o.nii"), "--scale", "2"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"cycleinr: error: input not found: {tmp_path / 'nope.nii'}"]


def test_skip_below_option_reaches_the_engine(tmp_path, thick_head_file, tiny_model_file):
    """Above every voxel everything is skipped: the output is linear interpolation, not the network's."""
    from cycleinr.baselines import interpolate_image

    plain, skipped = tmp_path / "plain.nii.gz", tmp_path / "skipped.nii.gz"
    common = ["--scale", "2", "--model", tiny_model_file, "--device", "cpu"]
    assert main(["super-resolve", str(thick_head_file), str(plain)] + common) == 0
    assert main(["super-resolve", str(thick_head_file), str(skipped), "--skip-below", "5000"] + common) == 0
    linear = sitk.GetArrayFromImage(interpolate_image(sitk.ReadImage(str(thick_head_file)), scale=2)).astype(int)
    skipped_values = sitk.GetArrayFromImage(sitk.ReadImage(str(skipped))).astype(int)
    plain_values = sitk.GetArrayFromImage(sitk.ReadImage(str(plain))).astype(int)
    assert np.abs(skipped_values - linear).max() <= 1
    assert np.abs(plain_values - linear).max() > 1


def test_keep_acquired_is_the_default_and_can_be_turned_off(tmp_path, thick_head_file, tiny_model_file):
    kept, regenerated = tmp_path / "kept.nii.gz", tmp_path / "regenerated.nii.gz"
    common = ["--scale", "2", "--model", tiny_model_file, "--device", "cpu"]
    assert main(["super-resolve", str(thick_head_file), str(kept)] + common) == 0
    assert main(["super-resolve", str(thick_head_file), str(regenerated), "--no-keep-acquired"] + common) == 0
    source = sitk.GetArrayFromImage(sitk.ReadImage(str(thick_head_file)))
    kept_values = sitk.GetArrayFromImage(sitk.ReadImage(str(kept)))
    regenerated_values = sitk.GetArrayFromImage(sitk.ReadImage(str(regenerated)))
    axis = int(np.argmax(sitk.ReadImage(str(thick_head_file)).GetSpacing()[::-1]))
    take = lambda values, step: np.take(values, np.arange(0, values.shape[axis], step), axis=axis)
    assert np.array_equal(take(kept_values, 2), source)
    assert not np.array_equal(take(regenerated_values, 2), source)


def test_bundled_models_are_named_and_a_missing_one_is_refused(tmp_path, thick_head_file, capsys):
    from cycleinr.bundled import BUNDLED_MODELS, WEIGHTS_DIR, model_path

    assert model_path("ct-cpu") == WEIGHTS_DIR / BUNDLED_MODELS["ct-cpu"]
    assert model_path(str(tmp_path / "mine.safetensors")) == tmp_path / "mine.safetensors"
    # the paper-sized CT model is not bundled yet: a clear one-line refusal, nothing written
    output = tmp_path / "out.nii.gz"
    assert main(["super-resolve", str(thick_head_file), str(output), "--scale", "2", "--model", "ct"]) == 2
    assert "bundled model 'ct' is not installed here; installed: ct-cpu" in capsys.readouterr().err
    assert not output.exists()


def test_compile_flag_says_when_compiling_failed_and_still_writes(tmp_path, thick_head_file, tiny_model_file, monkeypatch,
                                                                   capsys):
    import torch

    def broken(function, **_options):
        def compiled(*args, **kwargs):
            raise RuntimeError("no C++ compiler here")
        return compiled
    monkeypatch.setattr(torch, "compile", broken)
    output = tmp_path / "o.nii.gz"
    assert main(["super-resolve", str(thick_head_file), str(output), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu", "--compile"]) == 0
    said = capsys.readouterr().err
    assert "warning: torch.compile failed for the encoder" in said and "no C++ compiler here" in said
    assert sitk.ReadImage(str(output)).GetSize()[2] == 2 * sitk.ReadImage(str(thick_head_file)).GetSize()[2] - 1
