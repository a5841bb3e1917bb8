"""Per-epoch validation on held-back volumes: the paper's protocol on a small central crop.

Each volume is cut once to a central crop (``slices`` along its slice axis, ``plane`` x ``plane``
across it) so an epoch's validation costs seconds, not minutes. Its slice axis is the coarsest
axis that is still fine (spacing <= ``fine_spacing``): z of a thin-slice volume, an in-plane
axis of a thick-slice one, so any real volume can be held back. The crop is interval-sampled
at each scale, super-resolved back by the model under training and by trilinear interpolation,
and scored with ``cycleinr.evaluate`` (PSNR, SSIM, SNLI; the model's normalisation says CT or MR).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import ModelInfo
from .errors import InputError
from .weights import LoadedModel

VALIDATION_SLICES = 31   # x2: 16 thick slices, x3: 11, x5: 7
VALIDATION_PLANE = 96


@dataclass(frozen=True)
class ValidationVolume:
    name: str
    array: np.ndarray                 # the central crop, [k, j, i]
    spacing: tuple[float, float, float]
    slice_axis: int


_CACHE: dict[tuple, ValidationVolume] = {}


def validation_axis(spacing: Sequence[float], fine_spacing: float) -> int:
    """The coarsest axis whose spacing is at most ``fine_spacing`` (ties: the first)."""
    fine = [(size, -axis) for axis, size in enumerate(spacing) if size <= fine_spacing + 1e-6]
    if not fine:
        raise InputError(f"a validation volume needs an axis with spacing <= {fine_spacing:g} mm, "
                         f"its spacing is {tuple(round(s, 3) for s in spacing)}")
    return -max(fine)[1]


def central_crop(array: np.ndarray, slice_axis: int, slices: int, plane: int) -> np.ndarray:
    """The middle ``slices`` along the slice axis and the middle ``plane`` x ``plane`` across it."""
    window = []
    for axis, size in enumerate(array.shape):
        want = min(size, slices if axis == slice_axis else plane)
        start = (size - want) // 2
        window.append(slice(start, start + want))
    return np.array(array[tuple(window)], copy=True)  # never a view: the source may be freed


def load_validation_volume(path: str | os.PathLike, fine_spacing: float = 1.6,
                           slices: int = VALIDATION_SLICES, plane: int = VALIDATION_PLANE) -> ValidationVolume:
    """Read once and crop (cached per file, so every epoch reuses the crop)."""
    import SimpleITK as sitk

    from .volumes import read_image

    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0, fine_spacing, slices, plane)
    if key not in _CACHE:
        image = read_image(path)
        spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
        axis = validation_axis(spacing, fine_spacing)
        array = central_crop(sitk.GetArrayViewFromImage(image), axis, slices, plane)
        _CACHE[key] = ValidationVolume(path.name, array, spacing, axis)
    return _CACHE[key]


def modality_of(info: ModelInfo) -> str:
    """CT for window-normalised models (HU), MR for percentile-normalised ones."""
    return "ct" if info.normalisation.kind == "window" else "mr"


def validate_model(network: torch.nn.Module, info: ModelInfo, paths: Sequence[str],
                   scales: Sequence[float] = (2.0, 3.0, 5.0), fine_spacing: float = 1.6,
                   slices: int = VALIDATION_SLICES, plane: int = VALIDATION_PLANE) -> list[list]:
    """Rows [volume, scale, method, psnr, ssim, snli] for the model ("cycleinr") and "trilinear".

    A metric that cannot be computed on a crop (SNLI with too few anatomical slices) is NaN.
    """
    from .evaluate import cycleinr_method, evaluate_volume, interpolation_method

    device = next(network.parameters()).device
    loaded = LoadedModel(network, info, None)
    methods = {"cycleinr": cycleinr_method(loaded, "cuda" if device.type == "cuda" else "cpu"),
               "trilinear": interpolation_method("trilinear")}
    modality = modality_of(info)
    rows = []
    for path in paths:
        volume = load_validation_volume(path, fine_spacing, slices, plane)
        for scale in scales:
            results = evaluate_volume(volume.array, volume.spacing, float(scale), methods,
                                      degrade_mode="interval", modality=modality,
                                      slice_axis=volume.slice_axis)
            for method, scores in results.items():
                rows.append([volume.name, float(scale), method] +
                            [_number(scores.get(key)) for key in ("psnr", "ssim", "snli")])
    return rows


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def summarise(rows: list[list]) -> str:
    """One line: PSNR of the model and trilinear at each scale, averaged over volumes."""
    parts = []
    for scale in sorted({row[1] for row in rows}):
        scores = {method: np.nanmean([row[3] for row in rows if row[1] == scale and row[2] == method])
                  for method in ("cycleinr", "trilinear")}
        parts.append(f"x{scale:g} {scores['cycleinr']:.2f} dB (trilinear {scores['trilinear']:.2f})"
                     if all(math.isfinite(v) for v in scores.values()) else f"x{scale:g} n/a")
    return "; ".join(parts)
