"""Input integrity on real files damaged in the test: each must be refused before work with a
one-line reason (CLI exit 2, no traceback), nothing written, every input byte-identical.

Volumes are copies of the Testing/Data head CT crop; DICOM cases are copies of slices of the
shared TCGA series (skipped where ../shared/data is absent), edited with pydicom.
"""
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cycleinr.cli import main
from cycleinr.errors import InputError
from cycleinr.volumes import read_image
from conftest import ENGINE_DIR, HEAD_CT, SHARED_DATA

DICOM_SERIES = SHARED_DATA / "tcga_thca_ct_dicom_subset"


@pytest.fixture(scope="module")
def small_ct():
    """A small real CT: the head crop, every 3rd slice (int16)."""
    return sitk.ReadImage(str(HEAD_CT))[:40, :36, ::3]


def _write(image, path: Path, compress: bool = True) -> Path:
    sitk.WriteImage(image, str(path), compress)
    return path


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _refused_by_cli(source: Path, out_dir: Path, capture, extra=()) -> str:
    """Run super-resolve on ``source``: exit 2, one stderr line, no output, inputs unchanged.
    With capfd, what the C++ libraries print on file descriptor 2 counts too."""
    inputs = source.parent
    before = _digests(inputs)
    out_dir.mkdir(exist_ok=True)
    capture.readouterr()  # what making the input printed (e.g. ITK writer warnings) is not the run's
    code = main(["super-resolve", str(source), str(out_dir / "result.nii.gz"), "--scale", "2",
                 "--device", "cpu", *extra])
    err = capture.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("cycleinr: error:"), err
    assert list(out_dir.iterdir()) == []
    assert _digests(inputs) == before
    return err


# --- NIfTI: truncated, corrupt, lying, NaN ---------------------------------------------------------

def test_truncated_nifti_gz_is_refused(tmp_path, small_ct, capfd):
    (tmp_path / "in").mkdir()
    source = _cut(_write(small_ct, tmp_path / "in" / "ct.nii.gz"), 0.5)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(source))).shape  # SimpleITK reads it "fine"
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "ct.nii.gz is truncated" in err and "gzip end marker" in err


def test_truncated_plain_nifti_is_refused(tmp_path, small_ct, capfd):
    (tmp_path / "in").mkdir()
    source = _cut(_write(small_ct, tmp_path / "in" / "ct.nii", False), 0.7)
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "ct.nii is truncated" in err and "bytes of voxel data its header declares" in err


def test_nifti_longer_than_its_header_says_is_refused(tmp_path, small_ct, capfd):
    (tmp_path / "in").mkdir()
    source = _write(small_ct, tmp_path / "in" / "ct.nii", False)
    with open(source, "ab") as stream:
        stream.write(b"\0" * 4000)  # e.g. a header edited to fewer slices than the data holds
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "the header does not describe this data" in err


@pytest.mark.parametrize("where", ["middle", "trailer"])
def test_corrupt_gzip_data_is_refused(tmp_path, small_ct, capfd, where):
    (tmp_path / "in").mkdir()
    source = _write(small_ct, tmp_path / "in" / "ct.nii.gz")
    data = bytearray(source.read_bytes())
    data[len(data) // 2 if where == "middle" else -8] ^= 0x55  # a byte of the deflate data / the CRC
    source.write_bytes(bytes(data))
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "ct.nii.gz is damaged" in err


def test_corrupt_gzip_data_that_simpleitk_reads_is_refused(tmp_path, capfd):
    """A flipped byte inside the deflate data of the whole head CT crop: SimpleITK decodes it
    without a word (other voxels); the gzip CRC-32 says it is not what was written."""
    (tmp_path / "in").mkdir()
    source = tmp_path / "in" / "head.nii.gz"
    data = bytearray(HEAD_CT.read_bytes())
    data[len(data) // 2] ^= 0x55
    source.write_bytes(bytes(data))
    silently = sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
    assert not np.array_equal(silently, sitk.GetArrayFromImage(sitk.ReadImage(str(HEAD_CT))))
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "head.nii.gz is damaged: its data does not match the CRC-32 recorded in its gzip trailer" in err


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_in_float_nifti_is_refused_though_the_reader_shows_zero(tmp_path, small_ct, capfd, suffix):
    (tmp_path / "in").mkdir()
    volume = sitk.GetArrayFromImage(small_ct).astype(np.float32)
    volume[3, 4, 5], volume[6, 7, 8] = np.nan, np.inf
    image = sitk.GetImageFromArray(volume)
    image.CopyInformation(small_ct)
    source = _write(image, tmp_path / "in" / f"ct{suffix}")
    as_read = sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
    assert as_read[3, 4, 5] == 0 and as_read[6, 7, 8] == 0  # niftilib's nifti_read_buffer zeroes them
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "holds 2 NaN or infinite voxel values" in err and "i=5, j=4, k=3" in err


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nan_in_other_formats_is_refused_on_every_read_path(tmp_path, small_ct, suffix):
    volume = sitk.GetArrayFromImage(small_ct).astype(np.float32)
    volume[2, 2, 2] = np.nan
    image = sitk.GetImageFromArray(volume)
    image.CopyInformation(small_ct)
    source = _write(image, tmp_path / f"ct{suffix}")
    with pytest.raises(InputError, match="holds 1 NaN or infinite voxel values"):
        read_image(source)  # what train/fit/eval read through, not only the engine's own check


def test_header_claiming_more_voxels_than_memory_is_refused_before_reading(tmp_path, small_ct, capfd):
    (tmp_path / "in").mkdir()
    source = _write(small_ct, tmp_path / "in" / "huge.nii", False)
    header = bytearray(source.read_bytes())
    header[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()  # dim[1..3]: 50 TiB of int16
    source.write_bytes(bytes(header))
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "huge.nii claims 50,291.4 GiB of voxels" in err and "refused before reading" in err


# --- MetaImage and NRRD: truncated data, data files elsewhere --------------------------------------

@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_truncated_mha_and_nrrd_are_refused_with_the_reason(tmp_path, small_ct, capfd, suffix, compress):
    (tmp_path / "in").mkdir()
    source = _cut(_write(small_ct, tmp_path / "in" / f"ct{suffix}", compress), 0.6)
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert f"ct{suffix} is truncated" in err


def test_corrupt_compressed_mha_is_refused(tmp_path, capsys):
    """SimpleITK reads it without raising (other voxels; MetaIO prints "Uncompress failed" on fd 2,
    hence capsys here); the zlib stream's Adler-32 says it is damaged."""
    (tmp_path / "in").mkdir()
    source = _write(sitk.ReadImage(str(HEAD_CT)), tmp_path / "in" / "head.mha", True)
    data = bytearray(source.read_bytes())
    data[len(data) * 2 // 3] ^= 0x55  # a byte of the zlib data
    source.write_bytes(bytes(data))
    silently = sitk.GetArrayFromImage(sitk.ReadImage(str(source)))
    assert not np.array_equal(silently, sitk.GetArrayFromImage(sitk.ReadImage(str(HEAD_CT))))
    err = _refused_by_cli(source, tmp_path / "out", capsys)
    assert "head.mha is damaged: its data does not match the Adler-32 checksum" in err


def test_nrrd_longer_than_its_header_says_is_refused(tmp_path, small_ct, capfd):
    (tmp_path / "in").mkdir()
    source = _write(small_ct, tmp_path / "in" / "ct.nrrd", False)
    with open(source, "ab") as stream:
        stream.write(b"\0" * 2048)
    assert sitk.ReadImage(str(source)).GetSize() == small_ct.GetSize()  # teem ignores the extra bytes
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "the header does not describe this data" in err


def test_truncated_mhd_data_file_is_refused(tmp_path, small_ct, capfd):
    (tmp_path / "in").mkdir()
    source = _write(small_ct, tmp_path / "in" / "ct.mhd", False)
    _cut(tmp_path / "in" / "ct.raw", 0.5)
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "ct.mhd is truncated" in err and "(50.0 %)" in err


def _metaimage_header(data_file: str, size=(8, 8, 8)) -> str:
    return ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
            "CompressedData = False\nElementSpacing = 1 1 2\n"
            f"DimSize = {size[0]} {size[1]} {size[2]}\nElementType = MET_UCHAR\nElementDataFile = {data_file}\n")


def test_mha_with_data_elsewhere_is_refused(tmp_path, capfd):
    """The issue's case: an .mha whose ElementDataFile names a host file (here a secret beside the
    inputs, and /etc/passwd where there is one): its bytes must never become voxels."""
    secret = tmp_path / "private" / "secret.bin"
    secret.parent.mkdir()
    secret.write_bytes(os.urandom(4096))
    (tmp_path / "in").mkdir()
    targets = [str(secret)] + (["/etc/passwd"] if Path("/etc/passwd").is_file() else [])
    for target in targets:
        source = tmp_path / "in" / "upload.mha"
        source.write_text(_metaimage_header(target, (4, 4, 4)))
        assert sitk.ReadImage(str(source)).GetSize() == (4, 4, 4)  # SimpleITK reads the host file
        err = _refused_by_cli(source, tmp_path / "out", capfd)
        assert "not LOCAL" in err and target in err


@pytest.mark.parametrize("where", ["absolute", "parent", "symlink"])
def test_mhd_data_file_outside_its_folder_is_refused(tmp_path, capfd, where):
    secret = tmp_path / "private" / "secret.raw"
    secret.parent.mkdir()
    secret.write_bytes(os.urandom(512))
    (tmp_path / "in").mkdir()
    if where == "symlink":
        (tmp_path / "in" / "data.raw").symlink_to(secret)
    name = {"absolute": str(secret), "parent": "../private/secret.raw", "symlink": "data.raw"}[where]
    source = tmp_path / "in" / "ct.mhd"
    source.write_text(_metaimage_header(name))
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "outside the header's own folder" in err


def test_mhd_and_nhdr_with_data_beside_them_are_read(tmp_path, small_ct):
    for name in ("ct.mhd", "ct.nhdr"):
        image = read_image(_write(small_ct, tmp_path / name, False))
        assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(small_ct))


def test_nhdr_data_file_outside_its_folder_is_refused(tmp_path, small_ct, capfd):
    (tmp_path / "private").mkdir()
    (tmp_path / "in").mkdir()
    _write(small_ct, tmp_path / "private" / "ct.nhdr", False)
    header = (tmp_path / "private" / "ct.nhdr").read_text()
    source = tmp_path / "in" / "ct.nhdr"
    source.write_text(header.replace("data file: ct.raw", "data file: ../private/ct.raw"))
    assert sitk.ReadImage(str(source)).GetSize() == small_ct.GetSize()  # SimpleITK follows it
    err = _refused_by_cli(source, tmp_path / "out", capfd)
    assert "'../private/ct.raw', outside the header's own folder" in err


def test_good_files_of_every_format_read_as_simpleitk_reads_them(tmp_path, small_ct):
    for name, compress in (("a.nii.gz", True), ("b.nii", False), ("c.nrrd", True), ("d.mha", True),
                           ("e.mha", False), ("f.mhd", True)):
        image = read_image(_write(small_ct, tmp_path / name, compress))
        assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(small_ct)), name


# --- DICOM series --------------------------------------------------------------------------------

@pytest.fixture
def dicom_copy(tmp_path):
    """Eight consecutive real slices of the shared TCGA series, writable, in tmp_path/series."""
    if not DICOM_SERIES.is_dir():
        pytest.skip(f"shared DICOM series not found at {DICOM_SERIES} (set CYCLEINR_SHARED_DATA)")
    folder = tmp_path / "series"
    folder.mkdir()
    for source in sorted(DICOM_SERIES.glob("*.dcm"))[:8]:  # 1-121 ... 1-128, 2.5 mm apart
        shutil.copyfile(source, folder / source.name)
    return folder


def _edit(path: Path, change) -> None:
    import pydicom
    header = pydicom.dcmread(path)
    change(header)
    header.save_as(path)


def _z(path: Path) -> float:
    import pydicom
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_dicom_copy_reads_with_its_spacing(dicom_copy):
    image = read_image(dicom_copy)
    assert image.GetSize() == (512, 512, 8) and image.GetSpacing()[2] == pytest.approx(2.5)


def test_dicom_folder_with_a_non_dicom_file_still_reads(dicom_copy):
    (dicom_copy / "README.txt").write_text("exported by a PACS client\n")
    assert read_image(dicom_copy).GetSize() == (512, 512, 8)


def test_dicom_series_with_a_missing_slice_names_the_position(dicom_copy, tmp_path, capfd):
    missing = _z(dicom_copy / "1-125.dcm")
    (dicom_copy / "1-125.dcm").unlink()
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert f"1 slice missing: position {missing:.2f} mm" in err
    assert "between 1-126.dcm" in err and "and 1-124.dcm" in err


def test_dicom_series_with_a_duplicate_slice_is_refused(dicom_copy, tmp_path, capfd):
    shutil.copyfile(dicom_copy / "1-124.dcm", dicom_copy / "copy-of-124.dcm")
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert f"two slices at position {_z(dicom_copy / '1-124.dcm'):.2f} mm" in err
    assert "1-124.dcm and copy-of-124.dcm" in err


def test_dicom_series_unevenly_spaced_is_refused(dicom_copy, tmp_path, capfd):
    def shift(header):
        x, y, z = (float(v) for v in header.ImagePositionPatient)
        header.ImagePositionPatient = [x, y, z + 1.0]
    _edit(dicom_copy / "1-128.dcm", shift)  # the last slice: 1.5 mm from its neighbour, not 2.5
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert "unevenly spaced slices: 1.500 mm between 1-128.dcm and 1-127.dcm, 2.500 mm elsewhere" in err


def test_dicom_folder_mixing_series_is_refused(dicom_copy, tmp_path, capfd):
    import pydicom
    other = pydicom.uid.generate_uid()
    for name in ("1-121.dcm", "1-122.dcm"):
        _edit(dicom_copy / name, lambda header: setattr(header, "SeriesInstanceUID", other))
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert "mixes 2 DICOM series" in err and "2 files of series" in err and "6 files of series" in err


def test_dicom_series_mixing_orientations_is_refused(dicom_copy, tmp_path, capfd):
    _edit(dicom_copy / "1-124.dcm",
          lambda header: setattr(header, "ImageOrientationPatient", [1, 0, 0, 0, 0.9950042, 0.0998334]))
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert "mixes slice orientations: 1-124.dcm" in err


def test_dicom_series_mixing_sizes_is_refused(dicom_copy, tmp_path, capfd):
    def crop(header):
        pixels = header.pixel_array[:256, :256].copy()
        header.Rows, header.Columns, header.PixelData = 256, 256, pixels.tobytes()
    _edit(dicom_copy / "1-126.dcm", crop)
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert "mixes slice sizes: 1-126.dcm is 256x256" in err


def test_dicom_series_with_gantry_tilt_is_refused(dicom_copy, tmp_path, capfd):
    def tilt(header):  # what a tilted gantry gives: each slice shifted in y by z * tan(12°)
        x, y, z = (float(v) for v in header.ImagePositionPatient)
        header.ImagePositionPatient = [x, y + z * np.tan(np.radians(12)), z]
        header.GantryDetectorTilt = 12
    for path in dicom_copy.iterdir():
        _edit(path, tilt)
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert "gantry-tilted (sheared) series: the slices step 12.00° off their normal" in err


def test_dicom_series_with_a_truncated_slice_is_refused(dicom_copy, tmp_path, capfd):
    _cut(dicom_copy / "1-123.dcm", 0.9)
    err = _refused_by_cli(dicom_copy, tmp_path / "out", capfd)
    assert "1-123.dcm is truncated: its pixel data needs 524,288 bytes" in err


# --- every read path and the batch ---------------------------------------------------------------

@pytest.fixture
def truncated_ct(tmp_path, small_ct):
    folder = tmp_path / "bad"
    folder.mkdir()
    return _cut(_write(small_ct, folder / "damaged.nii.gz"), 0.5)


def test_batch_with_one_bad_file_does_the_others_and_names_it(tmp_path, small_ct, truncated_ct, tiny_model_file,
                                                             capsys):
    inputs = tmp_path / "batch"
    inputs.mkdir()
    _write(small_ct, inputs / "good.nii.gz")
    shutil.copyfile(truncated_ct, inputs / "damaged.nii.gz")
    before = _digests(inputs)
    code = main(["super-resolve", str(inputs), str(tmp_path / "results"), "--scale", "2",
                 "--model", tiny_model_file, "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["good.nii.gz"]
    assert "damaged.nii.gz" in captured.err and "is truncated" in captured.err
    assert "1 of 2 volumes failed" in captured.err
    assert _digests(inputs) == before


def test_training_and_validation_reads_refuse_a_damaged_volume(truncated_ct):
    from cycleinr.train import load_training_volumes
    from cycleinr.validation import load_validation_volume

    with pytest.raises(InputError, match="damaged.nii.gz is truncated"):
        load_training_volumes([str(truncated_ct)], "ct", 1.6)
    with pytest.raises(InputError, match="damaged.nii.gz is truncated"):
        load_validation_volume(truncated_ct)


def test_eval_refuses_a_damaged_volume_before_any_work(tmp_path, small_ct, truncated_ct, capfd):
    good = _write(small_ct, tmp_path / "good.nii.gz")
    code = main(["eval", "--data", str(good), str(truncated_ct), "--scales", "2", "--methods", "trilinear",
                 "--no-lpips", "--out", str(tmp_path / "report")])
    err = capfd.readouterr().err
    assert code == 2 and "damaged.nii.gz is truncated" in err
    assert "good" not in err  # refused before the good volume was evaluated


def test_fit_refuses_a_damaged_volume(tmp_path, truncated_ct, capfd):
    code = main(["fit", str(truncated_ct), str(tmp_path / "out.nii.gz"), "--scale", "2", "--steps", "1"])
    assert code == 2 and "damaged.nii.gz is truncated" in capfd.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()


def test_slicer_worker_reports_a_damaged_volume(tmp_path, truncated_ct):
    import io

    from cycleinr import worker

    stream = io.StringIO()
    args = worker.build_parser().parse_args(["--input", str(truncated_ct), "--output", str(tmp_path / "o.nrrd"),
                                             "--scale", "2", "--device", "cpu"])
    assert worker.run(args, stream) == worker.EXIT_INPUT
    assert stream.getvalue().startswith("ERROR InputError: damaged.nii.gz is truncated")
    assert not (tmp_path / "o.nrrd").exists()


def test_console_script_exits_2_without_traceback(truncated_ct, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ENGINE_DIR))
    before = _digests(truncated_ct.parent)
    done = subprocess.run([sys.executable, "-m", "cycleinr", "super-resolve", str(truncated_ct),
                           str(tmp_path / "o.nii.gz"), "--scale", "2"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cycleinr: error: damaged.nii.gz is truncated: its compressed data ends before the gzip end marker "
        "(an interrupted copy?)"]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "o.nii.gz").exists() and _digests(truncated_ct.parent) == before


def test_gzip_stream_check_reads_whole_members(tmp_path, small_ct):
    """A NIfTI written as two gzip members (allowed by gzip) is complete and reads."""
    plain = _write(small_ct, tmp_path / "ct.nii", False).read_bytes()
    source = tmp_path / "two_members.nii.gz"
    source.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))
    image = read_image(source)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(small_ct))
    padded = tmp_path / "padded.nii.gz"  # zero padding after the stream, as tape/network copies leave
    padded.write_bytes(gzip.compress(plain) + b"\0" * 3000)
    assert np.array_equal(sitk.GetArrayViewFromImage(read_image(padded)), sitk.GetArrayViewFromImage(small_ct))
    glued = tmp_path / "glued.nii.gz"
    glued.write_bytes(gzip.compress(plain) + b"not gzip")
    with pytest.raises(InputError, match="glued.nii.gz: unknown data after its gzip stream"):
        read_image(glued)


@pytest.mark.slow
def test_console_script_matrix_of_damaged_inputs(tmp_path, small_ct):
    """The issue's check, through the real console entry point (file descriptors, not Python
    streams): exit 2, one stderr line, no traceback, nothing written, inputs byte-identical."""
    cases = tmp_path / "cases"
    cases.mkdir()
    _cut(_write(small_ct, cases / "cut.nii.gz"), 0.5)
    volume = sitk.GetArrayFromImage(small_ct).astype(np.float32)
    volume[1, 1, 1] = np.nan
    nan_image = sitk.GetImageFromArray(volume)
    nan_image.CopyInformation(small_ct)
    _write(nan_image, cases / "nan.nii.gz")
    (cases / "elsewhere.mha").write_text(_metaimage_header(str(HEAD_CT), (4, 4, 4)))
    inputs = [cases / "cut.nii.gz", cases / "nan.nii.gz", cases / "elsewhere.mha"]
    if DICOM_SERIES.is_dir():
        series = cases / "series"
        series.mkdir()
        for source in sorted(DICOM_SERIES.glob("*.dcm"))[:6]:
            if source.name != "1-123.dcm":
                shutil.copyfile(source, series / source.name)
        inputs.append(series)
    before = _digests(cases)
    env = dict(os.environ, PYTHONPATH=str(ENGINE_DIR))
    for source in inputs:
        out = tmp_path / "out"
        out.mkdir()
        done = subprocess.run([sys.executable, "-m", "cycleinr", "super-resolve", str(source),
                               str(out / "result.nii.gz"), "--scale", "2"], capture_output=True, text=True,
                              env=env)
        assert done.returncode == 2, (source.name, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cycleinr: error:"), (source.name, done.stderr)
        assert "Traceback" not in done.stdout + done.stderr
        assert list(out.iterdir()) == []
        out.rmdir()
    assert _digests(cases) == before


def test_good_gzip_nifti_is_checked_without_decompressing_twice(monkeypatch, tmp_path):
    """The cost claim: on a good int16 or float32 .nii.gz the CRC-32 over SimpleITK's buffer
    matches the trailer, so the streaming pass never runs."""
    import cycleinr.integrity as integrity

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the file was decompressed a second time")

    float_copy = sitk.Cast(sitk.ReadImage(str(HEAD_CT)), sitk.sitkFloat32)
    float_path = _write(float_copy, tmp_path / "float.nii.gz")
    monkeypatch.setattr(integrity, "_stream_nifti", no_second_pass)
    monkeypatch.setattr(integrity, "gzip_chunks", no_second_pass)
    for path in (HEAD_CT, float_path):
        assert read_image(path).GetSize() == (96, 96, 48)
