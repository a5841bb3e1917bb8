"""``super_resolve``: the one call every front end (CLI, Slicer, scripts) makes.

Dataflow: check -> plan output grid -> load model -> (per tile) normalise -> encode -> sample /
decode -> blend -> denormalise -> output array. No hidden state between calls.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .devices import resolve_device
from .errors import InputError, ResourceError
from .geometry import OutputGrid, axis_from_letter, plan_output
from .inference import default_memory_budget, plan_tiles, upsample_slices
from .normalise import intensity_map
from .volumes import check_array, check_image
from .bundled import model_path
from .weights import LoadedModel, load_model


class ScaleWarning(UserWarning):
    """The asked scale lies outside the range the model was trained on."""


@dataclass
class SuperResolved:
    """The output array (same axis order and dtype as the input) and how it was made."""

    array: np.ndarray
    spacing: tuple[float, ...]
    slice_axis: int
    scale: float
    model_name: str
    device: str
    warnings: list[str] = field(default_factory=list)
    adaptation: "Adaptation | None" = None  # set when adapt_minutes was given (cycleinr.adapt)


def pick_model(model: str | os.PathLike | LoadedModel | None, device: torch.device) -> LoadedModel:
    """A loaded model as given, a file, or the bundled default for the device (the CPU-sized
    one on a CPU); the result's ``model_name`` always says which was used."""
    if isinstance(model, LoadedModel):
        model.network.to(device)
        return model
    return load_model(model_path(model, device.type), device)


def _available_host_bytes() -> int:
    import psutil
    return int(psutil.virtual_memory().available)


def check_memory(grid: OutputGrid, dtype: np.dtype, device: torch.device, budget: int) -> None:
    """Fail before work if the output array and the tile working set cannot fit in memory."""
    output_bytes = grid.voxels * np.dtype(dtype).itemsize
    host_working = budget if device.type == "cpu" else 256 << 20
    needed = output_bytes + host_working
    available = _available_host_bytes()
    if needed > available:
        raise ResourceError(f"the output ({grid.shape}, {output_bytes / 2**30:.1f} GiB) plus working "
                            f"memory needs {needed / 2**30:.1f} GiB, only {available / 2**30:.1f} GiB "
                            "is available: use a smaller scale or a crop")


def super_resolve(volume: np.ndarray, spacing: Sequence[float], scale: float | None = None,
                  target_spacing: float | None = None, slice_axis: int | None = None,
                  model: str | os.PathLike | LoadedModel | None = None, device: str = "auto",
                  tile_size: Sequence[int] | None = None, halo: int | None = None,
                  memory_budget: int | None = None, progress=None, cancel=None,
                  out: np.ndarray | None = None, skip_below: float | None = None,
                  keep_acquired: bool = True, compile_model: bool = False,
                  adapt_minutes: float | None = None, slice_thickness: float | None = None,
                  save_model: str | os.PathLike | None = None, adapt_options: dict | None = None,
                  log=None) -> SuperResolved:
    """Upsample ``volume`` along one axis by ``scale`` (or to ``target_spacing`` mm).

    ``spacing`` lists the voxel size along each *array* axis (for a SimpleITK array [k, j, i]
    that is the image spacing reversed). The slice axis is the coarsest unless named. Output
    slice j lies at input index j / scale; the first slice centre is kept and nothing is
    extrapolated past the last. ``progress(fraction)`` is called as work proceeds; ``cancel`` (a
    callable or a threading.Event) stops the work within one tile chunk, raising ``Cancelled``.
    ``skip_below`` (input units, e.g. -900 for CT air; off by default) gives voxels whose 27 LR
    neighbours all lie below it linear interpolation instead of the network (faster on air).
    ``keep_acquired`` (default): output slices that lie exactly on an input slice (all multiples
    of r for an integer r) are copied from the input unchanged instead of being regenerated.
    ``compile_model`` runs the network through torch.compile (off by default: see ``compiled``);
    if compiling fails the result's ``warnings`` say so and the work is done uncompiled.
    ``adapt_minutes``: first adapt the model to this volume for that long (``cycleinr.adapt``:
    pairs from its in-plane axes made with its slice profile, ``slice_thickness`` mm, None:
    unknown); the base model is kept when adaptation does not help on held-back pairs,
    and ``warnings`` says which was used (``adaptation`` holds the details). The adapted weights
    are dropped unless ``save_model`` (a new .safetensors path) is given; ``adapt_options`` are
    passed to ``adapt_model`` (learning rate, steps ...); ``log(message)`` gets the phase lines.
    """
    check_array(volume)
    check_numeric_options(skip_below=skip_below, halo=halo, tile_size=tile_size, memory_budget=memory_budget)
    grid = plan_output(volume.shape, spacing, scale, target_spacing, slice_axis)
    torch_device = resolve_device(device)
    budget = int(memory_budget) if memory_budget else default_memory_budget(torch_device)
    check_memory(grid, volume.dtype, torch_device, budget)
    loaded = pick_model(model, torch_device)
    notes = []
    adaptation = None
    if adapt_minutes:
        from .adapt import adapt_model, check_model_output, phase_progress
        if save_model is not None:
            check_model_output(save_model)
        share, progress = phase_progress(progress, adapt_minutes, grid.voxels, torch_device)
        adaptation = adapt_model(volume, spacing, grid.scale, loaded, adapt_minutes, grid.slice_axis,
                                 slice_thickness, device=str(torch_device), progress=share, cancel=cancel,
                                 log=log, **{"keep_acquired": keep_acquired, **(adapt_options or {})})
        loaded = adaptation.model
        notes.append(adaptation.message())
    elif save_model is not None or slice_thickness is not None:
        raise InputError("save_model and slice_thickness apply to adaptation: give adapt_minutes too")
    low, high = loaded.info.trained_scales
    if not (low - 1e-6 <= grid.scale <= high + 1e-6):
        message = (f"scale {grid.scale:g} is outside the range the model was trained on "
                   f"({low:g}-{high:g}); results may be less reliable")
        warnings.warn(message, ScaleWarning, stacklevel=2)
        notes.append(message)
    if out is None:
        out = np.empty(grid.shape, dtype=volume.dtype)
    elif out.shape != grid.shape or out.dtype != volume.dtype:
        raise InputError(f"out must have shape {grid.shape} and dtype {volume.dtype}")
    source = np.moveaxis(volume, grid.slice_axis, 0)
    target = np.moveaxis(out, grid.slice_axis, 0)
    plan = plan_tiles(loaded.network, source.shape, budget,
                      core=_tile_in_slice_order(tile_size, grid.slice_axis), halo=halo, scale=grid.scale)
    upsample_slices(loaded.network, source, target, grid.scale,
                    intensity_map(source, loaded.info.normalisation), torch_device, plan,
                    progress=progress, cancel=cancel, skip_below=skip_below, keep_acquired=keep_acquired,
                    compile_model=compile_model, notes=notes)
    if adaptation is not None and save_model is not None:
        from .weights import save_model as write_model
        write_model(save_model, loaded.network, loaded.info)
    return SuperResolved(out, grid.spacing, grid.slice_axis, grid.scale, loaded.name,
                         str(torch_device), notes, adaptation)


def check_numeric_options(skip_below=None, halo=None, tile_size=None, memory_budget=None) -> None:
    """Refuse non-finite or non-integral option values with the reason (a NaN ``skip_below``
    would silently turn every comparison false; scale and spacing are checked in geometry)."""
    if skip_below is not None and not (_is_real(skip_below) and math.isfinite(skip_below)):
        raise InputError(f"skip_below must be a finite number in input units, got {skip_below!r}")
    if memory_budget is not None and not (_is_real(memory_budget) and math.isfinite(memory_budget)
                                          and memory_budget > 0):
        raise InputError(f"memory budget must be a positive number of bytes, got {memory_budget!r}")
    if halo is not None and not (_is_whole(halo) and halo >= 1):
        raise InputError(f"halo must be a whole number of voxels >= 1, got {halo!r}")
    if tile_size is not None:
        sizes = [tile_size] if _is_real(tile_size) else list(tile_size)
        if not all(_is_whole(size) and size >= 2 for size in sizes):
            raise InputError(f"tile size must be whole numbers of voxels >= 2, got {tile_size!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return _is_real(value) and math.isfinite(value) and float(value) == int(value)


def _tile_in_slice_order(tile_size, slice_axis: int):
    """Tile size is given per array axis; the engine wants it slice axis first."""
    if tile_size is None:
        return None
    sizes = [int(tile_size)] if _is_real(tile_size) else [int(size) for size in tile_size]
    if len(sizes) == 1:
        sizes = sizes * 3
    if len(sizes) != 3:
        raise InputError(f"tile size needs 1 or 3 values, got {len(sizes)}")
    return tuple([sizes[slice_axis]] + [s for axis, s in enumerate(sizes) if axis != slice_axis])


def slice_axis_of_image(slice_axis: int | str | None) -> int | None:
    """An ITK letter (I, J, K) or an array axis number -> array axis."""
    if slice_axis is None or isinstance(slice_axis, int):
        return slice_axis
    return axis_from_letter(str(slice_axis))


def super_resolve_image(image, scale: float | None = None, target_spacing: float | None = None,
                        slice_axis: int | str | None = None, **options):
    """The same for a SimpleITK image: origin and direction kept, spacing divided along the axis.

    The output image is made first and the engine writes into its buffer (image_buffer), so the
    output exists once in memory, not as a numpy array and then a copy.
    """
    import SimpleITK as sitk

    from .image_buffer import new_image_with_array

    check_image(image)
    volume = sitk.GetArrayViewFromImage(image)
    spacing = tuple(reversed(image.GetSpacing()))
    axis = slice_axis_of_image(slice_axis)
    output = None
    if options.get("out") is None:
        grid = plan_output(volume.shape, spacing, scale, target_spacing, axis)
        output, options["out"] = new_image_with_array(grid.shape, volume.dtype)
    result = super_resolve(volume, spacing, scale=scale, target_spacing=target_spacing,
                           slice_axis=axis, **options)
    if output is None:
        output = sitk.GetImageFromArray(result.array)
    output.SetSpacing(tuple(reversed(result.spacing)))
    output.SetOrigin(image.GetOrigin())
    output.SetDirection(image.GetDirection())
    return output, result
