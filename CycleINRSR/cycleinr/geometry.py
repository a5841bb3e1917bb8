"""Where the output slices are: the one geometry every path (API, CLI, Slicer, training) uses.

Conventions. A volume is a numpy array; ``spacing`` lists the voxel size per *array axis*.
(SimpleITK / Slicer arrays are indexed [k, j, i], so array axis 0 is K.) Along the slice axis the
output keeps the first slice centre and spacing s / r, and stops at the last input slice centre:
output slice ``j`` sits at input index ``j / r`` and there are floor((n - 1) r) + 1 of them.
In-plane the grid is unchanged and the direction cosines are never touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import InputError

MAX_SCALE = 16.0
_EPS = 1e-6
AXIS_LETTERS = "IJK"  # I = x, J = y, K = z in SimpleITK / Slicer index order


def axis_from_letter(letter: str, ndim: int = 3) -> int:
    """Array axis of an ITK index letter: I -> 2, J -> 1, K -> 0 for a [k, j, i] array."""
    letter = letter.upper()
    if letter not in AXIS_LETTERS:
        raise InputError(f"slice axis must be one of I, J, K, got {letter!r}")
    return ndim - 1 - AXIS_LETTERS.index(letter)


def choose_slice_axis(spacing: Sequence[float], slice_axis: int | None = None) -> int:
    """The named axis, else the one with the coarsest spacing (ties: the first, i.e. K)."""
    if slice_axis is not None:
        if slice_axis not in range(len(spacing)):
            raise InputError(f"slice axis {slice_axis} does not exist in a {len(spacing)}-D volume")
        return int(slice_axis)
    return int(np.argmax(np.asarray(spacing, dtype=float)))


def resolve_scale(slice_spacing: float, scale: float | None = None,
                  target_spacing: float | None = None) -> float:
    """The factor r from either a scale or a target slice spacing (exactly one of them)."""
    if (scale is None) == (target_spacing is None):
        raise InputError("give exactly one of scale or target spacing")
    if target_spacing is not None:
        if not (isinstance(target_spacing, (int, float)) and math.isfinite(target_spacing)
                and target_spacing > 0):
            raise InputError(f"target spacing must be a positive number of mm, got {target_spacing!r}")
        scale = slice_spacing / float(target_spacing)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise InputError(f"scale must be a finite number, got {scale!r}")
    scale = float(scale)
    if scale <= 1.0 + _EPS:
        raise InputError(f"scale must be greater than 1 (thinner slices), got {scale:g}"
                         + (f" (slice spacing {slice_spacing:g} mm / target {target_spacing:g} mm)"
                            if target_spacing is not None else ""))
    if scale > MAX_SCALE + _EPS:
        raise InputError(f"scale {scale:g} is above the supported maximum of {MAX_SCALE:g}")
    return scale


def output_slice_count(input_slices: int, scale: float) -> int:
    return int(math.floor((input_slices - 1) * scale + _EPS)) + 1


def output_positions(input_slices: int, scale: float) -> np.ndarray:
    """Positions of the output slices in input index units (0 .. n-1)."""
    count = output_slice_count(input_slices, scale)
    return np.minimum(np.arange(count, dtype=np.float64) / scale, input_slices - 1)


def acquired_slices(positions: np.ndarray) -> np.ndarray:
    """For each output slice, the input slice it coincides with, or -1.

    Output slice j lies at input index j / r = j q / p, so with r = p / q every p-th output slice
    lies exactly on an input slice (every r-th for an integer r); those are the acquired slices
    that ``keep_acquired`` passes through unchanged.
    """
    nearest = np.rint(positions)
    return np.where(np.abs(positions - nearest) < _EPS, nearest, -1).astype(np.int64)


@dataclass(frozen=True)
class OutputGrid:
    """The output volume's shape and spacing for one job."""

    slice_axis: int
    scale: float
    input_shape: tuple[int, ...]
    input_spacing: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.input_shape)
        shape[self.slice_axis] = output_slice_count(self.input_shape[self.slice_axis], self.scale)
        return tuple(shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        spacing = list(self.input_spacing)
        spacing[self.slice_axis] = self.input_spacing[self.slice_axis] / self.scale
        return tuple(spacing)

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def plan_output(shape: Sequence[int], spacing: Sequence[float], scale: float | None = None,
                target_spacing: float | None = None, slice_axis: int | None = None) -> OutputGrid:
    """Check the request against the volume's shape and spacing and return the output grid."""
    if len(shape) != 3:
        raise InputError(f"expected a 3D volume, got {len(shape)}D with shape {tuple(shape)}")
    if len(spacing) != 3:
        raise InputError(f"expected 3 spacings (one per axis), got {len(spacing)}")
    spacing = tuple(float(s) for s in spacing)
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing must be positive and finite, got {spacing}")
    axis = choose_slice_axis(spacing, slice_axis)
    if shape[axis] < 2:
        raise InputError(f"the slice axis has a single slice: nothing to interpolate between "
                         f"(shape {tuple(shape)})")
    for other, size in enumerate(shape):
        if size < 2:
            raise InputError(f"axis {other} has size 1: this is a 2D image, not a volume "
                             f"(shape {tuple(shape)})")
    r = resolve_scale(spacing[axis], scale, target_spacing)
    return OutputGrid(axis, r, tuple(int(s) for s in shape), spacing)
