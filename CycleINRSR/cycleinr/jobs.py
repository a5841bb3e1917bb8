"""File-to-file jobs: the path shared by the CLI, batch scripts and the Slicer worker process."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .api import slice_axis_of_image, super_resolve_image
from .errors import InputError, OutputError
from .geometry import plan_output
from .native_messages import NativeWarning, native_stderr_captured
from .output_files import WRITE_SUFFIXES, check_name_fits, check_output_path, claim_output, suffix_of, write_image
from .volumes import is_volume_file, read_image


def expected_output(image, scale=None, target_spacing=None, slice_axis=None):
    """The output grid for an image, before any work (for checks and read-outs)."""
    spacing = tuple(reversed(image.GetSpacing()))
    shape = tuple(reversed(image.GetSize()))
    return plan_output(shape, spacing, scale, target_spacing, slice_axis_of_image(slice_axis))


def super_resolve_file(input_path: str | os.PathLike, output_path: str | os.PathLike,
                       scale: float | None = None, target_spacing: float | None = None,
                       slice_axis=None, overwrite: bool = False, output_format: str = "volume", **options):
    """Read, check everything (output path, disk space), super-resolve, write atomically.

    The output name is claimed for the whole job, so a second run for the same output is
    refused at its start; library warnings while reading become one-line warnings.
    With ``adapt_minutes``, a DICOM series' slice thickness is read from its headers unless
    ``slice_thickness`` is given, and ``save_model`` is written only after the output is.
    ``output_format="dicom"``: a DICOM series in, a derived DICOM series folder out (dicom_out)."""
    if output_format == "dicom":
        from .dicom_out import super_resolve_to_dicom
        return super_resolve_to_dicom(input_path, output_path, scale, target_spacing, slice_axis,
                                      overwrite, **options)
    output_path = Path(output_path)
    save_model = options.pop("save_model", None)
    if options.get("adapt_minutes"):
        _prepare_adaptation(input_path, save_model, overwrite, options)
    check_not_into_input(input_path, output_path)
    check_output_path(output_path, overwrite)  # fail fast, before reading a large input
    with claim_output(output_path):
        # a file refused by our checks is explained by our message: what the library printed
        # while reading it is shown only when the read succeeds
        with native_stderr_captured() as library_messages:
            image = read_image(input_path)
        for message in library_messages:
            warnings.warn(message, NativeWarning, stacklevel=2)
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


def check_not_into_input(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
    """The output may not be the input, nor lie inside an input folder (a DICOM series folder):
    the next run on that folder would read the result back as input."""
    source, target = Path(input_path), Path(output_path)
    check_name_fits(target)
    if not source.exists():
        return
    resolved_source = source.resolve()
    resolved_target = target.parent.resolve() / target.name
    if target.exists() and target.resolve() == resolved_source:
        raise OutputError(f"output would overwrite the input {target}; the input is never modified")
    if source.is_dir() and (resolved_target == resolved_source or resolved_source in resolved_target.parents):
        raise OutputError(f"output {target} lies inside the input folder {source}; "
                          "write it outside the input (inputs are never modified)")


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


def check_batch_output(folder: Path, overwrite: bool, source: Path | None = None,
                       items: list[Path] | None = None, suffix: str = ".nii.gz",
                       output_format: str = "volume") -> list[Path]:
    """Before any work in batch mode: the output folder is not inside the input folder, can be
    made and written, no two inputs share an output name, no output exists unless overwriting.
    Returns the output path of each item (for DICOM output: a series folder named as its input,
    which dicom_out checks and writes)."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"input is a folder, so output must be a folder too: {folder} is a file")
    if not folder.exists() and suffix_of(folder) in WRITE_SUFFIXES:
        raise OutputError(f"{source or 'the input'} is a folder of {len(items or [])} volume(s) or series "
                          f"(batch), so the output must be a folder, not {folder.name}")
    if source is not None:
        resolved_source, resolved_folder = source.resolve(), folder.resolve()
        if resolved_folder == resolved_source or resolved_source in resolved_folder.parents:
            raise OutputError(f"output folder {folder} lies inside the input folder {source}; "
                              "the next run would read the results back as inputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the output folder {folder}: {error.strerror or error}") from None
    dicom = output_format == "dicom"
    destinations = [folder / (item.name if dicom else output_name(item, suffix)) for item in items or []]
    seen: dict[str, Path] = {}
    for item, destination in zip(items or [], destinations):
        if destination.name in seen:
            raise OutputError(f"{seen[destination.name].name} and {item.name} would both be written to "
                              f"{destination}; rename one of them")
        seen[destination.name] = item
    existing = [path for path in destinations if path.exists()]
    if existing and not overwrite:
        raise OutputError(f"{len(existing)} output(s) exist in {folder} (first: {existing[0].name}); "
                          "use --overwrite to replace them")
    if not dicom:
        for destination in destinations:
            check_output_path(destination, overwrite)
    return destinations
