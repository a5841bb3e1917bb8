"""DICOM out (--output-format dicom): a derived series a PACS can take, read back by independent
readers (SimpleITK's GDCM series reader, pydicom) on the real TCGA-THCA CT crop."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ENGINE_DIR, SAMPLE_CT, TEST_DATA

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

DICOM_CROP = TEST_DATA / "tcga_thca_ct_dicom_crop"


def read_series(folder: Path):
    reader = sitk.ImageSeriesReader()
    (series,) = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series))
    return reader.Execute()


def headers(folder: Path) -> list:
    return [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]


def assert_same_image(actual, expected, atol=1e-4):
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), atol=atol)
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), rtol=1e-7)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(actual), sitk.GetArrayFromImage(expected))


def cli(*args) -> int:
    from cycleinr.cli import main
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def cli_outputs(tmp_path_factory):
    """The same command (bundled model, x2.5 along the stacking axis) to DICOM and to NRRD."""
    folder = tmp_path_factory.mktemp("dicom_out")
    common = ["--scale", "2.5", "--no-progress"]
    assert cli("super-resolve", DICOM_CROP, folder / "series", "--output-format", "dicom", *common) == 0
    assert cli("super-resolve", DICOM_CROP, folder / "volume.nrrd", *common) == 0
    return folder / "series", folder / "volume.nrrd"


def test_series_read_back_equals_nrrd_output(cli_outputs):
    series, volume = cli_outputs
    written, expected = read_series(series), sitk.ReadImage(str(volume))
    assert expected.GetSize() == (96, 96, 18)  # floor(7 * 2.5) + 1 slices
    assert_same_image(written, expected)
    assert written.GetPixelID() == expected.GetPixelID()
    assert len(list(series.iterdir())) == 18


def test_every_file_has_the_right_attributes(cli_outputs):
    series, _ = cli_outputs
    source = sorted(headers(DICOM_CROP), key=lambda h: float(h.ImagePositionPatient[2]))
    written = headers(series)
    first = source[0]
    source_uids = {str(h.SOPInstanceUID) for h in source}
    uids = [str(h.SOPInstanceUID) for h in written]
    assert len(set(uids)) == len(written) and not set(uids) & source_uids
    assert {str(h.SeriesInstanceUID) for h in written} != {str(first.SeriesInstanceUID)}
    assert len({str(h.SeriesInstanceUID) for h in written}) == 1
    for h in written:
        assert pydicom.uid.UID(h.SOPInstanceUID).is_valid and h.file_meta.MediaStorageSOPInstanceUID == h.SOPInstanceUID
        assert h.SOPClassUID == first.SOPClassUID
        assert h.FrameOfReferenceUID == first.FrameOfReferenceUID
        for keyword in ("PatientName", "PatientID", "PatientSex", "PatientAge", "StudyInstanceUID", "StudyDate",
                        "StudyTime", "AccessionNumber", "StudyDescription", "Modality", "PatientIdentityRemoved"):
            assert h.get(keyword) == first.get(keyword), keyword
        assert list(h.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert "CycleINR" in h.SeriesDescription and "x2.5" in h.SeriesDescription
        assert "cycleinr_ct_cpu" in h.SeriesDescription
        assert (h.BitsAllocated, h.BitsStored, h.HighBit, h.PixelRepresentation) == (
            first.BitsAllocated, first.BitsStored, first.HighBit, first.PixelRepresentation)
        assert (float(h.RescaleSlope), float(h.RescaleIntercept)) == (float(first.RescaleSlope),
                                                                      float(first.RescaleIntercept))
        assert list(h.WindowCenter) == list(first.WindowCenter) and list(h.WindowWidth) == list(first.WindowWidth)
        assert list(h.ImageOrientationPatient) == list(first.ImageOrientationPatient)
        assert list(h.PixelSpacing) == list(first.PixelSpacing)
        assert float(h.SliceThickness) == pytest.approx(1.0) and float(h.SpacingBetweenSlices) == pytest.approx(1.0)
        assert (h.Rows, h.Columns) == (96, 96)
        # not copied: private tags, per-slice acquisition values, identifying equipment attributes
        assert not any(tag.is_private for tag in h.keys())
        for keyword in ("DeviceSerialNumber", "XRayTubeCurrent", "AcquisitionTime", "ImageComments",
                        "SmallestImagePixelValue", "LargestImagePixelValue", "TableHeight"):
            assert keyword not in h, keyword
        assert {str(i.ReferencedSOPInstanceUID) for i in h.SourceImageSequence} <= source_uids
        assert h.DerivationDescription
    # positions: one line along the normal, spacing 1.0 mm, starting at the first source slice
    by_number = sorted(written, key=lambda h: int(h.InstanceNumber))
    assert [int(h.InstanceNumber) for h in by_number] == list(range(1, 19))
    z = np.array([float(h.ImagePositionPatient[2]) for h in by_number])
    # the source numbers its slices head first (z falls as InstanceNumber rises); so does the output
    assert int(source[0].InstanceNumber) > int(source[-1].InstanceNumber)
    assert np.allclose(np.diff(z), -1.0)
    assert z.min() == pytest.approx(float(first.ImagePositionPatient[2]))
    for h in written:
        assert list(h.ImagePositionPatient[:2]) == list(first.ImagePositionPatient[:2])
        assert float(h.SliceLocation) == pytest.approx(float(h.ImagePositionPatient[2]))
        # an output slice on an acquired one names it alone, one between names the two around it
        refs = h.SourceImageSequence
        positions = [float(s.ImagePositionPatient[2]) for s in source
                     if str(s.SOPInstanceUID) in {str(r.ReferencedSOPInstanceUID) for r in refs}]
        z_here = float(h.ImagePositionPatient[2])
        if len(refs) == 1:
            assert positions[0] == pytest.approx(z_here)
        else:
            assert len(refs) == 2 and min(positions) < z_here < max(positions)
            assert max(positions) - min(positions) == pytest.approx(2.5)


def test_upsampling_an_in_plane_axis_keeps_the_stacking(tmp_path, tiny_model):
    """--axis I: the same 8 slices come out, each with more columns, and the series read back is
    the NRRD output of the same job."""
    from cycleinr.jobs import super_resolve_file

    options = dict(scale=2.5, slice_axis="I", model=tiny_model, device="cpu")
    super_resolve_file(DICOM_CROP, tmp_path / "series", output_format="dicom", **options)
    super_resolve_file(DICOM_CROP, tmp_path / "volume.nrrd", **options)
    expected = sitk.ReadImage(str(tmp_path / "volume.nrrd"))
    assert expected.GetSize() == (238, 96, 8)
    assert_same_image(read_series(tmp_path / "series"), expected)
    written = headers(tmp_path / "series")
    assert len(written) == 8
    assert {(h.Rows, h.Columns) for h in written} == {(96, 238)}
    assert [float(h.PixelSpacing[1]) for h in written] == pytest.approx([0.9765625 / 2.5] * 8)
    assert {float(h.SliceThickness) for h in written} == {5.0}  # the source's: slices unchanged
    # each output slice is an acquired slice's plane: it names that one slice as its source
    assert all(len(h.SourceImageSequence) == 1 for h in written)


def oblique_copy(folder: Path) -> Path:
    """The crop turned into an oblique series: orientation and positions rotated together."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xz", [20, 15], degrees=True).as_matrix()
    folder.mkdir()
    for path in sorted(DICOM_CROP.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        orientation = np.asarray(ds.ImageOrientationPatient, float)
        ds.ImageOrientationPatient = [round(float(v), 10) for v in
                                      (*rotation @ orientation[:3], *rotation @ orientation[3:])]
        ds.ImagePositionPatient = [round(float(v), 6) for v in rotation @ np.asarray(ds.ImagePositionPatient, float)]
        ds.save_as(folder / path.name)
    return folder


def test_oblique_series(tmp_path, tiny_model):
    from cycleinr.jobs import super_resolve_file

    source = oblique_copy(tmp_path / "oblique")
    options = dict(scale=3, model=tiny_model, device="cpu")
    super_resolve_file(source, tmp_path / "series", output_format="dicom", **options)
    super_resolve_file(source, tmp_path / "volume.nrrd", **options)
    expected = sitk.ReadImage(str(tmp_path / "volume.nrrd"))
    direction = np.asarray(expected.GetDirection()).reshape(3, 3)
    assert np.abs(direction - np.eye(3)).max() > 0.2  # truly oblique
    assert_same_image(read_series(tmp_path / "series"), expected)
    # the source's SliceLocation is its position along the (rotated) normal: so is the output's
    normal = np.cross(direction[:, 0], direction[:, 1])
    for h in headers(tmp_path / "series"):
        assert float(h.SliceLocation) == pytest.approx(float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))))
        assert list(h.ImageOrientationPatient) == pytest.approx(list(direction[:, 0]) + list(direction[:, 1]))


def test_negative_slice_direction_is_written_as_the_same_voxels(tmp_path, tiny_model):
    """An image stacked against the image normal (third direction column negative) is written as
    the same voxels in patient space: the reader stacks them along the normal."""
    from cycleinr.api import super_resolve_image
    from cycleinr.dicom_out import read_source_series, write_dicom_series

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(reversed(reader.GetGDCMSeriesFileNames(str(DICOM_CROP)))))
    flipped = reader.Execute()
    assert flipped.GetDirection()[8] == -1.0
    output, result = super_resolve_image(flipped, scale=2, model=tiny_model, device="cpu")
    write_dicom_series(output, read_source_series(DICOM_CROP), tmp_path / "series", scale=result.scale,
                       slice_axis=result.slice_axis, model_name=result.model_name)
    written = read_series(tmp_path / "series")
    array, expected = sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(output)
    np.testing.assert_array_equal(array, expected[::-1])
    last = output.TransformIndexToPhysicalPoint((0, 0, output.GetSize()[2] - 1))
    np.testing.assert_allclose(written.GetOrigin(), last, atol=1e-4)
    np.testing.assert_allclose(written.GetDirection(), np.eye(3).ravel(), atol=1e-9)
    # and its voxels sit where the output's did: same physical point, same value
    point = output.TransformIndexToPhysicalPoint((10, 20, 3))
    assert written[written.TransformPhysicalPointToIndex(point)] == output[10, 20, 3]


def test_non_dicom_input_is_refused_before_work(tmp_path, capsys):
    target = tmp_path / "series"
    assert cli("super-resolve", SAMPLE_CT, target, "--scale", "2", "--output-format", "dicom") == 2
    assert "--output-format dicom needs a DICOM series folder" in capsys.readouterr().err
    assert not target.exists()
    archive = tmp_path / "archive"
    archive.mkdir()
    shutil.copytree(DICOM_CROP, archive / "ct")
    shutil.copy(SAMPLE_CT, archive / "volume.nii.gz")
    assert cli("super-resolve", archive, tmp_path / "results", "--scale", "2", "--output-format", "dicom") == 2
    assert "volume.nii.gz is a volume file" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    # a DICOM series of another kind than CT or MR images (here: secondary capture) is refused too
    capture = tmp_path / "capture"
    capture.mkdir()
    for path in sorted(DICOM_CROP.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
        ds.save_as(capture / path.name)
    assert cli("super-resolve", capture, tmp_path / "out", "--scale", "2", "--output-format", "dicom") == 2
    assert "DICOM output supports CT and MR image series" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_batch_writes_one_series_folder_per_input(tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("a", "b"):
        shutil.copytree(DICOM_CROP, archive / name)
    assert cli("super-resolve", archive, tmp_path / "results", "--scale", "2", "--output-format", "dicom",
               "--no-progress") == 0
    series = {}
    for name in ("a", "b"):
        image = read_series(tmp_path / "results" / name)
        assert image.GetSize() == (96, 96, 15)
        series[name] = {str(h.SeriesInstanceUID) for h in headers(tmp_path / "results" / name)}
    assert len(series["a"]) == len(series["b"]) == 1 and series["a"] != series["b"]


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def write_as_derived(source_folder: Path, target: Path, **options) -> Path:
    """The writer alone (no network): the source's own volume as a derived series."""
    from cycleinr.dicom_out import read_source_series, write_dicom_series
    from cycleinr.volumes import read_image

    return write_dicom_series(read_image(source_folder), read_source_series(source_folder), target,
                              scale=1.0, slice_axis=0, model_name="none", **options)


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    from cycleinr import dicom_out
    from cycleinr.errors import OutputError

    saved = []
    original = dicom_out._save

    def fail_on_fourth(dataset, path):
        if len(saved) == 3:
            raise OSError(28, "No space left on device")
        saved.append(path)
        original(dataset, path)

    monkeypatch.setattr(dicom_out, "_save", fail_on_fourth)
    with pytest.raises(OutputError, match="No space left"):
        write_as_derived(DICOM_CROP, tmp_path / "series")
    assert len(saved) == 3 and entries(tmp_path) == []


@pytest.mark.parametrize("damage", ["pixel", "position"])
def test_a_file_that_fails_the_read_back_check_publishes_nothing(tmp_path, monkeypatch, damage):
    """The verification reads the files back: one damaged slice and the folder never appears,
    and an existing output being replaced stays as it was."""
    from cycleinr import dicom_out
    from cycleinr.errors import OutputError

    shutil.copytree(DICOM_CROP, tmp_path / "series")  # an earlier output (a folder of .dcm files)
    before = {p.name: p.read_bytes() for p in (tmp_path / "series").iterdir()}
    original = dicom_out._save

    def damage_slice_five(dataset, path):
        if int(dataset.InstanceNumber) == 5:
            if damage == "pixel":
                pixels = bytearray(dataset.PixelData)
                pixels[200] ^= 0x01
                dataset.PixelData = bytes(pixels)
            else:
                position = [float(v) for v in dataset.ImagePositionPatient]
                dataset.ImagePositionPatient = [position[0], position[1], position[2] + 0.4]
        original(dataset, path)

    monkeypatch.setattr(dicom_out, "_save", damage_slice_five)
    with pytest.raises(OutputError, match="failed its check"):
        write_as_derived(DICOM_CROP, tmp_path / "series", overwrite=True)
    assert entries(tmp_path) == ["series"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "series").iterdir()} == before


def test_a_failed_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    """Replacing: the old folder is moved aside, the new one renamed in; if that rename fails the
    old one is put back and the new one removed."""
    import os

    from cycleinr import dicom_out
    from cycleinr.errors import OutputError

    shutil.copytree(DICOM_CROP, tmp_path / "series")
    before = {p.name: p.read_bytes() for p in (tmp_path / "series").iterdir()}
    renames = []
    real_rename = os.rename

    def rename(source, target):
        renames.append(Path(source).name)
        if Path(source).name.endswith(".partial"):
            raise OSError(5, "Input/output error")
        real_rename(source, target)

    monkeypatch.setattr(dicom_out.os, "rename", rename)
    with pytest.raises(OutputError, match="Input/output error"):
        write_as_derived(DICOM_CROP, tmp_path / "series", overwrite=True)
    assert len(renames) == 3  # old aside, new in (fails), old back
    assert entries(tmp_path) == ["series"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "series").iterdir()} == before


def test_existing_output_refused_unless_overwrite(tmp_path, tiny_model, capsys):
    from cycleinr.errors import OutputError
    from cycleinr.jobs import super_resolve_file

    target = tmp_path / "series"
    target.mkdir()
    (target / "old.dcm").write_bytes(b"an earlier output")
    assert cli("super-resolve", DICOM_CROP, target, "--scale", "2", "--output-format", "dicom") == 2
    assert "output exists" in capsys.readouterr().err
    assert entries(target) == ["old.dcm"]
    super_resolve_file(DICOM_CROP, target, scale=2, model=tiny_model, device="cpu", output_format="dicom",
                       overwrite=True)
    assert "old.dcm" not in entries(target) and len(entries(target)) == 15
    assert entries(tmp_path) == ["series"]  # no temporary or old folder left beside it
    # never replaced: a folder holding other things, the input itself, a folder holding the input
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "report.txt").write_text("keep me")
    with pytest.raises(OutputError, match="other things than .dcm"):
        super_resolve_file(DICOM_CROP, tmp_path / "notes", scale=2, model=tiny_model, output_format="dicom",
                           overwrite=True)
    copy = shutil.copytree(DICOM_CROP, tmp_path / "input")
    for target in (copy, tmp_path, copy / "inside"):
        with pytest.raises(OutputError, match="input is never modified"):
            super_resolve_file(copy, target, scale=2, model=tiny_model, output_format="dicom", overwrite=True)
    assert entries(copy) == entries(DICOM_CROP)


@pytest.mark.slow
def test_cli_subprocess_writes_a_series(tmp_path):
    """The installed entry point path, as a data manager runs it."""
    import os
    env = dict(os.environ, PYTHONPATH=str(ENGINE_DIR), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "cycleinr", "super-resolve", str(DICOM_CROP), str(tmp_path / "out"),
                           "--spacing", "1.25", "--output-format", "dicom"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert read_series(tmp_path / "out").GetSpacing()[2] == pytest.approx(1.25)


def test_values_outside_the_source_encoding_are_written_without_loss(tmp_path):
    """A value the source's 12-bit unsigned encoding (intercept -1024) cannot hold (-2000) is not
    clipped: the intercept is refitted with a warning and the series still reads back exactly."""
    from cycleinr.dicom_out import read_source_series, write_dicom_series
    from cycleinr.volumes import read_image

    image = read_image(DICOM_CROP)
    array = sitk.GetArrayFromImage(image)
    array[2, 10:20, 10:20] = -2000
    array[5, 0, 0] = 3500  # above 4095 - 1024 too
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    with pytest.warns(UserWarning, match="do not fit the source's rescale"):
        write_dicom_series(changed, read_source_series(DICOM_CROP), tmp_path / "series", scale=1.0,
                           slice_axis=0, model_name="test")
    assert_same_image(read_series(tmp_path / "series"), changed)
    written = headers(tmp_path / "series")
    assert {(h.BitsAllocated, h.BitsStored, float(h.RescaleSlope), float(h.RescaleIntercept)) for h in written} == {
        (16, 16, 1.0, -2000.0)}


def test_invalid_source_values_are_dropped_not_written(tmp_path):
    """A source value that breaks its VR (readers tolerate it) is left out with a warning; the
    written files stay valid under pydicom's strict reading."""
    sloppy = tmp_path / "sloppy"
    sloppy.mkdir()
    for path in sorted(DICOM_CROP.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientSex = "female"  # CS allows upper case, digits, space and _ only
        ds.save_as(sloppy / path.name)
    with pytest.warns(UserWarning) as caught:
        write_as_derived(sloppy, tmp_path / "series")
    messages = [str(w.message) for w in caught if "not copying" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("not copying PatientSex")
    assert {h.PatientSex for h in headers(tmp_path / "series")} == {""}  # type 2: present, empty


def test_float_output_is_quantised_to_the_source_rescale_step(tmp_path, tiny_model):
    """A series stored with a fractional slope (0.5, as MR and PET often are) is read as floats;
    the output keeps that slope, so it reads back within half a step of the engine's output, and
    exactly where the slice is an acquired one."""
    from cycleinr.api import super_resolve_image
    from cycleinr.dicom_out import read_source_series, write_dicom_series
    from cycleinr.volumes import read_image

    halved = tmp_path / "halved"
    halved.mkdir()
    for path in sorted(DICOM_CROP.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-512"
        ds.save_as(halved / path.name)
    image = read_image(halved)
    assert image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64)
    output, result = super_resolve_image(image, scale=2, model=tiny_model, device="cpu")
    write_dicom_series(output, read_source_series(halved), tmp_path / "series", scale=2, slice_axis=0,
                       model_name=result.model_name)
    written = read_series(tmp_path / "series")
    expected = sitk.GetArrayFromImage(output).astype(np.float64)
    array = sitk.GetArrayFromImage(written).astype(np.float64)
    assert np.abs(array - expected).max() <= 0.25 + 1e-6
    np.testing.assert_array_equal(array[::2], sitk.GetArrayFromImage(image))  # the acquired slices
    # the slope is the source's; the intercept too, or (where the untrained network's values leave
    # the source's range) moved by whole steps, so the source's values stay exact
    for h in headers(tmp_path / "series"):
        assert float(h.RescaleSlope) == 0.5 and (float(h.RescaleIntercept) + 512) % 0.5 == 0


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_finds_no_error_in_any_file(cli_outputs):
    """David Clunie's IOD validator, where installed (apt: dicom3tools), checks each file against
    the CT Image IOD: no errors (the source crop itself has some; they must not be carried over)."""
    series, _ = cli_outputs
    for path in sorted(series.glob("*.dcm")):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], f"{path.name}: {errors}"


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix not installed")
def test_dcm2niix_reads_the_same_voxels_where_they_were(cli_outputs, tmp_path):
    """An independent reader (dcm2niix, its own DICOM parser and slice sorting) puts every voxel of
    the series at the same point in patient space with the same value as the NRRD output."""
    series, volume = cli_outputs
    done = subprocess.run(["dcm2niix", "-z", "n", "-f", "converted", "-o", str(tmp_path), str(series)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    converted, expected = sitk.ReadImage(str(tmp_path / "converted.nii")), sitk.ReadImage(str(volume))
    on_grid = sitk.Resample(converted, expected, sitk.Transform(), sitk.sitkNearestNeighbor, -32768,
                            expected.GetPixelID())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid), sitk.GetArrayFromImage(expected))
