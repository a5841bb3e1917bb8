"""Intensity scaling to the network's [0, 1] range and back; the rule is the model's.

Applied per tile (the whole volume is never converted to float at once). For "percentile"
models the two bounds are measured once per volume, on a strided sample, and then fixed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Normalisation

_PERCENTILE_SAMPLE = 4_000_000  # voxels: enough for stable percentiles, bounded memory


@dataclass(frozen=True)
class IntensityMap:
    """A fixed affine map: value -> (value - low) / (high - low), clipped to [0, 1] for windows.

    Percentile maps are not clipped: an MR's brightest voxels lie above its 99.5th percentile
    and must come back, not be flattened.
    """

    low: float
    high: float
    clip: bool = True

    def forward(self, values: np.ndarray) -> np.ndarray:
        scaled = (values.astype(np.float32) - np.float32(self.low)) / np.float32(self.high - self.low)
        return np.clip(scaled, 0.0, 1.0, out=scaled) if self.clip else scaled

    def inverse(self, normalised: np.ndarray) -> np.ndarray:
        return normalised.astype(np.float32) * np.float32(self.high - self.low) + np.float32(self.low)


def intensity_map(volume: np.ndarray, rule: Normalisation) -> IntensityMap:
    if rule.kind == "window":
        return IntensityMap(rule.low, rule.high)
    stride = max(1, int(round((volume.size / _PERCENTILE_SAMPLE) ** (1 / 3))))
    sample = volume[::stride, ::stride, ::stride].astype(np.float32, copy=False)
    low, high = np.percentile(sample, [rule.low, rule.high])
    if not high > low:
        high = low + 1.0  # a constant volume: any non-degenerate map reproduces it
    return IntensityMap(float(low), float(high), clip=False)


def cast_to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the input's dtype: integers rounded and clipped to the type's range."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)
