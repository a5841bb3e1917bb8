"""Interpolation baselines (trilinear, cubic B-spline, nearest) on the exact grid super_resolve makes.

The paper compares CycleINR with trilinear and cubic interpolation; both are SimpleITK resampling
here (the field's library). The in-plane grid is unchanged, so "trilinear" on this grid is linear
along the slice axis and "bspline" is SimpleITK's cubic B-spline (its prefilter runs along every
axis, which leaves in-plane samples unchanged because the spline interpolates).

Work is done in slabs of output slices so memory stays at input + output + one slab. Each slab
reads its input slices plus a margin: 1 slice for linear/nearest (exact), and 16 for the B-spline,
whose prefilter is recursive with pole 0.268: a slab edge 16 slices away changes a value by at most
0.268**16 ~ 1e-9 of the intensity range, far below any integer rounding.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import InputError
from .geometry import OutputGrid, output_positions, plan_output
from .normalise import cast_to_dtype
from .volumes import check_array, check_image

METHODS = ("linear", "bspline", "nearest")
_MARGIN = {"linear": 1, "nearest": 1, "bspline": 16}
_SLAB_VOXELS = 8_000_000  # output voxels resampled at once


def _interpolator(method: str):
    import SimpleITK as sitk

    table = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}
    if method not in table:
        raise InputError(f"unknown interpolation method {method!r}; use one of {', '.join(METHODS)}")
    return table[method]


def interpolate(volume: np.ndarray, spacing: Sequence[float], scale: float | None = None,
                target_spacing: float | None = None, slice_axis: int | None = None,
                method: str = "linear") -> np.ndarray:
    """Upsample ``volume`` along one axis by interpolation, onto super_resolve's output grid.

    ``spacing`` is per array axis, as for ``super_resolve``. The result has the input's dtype
    (integers rounded and clipped). Output slice j sits at input index j / scale.
    """
    check_array(volume)
    interpolator = _interpolator(method)
    grid = plan_output(volume.shape, spacing, scale, target_spacing, slice_axis)
    out = np.empty(grid.shape, dtype=volume.dtype)
    source = np.moveaxis(volume, grid.slice_axis, 0)
    target = np.moveaxis(out, grid.slice_axis, 0)
    _resample_slabs(source, target, grid, interpolator, _MARGIN[method])
    return out


def _resample_slabs(source: np.ndarray, target: np.ndarray, grid: OutputGrid, interpolator,
                    margin: int) -> None:
    """Fill ``target`` (slice axis first) from ``source`` slab by slab, in input-index units."""
    import SimpleITK as sitk

    n_in = source.shape[0]
    n_out = target.shape[0]
    positions = output_positions(n_in, grid.scale)
    plane = int(np.prod(source.shape[1:]))
    slab = max(1, _SLAB_VOXELS // plane)
    for start in range(0, n_out, slab):
        stop = min(n_out, start + slab)
        low = max(0, int(math.floor(positions[start])) - margin)
        high = min(n_in, int(math.ceil(positions[stop - 1])) + 1 + margin)
        piece = sitk.GetImageFromArray(np.ascontiguousarray(source[low:high]))
        # index units: input slice k of the piece sits at z = k; output slice j at z = j / r - low
        resampler = sitk.ResampleImageFilter()
        resampler.SetInterpolator(interpolator)
        resampler.SetOutputPixelType(sitk.sitkFloat64)
        resampler.SetSize((source.shape[2], source.shape[1], stop - start))
        resampler.SetOutputSpacing((1.0, 1.0, 1.0 / grid.scale))
        resampler.SetOutputOrigin((0.0, 0.0, start / grid.scale - low))
        resampler.SetDefaultPixelValue(0.0)
        values = sitk.GetArrayFromImage(resampler.Execute(piece))
        target[start:stop] = cast_to_dtype(values, target.dtype)


def interpolate_image(image, scale: float | None = None, target_spacing: float | None = None,
                      slice_axis: int | str | None = None, method: str = "linear"):
    """The same for a SimpleITK image, on exactly the grid ``super_resolve_image`` gives."""
    import SimpleITK as sitk

    from .api import slice_axis_of_image

    check_image(image)
    volume = sitk.GetArrayViewFromImage(image)
    spacing = tuple(reversed(image.GetSpacing()))
    grid = plan_output(volume.shape, spacing, scale, target_spacing, slice_axis_of_image(slice_axis))
    array = interpolate(volume, spacing, scale=grid.scale, slice_axis=grid.slice_axis, method=method)
    output = sitk.GetImageFromArray(array)
    output.SetSpacing(tuple(reversed(grid.spacing)))
    output.SetOrigin(image.GetOrigin())
    output.SetDirection(image.GetDirection())
    return output
