"""The training-data manifest and the script that rebuilds the training set from it."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, SHARED_DATA

DATA_DIR = REPO / "CycleINRTraining" / "data"
MANIFEST = DATA_DIR / "manifest.json"
DICOM_SUBSET = SHARED_DATA / "tcga_thca_ct_dicom_subset"
REQUIRED = {"id": str, "file": str, "patient": str, "source": dict, "licence": str, "attribution": str,
            "region": str, "size": list, "spacing": list, "noise_hu": float, "thin_axes": list, "use": str}
SOURCE_VERSION_KEY = {"github": "commit", "debian": "version", "shared": "origin"}


def _builder():
    spec = importlib.util.spec_from_file_location("build_training_set", DATA_DIR / "build_training_set.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def builder():
    return _builder()


@pytest.fixture(scope="module")
def manifest():
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def test_every_entry_has_the_fields_a_rebuild_and_a_licence_check_need(manifest):
    assert manifest["volumes"], "the manifest lists no volume"
    ids, files = set(), set()
    for entry in manifest["volumes"]:
        for key, kind in REQUIRED.items():
            assert isinstance(entry.get(key), kind), f"{entry.get('id')}: {key} missing or not {kind.__name__}"
        assert entry["licence"].strip() and entry["attribution"].strip(), entry["id"]
        assert entry["use"] in ("train", "holdout"), entry["id"]
        source = entry["source"]
        assert source.get("kind") in SOURCE_VERSION_KEY, entry["id"]
        assert str(source.get(SOURCE_VERSION_KEY[source["kind"]], "")).strip(), f"{entry['id']}: no commit/version"
        if source["kind"] == "github":
            assert len(source["commit"]) == 40 and int(source["commit"], 16) >= 0, entry["id"]
            assert source["repo"].count("/") == 1 and source["path"], entry["id"]
        if source["kind"] == "debian":
            assert source["package"] and source["path"], entry["id"]
        assert len(entry["size"]) == 3 and all(isinstance(n, int) and n > 0 for n in entry["size"]), entry["id"]
        assert len(entry["spacing"]) == 3 and all(s > 0 for s in entry["spacing"]), entry["id"]
        assert entry["file"].endswith(".nii.gz"), entry["id"]
        assert entry["id"] not in ids and entry["file"] not in files, f"duplicate {entry['id']}"
        ids.add(entry["id"])
        files.add(entry["file"])


def test_thin_axes_follow_from_the_spacing(manifest, builder):
    for entry in manifest["volumes"]:
        assert entry["thin_axes"] == builder.fine_axes(entry["spacing"]), entry["id"]


def test_no_entry_comes_from_a_source_kept_for_independent_checks(manifest, builder):
    forbidden = {name.lower() for name in builder.FORBIDDEN_REPOS}
    assert forbidden == {"plotly/dash-vtk", "neurolabusc/dcm_qa_ct"}
    for entry in manifest["volumes"]:
        text = json.dumps(entry["source"]).lower()
        assert not any(name in text for name in forbidden), entry["id"]
        assert "ricord" not in json.dumps(entry).lower(), entry["id"]


def test_loading_a_manifest_with_a_forbidden_source_is_refused(tmp_path, manifest, builder):
    entry = dict(manifest["volumes"][0], id="bad")
    entry["source"] = dict(entry["source"], kind="github", repo="neurolabusc/dcm_qa_ct")
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"volumes": [entry]}), encoding="utf-8")
    with pytest.raises(builder.BuildError, match="independent checks"):
        builder.load_manifest(path)


def test_holdouts_share_no_patient_with_training(manifest):
    train = {entry["patient"] for entry in manifest["volumes"] if entry["use"] == "train"}
    holdout = [entry for entry in manifest["volumes"] if entry["use"] == "holdout"]
    assert holdout, "no hold-out volume"
    assert not train & {entry["patient"] for entry in holdout}
    assert any("chest" in entry["region"] and "z" in entry["thin_axes"] and entry["spacing"][2] <= 1.25
               for entry in holdout), "no thin chest hold-out"
    assert any(("abdomen" in entry["region"] or "pelvis" in entry["region"]) and "z" in entry["thin_axes"]
               for entry in holdout), "no thin abdomen or pelvis hold-out"


def _copy_series(tmp_path: Path, count: int | None = None) -> Path:
    if not DICOM_SUBSET.is_dir():
        pytest.skip(f"real DICOM subset not found at {DICOM_SUBSET}")
    folder = tmp_path / "series"
    folder.mkdir()
    files = sorted(DICOM_SUBSET.glob("*.dcm"))[: count or None]
    for name in files:
        shutil.copy2(name, folder / name.name)
    return folder


def test_conversion_keeps_the_scanner_geometry_and_writes_int16_hu(tmp_path, builder):
    import SimpleITK as sitk

    folder = _copy_series(tmp_path, 6)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()

    info = builder.convert_to_nifti(folder, tmp_path / "out" / "ct.nii.gz")
    written = sitk.ReadImage(str(tmp_path / "out" / "ct.nii.gz"))
    assert written.GetPixelID() == sitk.sitkInt16
    assert info["size"] == [512, 512, 6] and list(written.GetSize()) == info["size"]
    np.testing.assert_allclose(written.GetSpacing(), reference.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    values, expected = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(reference)
    assert values.min() >= builder.AIR_HU
    np.testing.assert_array_equal(values, np.clip(np.rint(expected), builder.AIR_HU, None))
    assert 1.0 < info["noise_hu"] < 100.0
    assert not list((tmp_path / "out").glob("*.partial*"))


def test_a_series_with_a_missing_slice_is_refused(tmp_path, builder):
    folder = _copy_series(tmp_path, 6)
    sorted(folder.glob("*.dcm"))[3].unlink()
    with pytest.raises(builder.BuildError, match="uneven slice steps"):
        builder.convert_to_nifti(folder, tmp_path / "ct.nii.gz")
    assert not (tmp_path / "ct.nii.gz").exists()


def test_a_slice_range_builds_the_even_run_of_a_series_with_a_gap(tmp_path, builder):
    """Some public series miss slices (TCIA removed some): an entry can name the even run it uses."""
    import SimpleITK as sitk

    folder = _copy_series(tmp_path, 6)
    ordered = builder._series_files(folder, None)
    Path(ordered[4]).unlink()  # a gap between the 4th and the 6th slice
    with pytest.raises(builder.BuildError, match="uneven slice steps"):
        builder.convert_to_nifti(folder, tmp_path / "whole.nii.gz")

    info = builder.convert_to_nifti(folder, tmp_path / "run.nii.gz", slices={"first": 0, "count": 4})
    built = sitk.ReadImage(str(tmp_path / "run.nii.gz"))
    assert info["size"] == [512, 512, 4]
    reference = sitk.ReadImage(ordered[0])
    np.testing.assert_allclose(built.GetOrigin(), reference.GetOrigin(), atol=1e-3)
    with pytest.raises(builder.BuildError, match="uneven slice steps"):
        builder.convert_to_nifti(folder, tmp_path / "across.nii.gz", slices={"first": 2, "count": 3})
    with pytest.raises(builder.BuildError, match="slice range"):
        builder.convert_to_nifti(folder, tmp_path / "past.nii.gz", slices={"first": 3, "count": 4})
    assert not (tmp_path / "across.nii.gz").exists() and not (tmp_path / "past.nii.gz").exists()


def test_crop_keeps_physical_positions_and_build_verifies_against_the_entry(tmp_path, builder):
    import SimpleITK as sitk

    folder = _copy_series(tmp_path, 4)
    full = builder.read_volume(folder)
    crop = builder.body_crop(builder.to_int16_hu(full))
    assert crop["size"][0] < 512 or crop["size"][1] < 512  # the air around the patient is cut
    info = builder.convert_to_nifti(folder, tmp_path / "crop.nii.gz", crop=crop)
    cropped = sitk.ReadImage(str(tmp_path / "crop.nii.gz"))
    assert info["size"] == crop["size"]
    np.testing.assert_allclose(cropped.GetOrigin(), full.TransformIndexToPhysicalPoint(crop["index"]), atol=1e-3)

    entry = {"id": "t", "size": info["size"], "spacing": info["spacing"]}
    builder.verify(entry, info)
    with pytest.raises(builder.BuildError, match="size"):
        builder.verify(dict(entry, size=[512, 512, 4]), info)
    with pytest.raises(builder.BuildError, match="spacing"):
        builder.verify(dict(entry, spacing=[1.0, 1.0, 1.0]), info)


def test_files_are_copied_out_of_a_commit_of_a_local_git_directory(tmp_path, builder):
    repo = tmp_path / "repo"
    (repo / "scans" / "a").mkdir(parents=True)
    (repo / "scans" / "a" / "1.dcm").write_bytes(b"first")
    (repo / "scans" / "b.txt").write_text("other")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "scans"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (repo / "scans" / "a" / "1.dcm").write_bytes(b"changed later")
    subprocess.run(git + ["commit", "-q", "-am", "later"], check=True)

    assert builder.find_git_dir("someone/repo", tmp_path, {}) == repo / ".git"
    written = builder.copy_tree_from_commit(repo / ".git", commit, "scans/a", tmp_path / "out")
    assert written == 1
    assert (tmp_path / "out" / "scans" / "a" / "1.dcm").read_bytes() == b"first"
    with pytest.raises(builder.BuildError, match="nothing at"):
        builder.copy_tree_from_commit(repo / ".git", commit, "scans/missing", tmp_path / "out2")


def test_the_human_readable_table_lists_every_entry_with_its_use(manifest):
    table = (DATA_DIR / "MANIFEST.md").read_text(encoding="utf-8")
    for entry in manifest["volumes"]:
        row = next((line for line in table.splitlines() if line.startswith(f"| `{entry['id']}` |")), None)
        assert row is not None, f"{entry['id']} missing from MANIFEST.md"
        assert f"**{entry['use']}**" in row and entry["licence"] in row, entry["id"]
