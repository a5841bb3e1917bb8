"""File-to-file jobs: the path shared by the CLI, batch scripts and the Slicer worker process."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .api import slice_axis_of_image, super_resolve_image
from .errors import InputError, OutputError
from .geometry import plan_output
from .volumes import check_output_path, is_volume_file, read_image, write_image


def expected_output(image, scale=None, target_spacing=None, slice_axis=None):
    """The output grid for an image, before any work (for checks and read-outs)."""
    spacing = tuple(reversed(image.GetSpacing()))
    shape = tuple(reversed(image.GetSize()))
    return plan_output(shape, spacing, scale, target_spacing, slice_axis_of_image(slice_axis))


def super_resolve_file(input_path: str | os.PathLike, output_path: str | os.PathLike,
                       scale: float | None = None, target_spacing: float | None = None,
                       slice_axis=None, overwrite: bool = False, **options):
    """Read, check everything (output path, disk space), super-resolve, write atomically.

    With ``adapt_minutes``, a DICOM series' slice thickness is read from its headers unless
    ``slice_thickness`` is given, and ``save_model`` is written only after the output is."""
    output_path = Path(output_path)
    save_model = options.pop("save_model", None)
    if options.get("adapt_minutes"):
        _prepare_adaptation(input_path, save_model, overwrite, options)
    if output_path.exists() and Path(input_path).exists() and output_path.resolve() == Path(input_path).resolve():
        raise OutputError(f"output would overwrite the input {output_path}; the input is never modified")
    check_output_path(output_path, overwrite)  # fail fast, before reading a large input
    image = read_image(input_path)
    grid = expected_output(image, scale, target_spacing, slice_axis)
    dtype = np.dtype(_numpy_dtype(image))
    check_output_path(output_path, overwrite, expected_bytes=grid.voxels * dtype.itemsize + (1 << 20))
    output, result = super_resolve_image(image, scale=scale, target_spacing=target_spacing,
                                         slice_axis=slice_axis, **options)
    write_image(output, output_path, overwrite=overwrite)
    if save_model is not None and result.adaptation is not None:
        from .weights import save_model as write_model
        write_model(save_model, result.adaptation.model.network, result.adaptation.model.info)
    return result


def _prepare_adaptation(input_path, save_model, overwrite: bool, options: dict) -> None:
    """Check where the adapted model goes; a DICOM folder's slice profile from its headers."""
    from .adapt import check_model_output
    from .slice_profile import dicom_slice_profile

    if save_model is not None:
        check_model_output(save_model, overwrite)
    if options.get("slice_thickness") is None and Path(input_path).is_dir():
        profile = dicom_slice_profile(input_path)
        options["slice_thickness"] = profile.thickness
        options["adapt_options"] = dict(options.get("adapt_options") or {}, thickness_source=profile.source)


def _numpy_dtype(image):
    import SimpleITK as sitk
    return sitk.GetArrayViewFromImage(image).dtype


def list_inputs(folder: Path) -> list[Path]:
    """Volume files and DICOM series folders directly inside ``folder``, sorted."""
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    items = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if is_volume_file(entry):
            items.append(entry)
        elif entry.is_dir() and any(child.is_file() for child in entry.iterdir()):
            items.append(entry)
    if not items:
        raise InputError(f"no volumes (NIfTI, NRRD, MHA/MHD, DICOM series folders) in {folder}")
    return items


def output_name(item: Path, suffix: str = ".nii.gz") -> str:
    name = item.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name + suffix


def check_batch_output(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"input is a folder, so output must be a folder too: {folder} is a file")
