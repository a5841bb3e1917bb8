"""What we write: a failed write never looks like success, and output goes only where it may.

Every case runs on real files (the head CT crop, the shared DICOM subset, files made here) and,
where a process boundary matters (file size limits, signals, kill -9, another user, mounts), in a
real ``cycleinr`` subprocess. Root can write anywhere a permission bit forbids, so permission
cases drop to the 'nobody' user and read-only / full file systems are real tmpfs mounts in a
private mount namespace (``unshare -m``); each skips, saying why, where that is not possible.
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cycleinr import save_model
from cycleinr.cli import main
from cycleinr.errors import InputError, OutputError
from conftest import ENGINE_DIR, HEAD_CT, SHARED_DATA


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(ENGINE_DIR), OMP_NUM_THREADS="1", **extra)


def _cycleinr(*args, limit_bytes=None, user=None, cwd=None, timeout=600):
    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-m", "cycleinr", *map(str, args)], capture_output=True, text=True,
                          env=_env(), preexec_fn=limit, user=user, cwd=cwd, timeout=timeout)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"stderr is not one line: {stderr!r}"
    assert lines[0].startswith("cycleinr:"), lines[0]
    return lines[0]


# ------------------------------------------------------------------ 1. short writes never pass

@pytest.mark.parametrize("name", ["o.nii", "o.nii.gz", "o.nrrd", "o.mha"])
def test_write_cut_short_by_the_file_size_limit_fails_and_keeps_the_good_output(tmp_path, thick_head_file,
                                                                                 tiny_model_file, name):
    out = tmp_path / name
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "3", "--model", tiny_model_file,
                 "--device", "cpu"]) == 0
    good = out.read_bytes()
    assert len(good) > 40_000
    done = _cycleinr("super-resolve", thick_head_file, out, "--scale", "3", "--model", tiny_model_file, "--device", "cpu",
                     "--overwrite", limit_bytes=16_384)
    assert done.returncode == 2, done.stderr
    line = _one_line_error(done.stderr)  # no raw "** ERROR: NWAD: wrote only N of M bytes" either
    assert f"cannot write {name}" in line and "ulimit -f" in line
    assert out.read_bytes() == good  # the good earlier result is untouched
    assert _hidden(tmp_path) == []


def test_batch_reports_a_short_write_as_failed(tmp_path, thick_head_file, tiny_model_file):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(thick_head_file, inputs / "a.nii.gz")
    done = _cycleinr("super-resolve", inputs, outputs, "--scale", "3", "--model", tiny_model_file, "--device", "cpu",
                     "--format", ".nii", limit_bytes=16_384)
    assert done.returncode == 2
    assert "done" not in done.stdout and "cannot write a.nii" in done.stderr
    assert list(outputs.iterdir()) == []


# ---------------------------------------------- 2. writability, names and clashes before work

def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt && umount /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _unshare_available(),
                                  reason="needs unshare -m and tmpfs mounts (root in a private mount namespace)")


def _in_mount(folder: Path, options: str, *args):
    """Run cycleinr with a fresh tmpfs mounted on ``folder`` (private to that process)."""
    command = " ".join(f"'{arg}'" for arg in [sys.executable, "-m", "cycleinr", *map(str, args)])
    script = f"mount -t tmpfs -o {options} tmpfs '{folder}' && exec {command}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=_env(),
                          timeout=600)


@needs_mounts
@pytest.mark.parametrize("options, reason", [("ro,size=1m", "read-only file system"),
                                             ("size=1m,nr_inodes=1", "no space left")])
def test_unwritable_file_system_is_refused_before_any_work(tmp_path, thick_head_file, options, reason):
    folder = tmp_path / "mount"
    folder.mkdir()
    # the model does not exist: a refusal that names the output proves the output was checked first
    done = _in_mount(folder, options, "super-resolve", thick_head_file, folder / "o.nii.gz", "--scale", "2",
                     "--model", tmp_path / "missing.safetensors")
    assert done.returncode == 2
    assert reason in _one_line_error(done.stderr)


@needs_mounts
@pytest.mark.slow
def test_disk_filling_up_during_the_run_gives_one_line_and_no_output(tmp_path):
    """A real full disk: the space is there when the run checks it, and another program fills it
    while the run works (bundled model, ~2.6 MB .nii output on a 4 MiB tmpfs)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    command = " ".join(f"'{arg}'" for arg in [sys.executable, "-m", "cycleinr", "super-resolve", HEAD_CT,
                                                folder / "o.nii", "--scale", "3", "--device", "cpu"])
    script = (f"mount -t tmpfs -o size=4m tmpfs '{folder}' && {{ {command} & }} && run=$! && "
              f"i=0; while ! ls -a '{folder}' | grep -q claim && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; sleep 2; "
              f"dd if=/dev/zero of='{folder}/filler' bs=64k 2>/dev/null; wait $run; code=$?; "
              f"ls -a '{folder}' 1>&2; exit $code")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=_env(),
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    assert lines[0].startswith("cycleinr: error: cannot write o.nii") and "no space left" in lines[0]
    assert sorted(lines[1:]) == [".", "..", "filler"]  # no output, no temporary, no claim


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to the 'nobody' user, which needs root")
def test_folder_without_write_permission_is_refused_before_any_work(thick_head_file):
    """As a normal user (nobody) in a root-owned 0755 folder: refused before work, exit 2."""
    shared = Path(tempfile.mkdtemp(prefix="cycleinr-perm-"))
    try:
        os.chmod(shared, 0o755)
        source = shared / "in.nii.gz"
        shutil.copy(thick_head_file, source)
        os.chmod(source, 0o644)
        try:
            done = _cycleinr("super-resolve", source, shared / "o.nii.gz", "--scale", "2",
                             "--model", shared / "missing.safetensors", user=65534, cwd=shared)
        except PermissionError:
            pytest.skip(f"{sys.executable} cannot be run by 'nobody' here (it lies under a private folder)")
        if done.returncode != 2 and "Error" in done.stderr and "cycleinr" not in done.stderr.splitlines()[-1]:
            pytest.skip(f"the Python environment is not usable by 'nobody': {done.stderr.splitlines()[-1]}")
        assert done.returncode == 2, done.stderr
        assert "permission denied" in _one_line_error(done.stderr)
        assert sorted(p.name for p in shared.iterdir()) == ["in.nii.gz"]
    finally:
        shutil.rmtree(shared)


def test_a_file_where_the_output_folder_should_be_is_refused(tmp_path, thick_head_file, capsys):
    (tmp_path / "notafolder").write_text("x")
    assert main(["super-resolve", str(thick_head_file), str(tmp_path / "notafolder" / "o.nii.gz"), "--scale", "2",
                 "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_long_legal_name_is_written_with_a_short_temporary_name(tmp_path, thick_head_file, tiny_model_file):
    name = "a" * 240 + ".nii.gz"  # 247 bytes: legal; '.<name>.<random>.partial.nii.gz' is not
    assert main(["super-resolve", str(thick_head_file), str(tmp_path / name), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"]) == 0
    assert sitk.ReadImage(str(tmp_path / name)).GetSize()[2] == 31
    assert _hidden(tmp_path) == []


def test_name_longer_than_the_file_system_allows_is_refused_before_work(tmp_path, thick_head_file, capsys):
    name = "a" * 300 + ".nii.gz"
    assert main(["super-resolve", str(thick_head_file), str(tmp_path / name), "--scale", "2",
                 "--model", str(tmp_path / "missing.safetensors")]) == 2
    assert "file name is 307 bytes long" in capsys.readouterr().err


def test_output_appearing_during_the_run_is_not_replaced(tmp_path, thick_head_file, tiny_model_file, monkeypatch, capsys):
    """Another program creates OUT while we write ours: without --overwrite it is kept, we fail."""
    out = tmp_path / "o.nii.gz"
    real = sitk.WriteImage

    def meanwhile(*args, **kwargs):
        out.write_bytes(b"someone else's result")
        return real(*args, **kwargs)

    monkeypatch.setattr(sitk, "WriteImage", meanwhile)
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"]) == 2
    assert "output exists" in capsys.readouterr().err
    assert out.read_bytes() == b"someone else's result"
    assert _hidden(tmp_path) == []


def _wait_for(predicate, seconds: float, step: float = 0.02) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cycleinr", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())


@pytest.mark.slow
def test_second_run_for_the_same_output_is_refused_at_its_start(tmp_path):
    """Two real runs race for one OUT (bundled model): the second is refused at once, the first
    writes a complete file; never a mixed one."""
    out = tmp_path / "o.nii.gz"
    first = _start("super-resolve", HEAD_CT, out, "--scale", "3", "--device", "cpu")
    try:
        assert _wait_for(lambda: any(p.name.endswith(".claim") for p in tmp_path.iterdir()), 60), \
            "the first run never claimed its output"
        began = time.monotonic()
        second = _cycleinr("super-resolve", HEAD_CT, out, "--scale", "3", "--device", "cpu")
        assert second.returncode == 2
        assert "being written by another cycleinr run" in _one_line_error(second.stderr)
        assert time.monotonic() - began < 30 and first.poll() is None  # refused before its own work
    finally:
        first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    assert sitk.ReadImage(str(out)).GetSize() == (96, 96, 142)
    assert _hidden(tmp_path) == []


def test_stale_claim_of_a_dead_run_does_not_block(tmp_path, thick_head_file, tiny_model_file):
    from cycleinr.output_files import _claim_path, _host_tag

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "o.nii.gz"
    _claim_path(out).write_text(f"{_host_tag()} {dead}")
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"]) == 0
    assert _hidden(tmp_path) == []


# ------------------------------------------------------------------- 3. never into an input

def _dicom_copy(tmp_path: Path) -> Path:
    series = SHARED_DATA / "tcga_thca_ct_dicom_subset"
    if not series.is_dir():
        pytest.skip(f"DICOM series not found at {series}")
    copy = tmp_path / "dcm"
    shutil.copytree(series, copy)
    return copy


def _digest(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_output_inside_a_dicom_input_folder_is_refused(tmp_path, tiny_model_file, capsys):
    series = _dicom_copy(tmp_path)
    before = _digest(series)
    assert main(["super-resolve", str(series), str(series / "out.nii.gz"), "--scale", "2", "--model",
                 tiny_model_file, "--device", "cpu"]) == 2
    assert "inside the input folder" in capsys.readouterr().err
    assert _digest(series) == before


def test_batch_output_folder_inside_its_input_folder_is_refused(tmp_path, thick_head_file, tiny_model_file, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(thick_head_file, inputs / "a.nii.gz")
    for target in (inputs / "results", inputs):
        assert main(["super-resolve", str(inputs), str(target), "--scale", "2", "--model", tiny_model_file,
                     "--device", "cpu"]) == 2
        assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in inputs.iterdir()) == ["a.nii.gz"]


def test_batch_output_named_like_a_file_is_refused(tmp_path, thick_head_file, tiny_model_file, capsys):
    """A DICOM folder holding an earlier result is a batch; 'res.nii.gz' must not become a folder."""
    series = _dicom_copy(tmp_path)
    shutil.copy(thick_head_file, series / "earlier.nii.gz")
    assert main(["super-resolve", str(series), str(tmp_path / "res.nii.gz"), "--scale", "2", "--model",
                 tiny_model_file, "--device", "cpu"]) == 2
    assert "the output must be a folder, not res.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "res.nii.gz").exists()


def test_batch_inputs_sharing_an_output_name_are_refused_before_work(tmp_path, thick_head_file, tiny_model_file, capsys):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    shutil.copy(thick_head_file, inputs / "a.nii.gz")
    sitk.WriteImage(sitk.ReadImage(str(thick_head_file)), str(inputs / "a.nrrd"))
    assert main(["super-resolve", str(inputs), str(outputs), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert list(outputs.iterdir()) == []


# ------------------------------------------------------------------------- 4. permissions

@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_new_outputs_get_the_mode_the_umask_says(tmp_path, thick_head_file, tiny_model_file, mask):
    previous = os.umask(mask)
    try:
        for name in ("o.nii.gz", "o.nrrd"):
            assert main(["super-resolve", str(thick_head_file), str(tmp_path / name), "--scale", "2", "--model",
                         tiny_model_file, "--device", "cpu"]) == 0
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask
    finally:
        os.umask(previous)


def test_overwrite_keeps_the_replaced_files_mode(tmp_path, thick_head_file, tiny_model_file):
    out = tmp_path / "o.nii.gz"
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"]) == 0
    os.chmod(out, 0o640)
    assert main(["super-resolve", str(thick_head_file), str(out), "--scale", "3", "--model", tiny_model_file,
                 "--device", "cpu", "--overwrite"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert sitk.ReadImage(str(out)).GetSize()[2] == 46


def test_worker_output_gets_the_umask_mode(tmp_path, thick_head_file, tiny_model_file):
    from cycleinr import worker

    out = tmp_path / "o.nrrd"
    previous = os.umask(0o022)
    try:
        args = worker.build_parser().parse_args(["--input", str(thick_head_file), "--output", str(out), "--scale", "2",
                                                 "--model", tiny_model_file, "--device", "cpu"])
        assert worker.run(args, stream=open(os.devnull, "w")) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


# ------------------------------------------------------ 6. constant in, the same constant out

@pytest.mark.parametrize("value, dtype", [(-1024, np.int16), (0, np.int16), (0.0, np.float32),
                                          (-3024, np.int16)])
def test_constant_volume_comes_back_as_that_constant_with_the_bundled_model(value, dtype):
    from cycleinr import super_resolve

    volume = np.full((10, 40, 36), value, dtype=dtype)
    result = super_resolve(volume, (5.0, 0.8, 0.8), scale=2.5, device="cpu")  # the bundled CT model
    assert result.model_name.startswith("cycleinr_ct")
    assert result.array.dtype == volume.dtype
    assert np.unique(result.array).tolist() == [value]


def test_constant_regions_of_a_real_ct_stay_exactly_constant(tiny_model):
    """Padding outside the field of view (-3024 HU, below the model's window) in a real CT: every
    output voxel whose 27 LR neighbours are all padding is padding; the rest is untouched."""
    from cycleinr import super_resolve

    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(HEAD_CT)))[::3, :48, :48].copy()
    volume[:, :, :12] = -3024
    result = super_resolve(volume, (4.5, 0.96, 0.96), scale=3, device="cpu", model=tiny_model, halo=2,
                           tile_size=[8, 24, 24])
    assert (result.array[:, :, :11] == -3024).all()  # columns 0..10: all 27 neighbours are padding
    assert (result.array[:, :, 13:] != -3024).all()


# ------------------------------------------------------------ 7. non-finite numeric options

@pytest.mark.parametrize("option", [["--skip-below", "nan"], ["--skip-below", "inf"], ["--scale", "inf"],
                                    ["--scale", "nan"], ["--spacing", "nan"], ["--tile-size", "0"],
                                    ["--halo", "-1"]])
def test_cli_refuses_non_finite_numbers(tmp_path, thick_head_file, option):
    scale = [] if option[0] in ("--scale", "--spacing") else ["--scale", "2"]
    done = _cycleinr("super-resolve", thick_head_file, tmp_path / "o.nii.gz", *scale, *option)
    assert done.returncode == 2
    assert option[0] in done.stderr.splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options", [dict(skip_below=math.nan), dict(skip_below=math.inf),
                                     dict(halo=math.nan), dict(halo=2.5), dict(tile_size=[math.inf]),
                                     dict(memory_budget=math.nan)])
def test_python_api_refuses_non_finite_numbers(tiny_model, options):
    from cycleinr import super_resolve

    options = dict({"scale": 2.0}, **options)
    with pytest.raises(InputError):
        super_resolve(np.zeros((6, 16, 16), np.int16), (3.0, 1.0, 1.0), model=tiny_model, device="cpu", **options)


# ------------------------------------------------------- 8. kill -9, SIGTERM, SIGINT

@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_cancel_cleanly(tmp_path, signum, code):
    out = tmp_path / "o.nii.gz"
    run = _start("super-resolve", HEAD_CT, out, "--scale", "3", "--device", "cpu")
    assert _wait_for(lambda: any(p.name.endswith(".claim") for p in tmp_path.iterdir()), 60)
    time.sleep(1.0)  # well into the work
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == code
    assert "interrupted" in _one_line_error(stderr)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_kill_during_the_write_leaves_nothing_a_later_run_does_not_clean(tmp_path, thick_head_file, tiny_model_file):
    out = tmp_path / "o.nii.gz"
    run = _start("super-resolve", HEAD_CT, out, "--scale", "5", "--device", "cpu")
    seen = _wait_for(lambda: any(".partial" in p.name for p in tmp_path.iterdir()), 300, step=0.001)
    run.kill()
    run.communicate()
    assert seen, "the run never started writing"
    assert not out.exists()
    assert _hidden(tmp_path)  # the dead writer's temporary (and claim) are there
    # a later run into the same folder removes them (their writer is dead), and writes its own
    assert main(["super-resolve", str(thick_head_file), str(tmp_path / "other.nii.gz"), "--scale", "2", "--model",
                 tiny_model_file, "--device", "cpu"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.nii.gz"]


def test_temporaries_of_live_writers_and_other_hosts_are_left_alone(tmp_path):
    from cycleinr.output_files import _host_tag, partial_name, remove_stale_partials

    mine_alive = tmp_path / partial_name(".nii.gz")  # this process: alive
    other_host = tmp_path / ".cycleinr-zzzzzz-1-abcdef.partial.nii.gz"
    unrelated = tmp_path / ".o.nii.gz.x1.partial.nii.gz"
    for path in (mine_alive, other_host, unrelated):
        path.write_bytes(b"x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    dead_partial = tmp_path / f".cycleinr-{_host_tag()}-{dead}-abcdef.partial.nrrd"
    dead_partial.write_bytes(b"x")
    assert remove_stale_partials(tmp_path) == [dead_partial]
    assert mine_alive.exists() and other_host.exists() and unrelated.exists()


# ----------------------------------------------------------------- 9. stderr is ours

def test_library_warnings_reach_stderr_as_our_own_lines(tmp_path):
    """A DICOM series with a slice missing makes ITK print a multi-line warning while reading."""
    series = _dicom_copy(tmp_path)
    (series / sorted(os.listdir(series))[12]).unlink()
    done = _cycleinr("super-resolve", series, tmp_path / "o.nii.gz", "--scale", "2",
                     "--model", tmp_path / "missing.safetensors")
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith(("cycleinr:", "warning:")) for line in lines), done.stderr
    assert not (tmp_path / "o.nii.gz").exists()


# ------------------------------------------------- checkpoints, weights and reports as well

def _truncating_save_file(real):
    """safetensors' save_file, then the file cut to half as a full disk would leave it."""
    def save_file(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as handle:
            handle.truncate(size // 2)
    return save_file


def test_weights_cut_short_never_replace_good_weights(tmp_path, tiny_model, monkeypatch):
    import safetensors.torch

    from cycleinr import load_model

    path = save_model(tmp_path / "model.safetensors", tiny_model.network, tiny_model.info)
    good = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", _truncating_save_file(safetensors.torch.save_file))
    with pytest.raises(OutputError, match="incomplete"):
        save_model(path, tiny_model.network, tiny_model.info)
    assert path.read_bytes() == good
    load_model(path)
    assert _hidden(tmp_path) == []


def test_checkpoint_cut_short_never_replaces_the_last_good_one(tmp_path, tiny_model, monkeypatch):
    import safetensors.torch
    import torch

    from cycleinr import train as training

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    optimiser = torch.optim.Adam(tiny_model.network.parameters(), lr=1e-4)

    class Sampler:
        def state(self):
            return {"seed": 0}

    training._save_checkpoint(run_dir, tiny_model.network, tiny_model.info, optimiser, Sampler(), 1, 1.0,
                              training.TrainOptions(data=[], output=str(run_dir)))
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    monkeypatch.setattr(safetensors.torch, "save_file", _truncating_save_file(safetensors.torch.save_file))
    with pytest.raises(OutputError, match="incomplete"):
        training._save_checkpoint(run_dir, tiny_model.network, tiny_model.info, optimiser, Sampler(), 2, 2.0,
                                  training.TrainOptions(data=[], output=str(run_dir)))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before


def test_report_written_atomically_with_the_umask_mode(tmp_path):
    from cycleinr.output_files import write_text_atomically

    previous = os.umask(0o022)
    try:
        path = write_text_atomically("a,b\n1,2\n", tmp_path / "eval.csv")
    finally:
        os.umask(previous)
    assert path.read_text() == "a,b\n1,2\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    done = subprocess.run([sys.executable, "-c", "from cycleinr.output_files import write_text_atomically as w; "
                           f"w('x' * 100000, {str(tmp_path / 'eval.csv')!r})"], capture_output=True, text=True,
                          env=_env(), preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)))
    assert done.returncode != 0 and "OutputError" in done.stderr
    assert path.read_text() == "a,b\n1,2\n" and _hidden(tmp_path) == []
