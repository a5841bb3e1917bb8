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
    """A 3D scalar SimpleITK image from a file or a DICOM series folder."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        if _suffix(path) not in READ_SUFFIXES + (".dcm",):
            raise InputError(f"unsupported input format {path.name!r}; use "
                             f"{', '.join(READ_SUFFIXES)} or a DICOM series folder")
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise InputError(f"cannot read {path.name}: {_first_line(error)}") from None
    check_image(image, path.name)
    return image


def _read_dicom_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(f"{folder} holds no DICOM series (and is not a volume file)")
    if len(series) > 1:
        raise InputError(f"{folder} holds {len(series)} DICOM series; point at a folder with one")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(f"cannot read the DICOM series in {folder}: {_first_line(error)}") from None


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
