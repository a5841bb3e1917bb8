"""Reading and writing volumes through SimpleITK, with the checks a user's files need.

In: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) and a folder holding one
DICOM series. Out: NIfTI, NRRD or MHA, through ``output_files`` (verified temporary file, then a
no-replace rename), so a failure or a cancel never leaves a half-written file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
# the write side lives in output_files; these names stay importable from here
from .output_files import WRITE_SUFFIXES, check_output_path, write_image, write_png_atomically  # noqa: F401

READ_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_volume_file(path: Path) -> bool:
    return path.is_file() and _suffix(path) in READ_SUFFIXES


def read_image(path: str | os.PathLike):
    """A 3D scalar SimpleITK image from a file or a DICOM series folder, checked against the file
    itself first (cycleinr.integrity: truncation, gzip CRC, raw NaN/Inf, data files outside the
    header's folder, memory, DICOM slice positions) and then as read."""
    import SimpleITK as sitk

    from .integrity import check_finite_image, check_fits_in_memory, check_volume_file, header_bytes, read_header

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        suffix = _suffix(path)
        if suffix not in READ_SUFFIXES + (".dcm",):
            raise InputError(f"unsupported input format {path.name!r}; use "
                             f"{', '.join(READ_SUFFIXES)} or a DICOM series folder")
        check_after_read = None
        if suffix == ".dcm":
            check_fits_in_memory(header_bytes(read_header(path)), path.name)
        else:
            check_after_read = check_volume_file(path, suffix)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            if suffix != ".dcm":  # say what is damaged, where the file itself can tell
                check_volume_file(path, suffix, full=True)
            raise InputError(f"cannot read {path.name}: {_first_line(error)}") from None
        if check_after_read is not None:
            check_after_read(image)
    check_image(image, path.name)
    check_finite_image(image, path.name)
    return image


def check_readable(path: str | os.PathLike) -> None:
    """The checks of read_image that need no voxel read (headers, data files, sizes, streams,
    DICOM positions): for jobs over many inputs, so a bad one is refused before any work."""
    from .integrity import check_fits_in_memory, check_volume_file, dicom_series_bytes, dicom_series_files

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        check_fits_in_memory(dicom_series_bytes(dicom_series_files(path)[0]), path.name)
    elif _suffix(path) in READ_SUFFIXES:
        check_volume_file(path, _suffix(path))  # the CRC check deferred to the read, if any, runs then


def _read_dicom_series(folder: Path):
    """The series' files in the order and spacing their own headers give, after the series checks
    (one series, one grid, no missing/duplicate/uneven positions, no gantry tilt)."""
    import SimpleITK as sitk

    from .integrity import check_dicom_geometry, check_fits_in_memory, dicom_series_bytes, dicom_series_files

    files, spacing = dicom_series_files(folder)
    check_fits_in_memory(dicom_series_bytes(files), folder.name)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(file) for file in files])
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read the DICOM series in {folder}: {_first_line(error)}") from None
    check_dicom_geometry(image, files, spacing, folder)
    return image


def check_image(image, label: str = "input") -> None:
    """Reject what the engine cannot super-resolve, with the reason."""
    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(f"{label} has {components} components per voxel (vector/RGB); "
                         "only scalar volumes can be super-resolved")
    if dimension == 2:
        raise InputError(f"{label} is a 2D image; a 3D volume is needed")
    if dimension != 3:
        raise InputError(f"{label} is {dimension}D; only 3D volumes are supported "
                         "(split a 4D series into 3D volumes first)")
    if min(image.GetSize()) < 2:
        raise InputError(f"{label} has size {image.GetSize()}: a single slice is a 2D image, not a volume")


def check_array(volume: np.ndarray, label: str = "input") -> None:
    if not isinstance(volume, np.ndarray):
        raise InputError(f"{label} must be a numpy array, got {type(volume).__name__}")
    if volume.ndim != 3:
        raise InputError(f"{label} must be 3D, got {volume.ndim}D with shape {volume.shape}")
    if not (np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating)):
        raise InputError(f"{label} has dtype {volume.dtype}; a real-valued scalar volume is needed")
    if np.issubdtype(volume.dtype, np.floating) and not _all_finite(volume):
        raise InputError(f"{label} contains NaN or infinite values")


def _all_finite(volume: np.ndarray) -> bool:
    # slab by slab: no volume-sized boolean temporary
    return all(np.isfinite(volume[index]).all() for index in range(volume.shape[0]))


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages put the useful sentence last, after file/line noise
    useful = [line for line in lines if not line.startswith(("/", "itk::", "ITK"))]
    return (useful or lines or ["unknown error"])[-1][:300]
