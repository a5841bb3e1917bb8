"""Training pairs made on the fly: a thin-axis HR patch and the thick LR patch it implies.

Any axis whose spacing is fine enough serves as a "slice axis" (z of thin-slice volumes, and the
in-plane axes of every volume, thick-slice ones included: SMORE/SAINT-style self-supervision).
The patch is transposed so that axis is the network's slice axis (dim 2).

LR along that axis, for a factor r drawn from 2.0-6.0 in steps of 0.1:
- "interval": the thin slice at every HR position k*r (the paper's protocol). For a fractional r
  the position k*r falls between two thin slices, and the two nearest are blended linearly
  (a thin slice at a non-integer position does not exist; at integer r this is exact).
- "slab": the mean of the thin slices covering [k*r - r/2, k*r + r/2] (what a scanner's thick
  slice is), partial slices weighted by their overlap.
The HR target is every thin slice between the first and last LR slice centre, so output slice j
sits at LR position j / r: the same geometry as inference. Every patch has exactly ``lr_slices``
LR slices, whatever r (the cut reaches the thin slice after the last LR position when r is
fractional). With ``min_foreground`` a patch that is mostly background is drawn again (up to
ten times).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .normalise import IntensityMap

SCALES = np.round(np.arange(2.0, 6.0 + 1e-9, 0.1), 1)


@dataclass
class TrainingVolume:
    """A volume in memory (int16 or float32, [k, j, i]) with its spacing and usable axes."""

    name: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    fine_axes: tuple[int, ...]
    intensities: IntensityMap


def fine_axes(spacing, fine_spacing: float) -> tuple[int, ...]:
    return tuple(axis for axis, size in enumerate(spacing) if size <= fine_spacing + 1e-6)


def degrade(hr: np.ndarray, scale: float, mode: str) -> np.ndarray:
    """LR slices (axis 0) from HR slices (axis 0); LR slice k corresponds to HR position k * scale."""
    slices = hr.shape[0]
    count = int(math.floor((slices - 1) / scale + 1e-6)) + 1
    positions = np.arange(count) * scale
    if mode == "interval":
        lower = np.floor(positions + 1e-6).astype(int)
        fraction = np.clip(positions - lower, 0, 1).astype(np.float32)
        upper = np.minimum(lower + 1, slices - 1)
        shape = (-1,) + (1,) * (hr.ndim - 1)
        return hr[lower] * (1 - fraction.reshape(shape)) + hr[upper] * fraction.reshape(shape)
    if mode == "slab":
        out = np.empty((count,) + hr.shape[1:], dtype=np.float32)
        for index, centre in enumerate(positions):
            low, high = centre - scale / 2, centre + scale / 2
            first, last = max(0, math.floor(low + 0.5)), min(slices - 1, math.ceil(high - 0.5))
            weights = []
            for thin in range(first, last + 1):
                overlap = min(high, thin + 0.5) - max(low, thin - 0.5)
                weights.append(max(0.0, overlap))
            weights = np.asarray(weights, dtype=np.float32)
            weights /= weights.sum()
            out[index] = np.tensordot(weights, hr[first:last + 1], axes=(0, 0))
        return out
    raise ValueError(f"degrade mode must be 'interval' or 'slab', got {mode!r}")


@dataclass
class Batch:
    lr: np.ndarray          # (B, 1, m, H, W) normalised
    hr: np.ndarray          # (B, 1, T, H, W) normalised
    scale: float
    hr_positions: np.ndarray  # (T,) HR slice positions in LR index units: j / r


class PairSampler:
    """Draws batches reproducibly from a numpy Generator whose state can be saved and restored.

    Under DDP every process holds the same generator and draws the parameters of the whole
    global batch (``batch_size * parts`` patches), but cuts and degrades only its own share
    (``part``). So K processes of batch B see exactly the patches one process of batch K*B sees,
    and the averaged gradient is the same: a run does not depend on how many processes share it.
    """

    def __init__(self, volumes: list[TrainingVolume], lr_slices: int = 8, patch: int = 32,
                 batch_size: int = 4, degrade_modes=("interval", "slab"), seed: int = 0,
                 scales=SCALES, min_foreground: float = 0.0) -> None:
        usable = [v for v in volumes if v.fine_axes]
        if not usable:
            raise ValueError("no training volume has an axis fine enough to learn from")
        if lr_slices < 2:
            raise ValueError(f"lr_slices must be at least 2, got {lr_slices}")
        self.volumes = usable
        self.lr_slices, self.patch, self.batch_size = lr_slices, patch, batch_size
        self.degrade_modes = tuple(degrade_modes)
        for mode in self.degrade_modes:
            if mode not in ("interval", "slab"):
                raise ValueError(f"degrade mode must be 'interval' or 'slab', got {mode!r}")
        self.scales = np.asarray(scales, dtype=float).reshape(-1)
        if not len(self.scales) or (self.scales <= 1).any():
            raise ValueError("training scales must be > 1")
        if not 0.0 <= min_foreground < 1.0:
            raise ValueError(f"min_foreground must lie in [0, 1), got {min_foreground!r}")
        self.min_foreground = float(min_foreground)
        self.rng = np.random.default_rng(seed)
        # volumes weighted by how many patches they hold
        sizes = np.array([v.array.size for v in usable], dtype=float)
        self.volume_weights = sizes / sizes.sum()

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def sample(self, part: int = 0, parts: int = 1) -> Batch:
        """The next batch; with ``parts`` > 1, share ``part`` of a global batch (see the class)."""
        rng = self.rng
        scale = float(rng.choice(self.scales))
        mode = self.degrade_modes[int(rng.integers(len(self.degrade_modes)))]
        # the HR target ends at the last HR slice inside the LR extent, (m-1) r; the LR slice at
        # (m-1) r itself may need the thin slice after it (fractional r), so one more is cut
        hr_slices = int(math.floor((self.lr_slices - 1) * scale + 1e-6)) + 1
        extent = (int(math.ceil((self.lr_slices - 1) * scale - 1e-6)) + 1, self.patch, self.patch)
        lr_list, hr_list = [], []
        for index in range(self.batch_size * parts):
            # every process draws every patch of the global batch, so all draw alike (DDP)
            volume, block, flips = draw_patch(rng, self.volumes, self.volume_weights, extent, self.min_foreground)
            if index // self.batch_size != part:
                continue  # another process's patch: its random draws are consumed all the same
            block = prepare_patch(volume, block, extent, flips)
            lr_list.append(degrade(block, scale, mode))
            hr_list.append(np.ascontiguousarray(block[:hr_slices]))
        positions = np.arange(hr_slices) / scale
        return Batch(np.stack(lr_list)[:, None].astype(np.float32), np.stack(hr_list)[:, None].astype(np.float32),
                     scale, positions)


_FOREGROUND_TRIES = 10      # draws per patch before an air patch is accepted anyway
_FOREGROUND_LEVEL = 0.05    # normalised intensity above background (CT window: about -820 HU)


def draw_patch(rng, volumes, weights, extent, min_foreground: float = 0.0):
    """(volume, block, flips): a random patch of ``extent`` along a random fine axis (moved to
    the front), drawn again up to ``_FOREGROUND_TRIES`` times while it is mostly background."""
    for _attempt in range(_FOREGROUND_TRIES):
        volume = volumes[int(rng.choice(len(volumes), p=weights))]
        moved = np.moveaxis(volume.array, int(rng.choice(volume.fine_axes)), 0)
        starts = [int(rng.integers(0, max(1, size - want + 1))) for size, want in zip(moved.shape, extent)]
        flips = rng.random(4) < 0.5
        block = moved[starts[0]:starts[0] + extent[0], starts[1]:starts[1] + extent[1],
                      starts[2]:starts[2] + extent[2]]
        if not min_foreground or _foreground(volume, block) >= min_foreground:
            break
    return volume, block, flips


def prepare_patch(volume: TrainingVolume, block: np.ndarray, extent, flips) -> np.ndarray:
    """A drawn patch normalised, padded to ``extent`` and flipped/transposed as ``flips`` says."""
    block = _pad_to(volume.intensities.forward(block), extent)
    if flips[0]:
        block = block[:, ::-1]
    if flips[1]:
        block = block[:, :, ::-1]
    if flips[2]:
        block = block.transpose(0, 2, 1)
    if flips[3]:
        block = block[::-1]  # along the slice axis too: anatomy has no preferred direction
    return np.ascontiguousarray(block)


def _foreground(volume: TrainingVolume, block: np.ndarray) -> float:
    """Fraction of a patch above background: patches of air teach the network nothing about
    through-plane structure, and a CT's field of view is often half air."""
    return float((volume.intensities.forward(block) > _FOREGROUND_LEVEL).mean()) if block.size else 0.0


def _pad_to(block: np.ndarray, extent) -> np.ndarray:
    """Small volumes: edge-pad a patch to the full size (rare; keeps batch shapes equal)."""
    pads = [(0, max(0, want - size)) for size, want in zip(block.shape, extent)]
    if any(after for _, after in pads):
        block = np.pad(block, pads, mode="edge")
    return block
