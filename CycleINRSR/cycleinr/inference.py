"""Tiled inference: encode each tile with a halo of context, decode its core, blend cores.

The one sliding-window path every caller uses (MONAI's sliding_window_inference blends tiles on
the *input* grid; here the output grid is r times denser along one axis, so it is done here).

- A tile is a core box of LR voxels plus ``halo`` voxels of context on each side. With a halo of
  at least the model's receptive radius a core's values are exactly those of a whole-volume pass,
  whatever the tile placement; a smaller halo trades exactness for speed, and the Gaussian
  weighting of overlapping cores hides what differs.
- The Gaussian weights are separable and the tiles form a Cartesian grid, so the sum of weights
  is a product of three 1D sums: no weight volume is kept.
- With the exact halo (the default) tiles agree where they overlap: each writes only the voxels
  it owns straight into the output, in the output dtype, and nothing is blended.
- Otherwise tiles are visited slab by slab along the slice axis; a rolling float32 buffer holds only the
  output slices that a later slab can still touch, and finished slices go straight into the
  output array in its final dtype. Host memory is input + output + a bounded working set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .errors import Cancelled, InputError, ResourceError
from .geometry import acquired_slices, output_positions
from .cost import attention_macs_per_output_voxel, decoder_macs_per_output_voxel, encoder_macs_per_voxel
from .compiled import HotPaths, hot_paths
from .model import CycleINR, interpolate_slices, use_channels_last
from .slice_query import prepare, query_slices
from .normalise import IntensityMap, cast_to_dtype

ProgressCallback = Callable[[float], None]
CancelCheck = Callable[[], bool]

_FLOAT_BYTES = 4
_MIN_WEIGHT = 1e-3
_FINISH_SLICES = 8
_MAX_DECODE_VOXELS = 1 << 16  # enough rows for efficient GEMMs; more only costs memory


@dataclass(frozen=True)
class TilePlan:
    """Tile core size (slices, rows, columns) in LR voxels, context halo and core overlap."""

    core: tuple[int, int, int]
    halo: int
    overlap: int
    decode_voxels: int  # query voxels decoded at once


def tile_bytes(model: CycleINR, padded: tuple[int, int, int], core: tuple[int, int, int]) -> int:
    """Peak bytes of one tile before decoding: the encoder's (a residual block holds about four
    feature maps and the latent) over the padded tile, or, after it, the padded latent plus
    ``slice_query.prepare``'s latent, Q, K and V over the core and its one-voxel ring."""
    config = model.config
    padded_voxels = int(np.prod(padded))
    ring_voxels = (core[0] + 2) * (core[1] + 2) * (core[2] + 2)
    encoding = padded_voxels * (4 * config.encoder_channels + config.latent_dim + 2)
    prepared = padded_voxels * config.latent_dim + ring_voxels * (3 * config.latent_dim + 2 * config.attention_dim)
    return _FLOAT_BYTES * max(encoding, prepared)


def decoder_bytes_per_query(model: CycleINR) -> int:
    """Working floats per output voxel in ``slice_query`` (latents, logits, hidden layers, gathers)."""
    config = model.config
    channels = 6 * config.latent_dim + 4 * 27 + 4 * config.decoder_width + 27 * (config.latent_dim
                                                                                + config.attention_dim) // 2
    return _FLOAT_BYTES * channels


_GPU_BUDGET_CAP = 6 << 30  # the target: at most 8 GB of GPU memory in all


def default_memory_budget(device: torch.device) -> int:
    """Working-set bytes for tiles: most of the free GPU memory (at most 6 GiB), at most 1 GiB of host memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(min(free * 0.6, _GPU_BUDGET_CAP))
    try:
        import psutil
        available = psutil.virtual_memory().available
    except ImportError:  # pragma: no cover - psutil is a dependency
        available = 4 << 30
    return int(min(1 << 30, available * 0.4))


def plan_tiles(model: CycleINR, shape: tuple[int, int, int], budget_bytes: int,
               core: tuple[int, int, int] | None = None, halo: int | None = None,
               overlap: int = 2, scale: float = 4.0) -> TilePlan:
    """The tile cores that cost least work, halos and overlaps included, within the budget.

    Halos are the price of exactness: every tile encodes ``halo`` extra voxels on each side. So
    the planner compares whole-job costs (MACs: encoder over the padded tiles, decoder over the
    overlapping cores) for cores of the sizes that split each axis evenly, and takes the
    cheapest that fits; a thin-slice axis usually goes whole (no halo along it at all).
    With a halo below the receptive radius (blending), the budget also holds the float32
    blending buffer of one slab of output slices (``scale`` output slices per LR slice; counted
    twice, as it is copied when it grows); an exact halo needs no such buffer.
    """
    if halo is None:
        halo = model.config.receptive_radius
    if halo < 1:
        raise InputError("tile halo must be at least 1 voxel")
    overlap = max(1, int(overlap))
    per_query = decoder_bytes_per_query(model)
    decode_voxels = int(min(_MAX_DECODE_VOXELS, max(4096, (budget_bytes // 4) // per_query)))
    encode_budget = budget_bytes - decode_voxels * per_query
    if core is not None:
        core = tuple(int(c) for c in core)
        if len(core) != 3 or min(core) < 2:
            raise InputError(f"tile size must be three sizes of at least 2 voxels, got {core}")
        if min(core) <= overlap:
            raise InputError(f"tile size {core} must exceed the tile overlap ({overlap})")
        return TilePlan(tuple(min(c, s) for c, s in zip(core, shape)), halo, overlap, decode_voxels)
    config = model.config
    encode_macs = encoder_macs_per_voxel(config)
    decode_macs = decoder_macs_per_output_voxel(config) + attention_macs_per_output_voxel(config, 1.0)
    best, best_cost = None, None
    for slice_core in _even_splits(shape[0], overlap):
        for side in _even_splits(max(shape[1:]), overlap) | _even_splits(min(shape[1:]), overlap):
            candidate = (slice_core, min(side, shape[1]), min(side, shape[2]))
            padded = [min(c + 2 * halo, s) for c, s in zip(candidate, shape)]
            slab_buffer = 0 if halo >= config.receptive_radius else (
                2 * _FLOAT_BYTES * (slice_core + 2 * overlap) * scale * shape[1] * shape[2])
            if tile_bytes(model, tuple(padded), candidate) + slab_buffer > encode_budget:
                continue
            tiles = [axis_tiles(s, c, overlap) for s, c in zip(shape, candidate)]
            encoded = np.prod([sum(min(stop + halo, s) - max(start - halo, 0) for start, stop in axis)
                               for axis, s in zip(tiles, shape)], dtype=np.float64)
            decoded = np.prod([sum(stop - start for start, stop in axis) for axis in tiles], dtype=np.float64)
            cost = (encoded * encode_macs + decoded * decode_macs, -int(np.prod(candidate)))
            if best_cost is None or cost < best_cost:
                best, best_cost = candidate, cost
    if best is None:
        raise ResourceError(f"not even a 3-voxel tile fits the memory budget of "
                            f"{budget_bytes / 2**20:.0f} MiB; free memory or use a smaller model")
    overlap = min(overlap, max(1, min(best) // 4))
    return TilePlan(best, halo, overlap, decode_voxels)


def _even_splits(length: int, overlap: int) -> set[int]:
    """Core sizes that cover ``length`` with k tiles and little waste, for every k (>= 3 voxels)."""
    sizes = {length}
    for count in range(2, length // 2 + 1):
        size = math.ceil((length + (count - 1) * overlap) / count)
        if size >= max(3, overlap + 1):
            sizes.add(size)
    return sizes


def axis_tiles(length: int, core: int, overlap: int) -> list[tuple[int, int]]:
    """Core ranges [start, stop) covering 0..length with at least ``overlap`` shared voxels."""
    if core >= length:
        return [(0, length)]
    step = max(1, core - overlap)
    starts = list(range(0, length - core, step)) + [length - core]
    return [(start, start + core) for start in starts]


def gaussian_weight(points: np.ndarray, low: float, high: float, single: bool) -> np.ndarray:
    """MONAI-style Gaussian importance (sigma = 1/8 of the tile), floored so no voxel gets 0."""
    if single:
        return np.ones_like(points, dtype=np.float64)
    centre = (low + high) / 2
    sigma = max(0.125 * (high - low + 1), 0.5)
    return np.maximum(np.exp(-0.5 * ((points - centre) / sigma) ** 2), _MIN_WEIGHT)


def _as_cancel_check(cancel) -> CancelCheck:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise InputError("cancel must be a callable or an object with is_set()")


def upsample_slices(model: CycleINR, volume: np.ndarray, out: np.ndarray, scale: float,
                    intensities: IntensityMap, device: torch.device, plan: TilePlan,
                    progress: ProgressCallback | None = None, cancel=None,
                    mixed_precision: bool = True, skip_below: float | None = None,
                    keep_acquired: bool = True, compile_model: bool = False,
                    notes: list[str] | None = None) -> None:
    """Fill ``out`` (slice axis first, output dtype) from ``volume`` (slice axis first).

    Both may be views with any strides; ``volume`` is only read. ``skip_below`` (input units,
    e.g. -900 HU; off by default): output voxels whose 27 LR neighbours all lie below it get
    linear interpolation without running the network; tiles that are all background skip the
    encoder too. ``keep_acquired`` (default): output slices that lie exactly on an input slice
    are that slice, bit for bit, and are not decoded (the cycle constraint of the paper's Eq. 7
    made exact where the grids meet); off, the network regenerates them too. ``compile_model``
    runs the encoder and decoder through torch.compile (``compiled``: off by default, measured
    not to pay on CPU); a failed compilation is added to ``notes`` and the work goes on eagerly.
    """
    should_stop = _as_cancel_check(cancel)
    background = None if skip_below is None else float(intensities.forward(np.array([skip_below]))[0])
    slices, rows, cols = volume.shape
    positions = output_positions(slices, scale)
    if out.shape != (len(positions), rows, cols):
        raise InputError(f"output array has shape {out.shape}, expected {(len(positions), rows, cols)}")
    acquired = acquired_slices(positions) if keep_acquired else np.full(len(positions), -1)
    copied = acquired >= 0
    halo = plan.halo
    slab_tiles = axis_tiles(slices, plan.core[0], plan.overlap)
    row_tiles = axis_tiles(rows, plan.core[1], plan.overlap)
    col_tiles = axis_tiles(cols, plan.core[2], plan.overlap)

    # Continuous slice intervals owned by each slab: [start, stop - 1]; consecutive ones overlap.
    slab_ranges = []
    for start, stop in slab_tiles:
        first = int(np.searchsorted(positions, start - 1e-9, side="left"))
        last = int(np.searchsorted(positions, stop - 1 + 1e-9, side="right")) - 1
        slab_ranges.append((first, last))
    use_autocast = mixed_precision and device.type == "cuda"
    autocast_dtype = torch.bfloat16 if use_autocast and torch.cuda.is_bf16_supported() else torch.float16
    model.eval()
    use_channels_last(model)
    paths = hot_paths(model, compile_model, notes)
    if halo >= model.config.receptive_radius:
        _write_owned_parts(model, volume, out, positions, scale, intensities, device, plan,
                           (slab_tiles, row_tiles, col_tiles), slab_ranges, progress, should_stop,
                           (use_autocast, autocast_dtype), background, copied, paths)
        _copy_acquired(volume, out, acquired)
        keep_constant_neighbourhoods(volume, out, positions)
        return
    slice_weight_sum = np.zeros(len(positions))
    for (start, stop), (first, last) in zip(slab_tiles, slab_ranges):
        slice_weight_sum[first:last + 1] += gaussian_weight(
            positions[first:last + 1], start, stop - 1, len(slab_tiles) == 1)
    row_weight_sum, col_weight_sum = np.zeros(rows), np.zeros(cols)
    for axis_sum, tiles in ((row_weight_sum, row_tiles), (col_weight_sum, col_tiles)):
        for start, stop in tiles:
            axis_sum[start:stop] += gaussian_weight(np.arange(start, stop, dtype=float),
                                                    start, stop - 1, len(tiles) == 1)
    inplane_weight_sum = np.outer(row_weight_sum, col_weight_sum).astype(np.float32)

    total_work = (sum(last - first + 1 for first, last in slab_ranges)
                  * sum(stop - start for start, stop in row_tiles)
                  * sum(stop - start for start, stop in col_tiles))
    done_work = 0
    buffer_start = 0
    buffer = np.zeros((0, rows, cols), dtype=np.float32)
    for slab_index, ((slab_start, slab_stop), (first, last)) in enumerate(zip(slab_tiles, slab_ranges)):
        if last >= buffer_start + buffer.shape[0]:
            grown = np.zeros((last - buffer_start + 1, rows, cols), dtype=np.float32)
            grown[:buffer.shape[0]] = buffer
            buffer = grown
        in_start, in_stop = max(0, slab_start - halo), min(slices, slab_stop + halo)
        slice_weights = np.zeros(last - first + 1)
        if last >= first:
            slice_weights = gaussian_weight(positions[first:last + 1], slab_start, slab_stop - 1,
                                            len(slab_tiles) == 1).astype(np.float32)
        for row_start, row_stop in row_tiles:
            for col_start, col_stop in col_tiles:
                if last < first:
                    continue
                if should_stop():
                    raise Cancelled("cancelled by the user")
                tile = _run_tile(model, volume, intensities, device, plan,
                                 (in_start, in_stop), (row_start, row_stop), (col_start, col_stop),
                                 positions[first:last + 1] - in_start, scale,
                                 use_autocast, autocast_dtype, should_stop, background,
                                 copied[first:last + 1], paths)
                weights = (slice_weights[:, None, None]
                           * gaussian_weight(np.arange(row_start, row_stop, dtype=float), row_start,
                                             row_stop - 1, len(row_tiles) == 1).astype(np.float32)[None, :, None]
                           * gaussian_weight(np.arange(col_start, col_stop, dtype=float), col_start,
                                             col_stop - 1, len(col_tiles) == 1).astype(np.float32)[None, None, :])
                target = buffer[first - buffer_start:last - buffer_start + 1,
                                row_start:row_stop, col_start:col_stop]
                target += tile * weights
                done_work += tile.size
                if progress is not None:
                    progress(min(1.0, done_work / max(1, total_work)))
        # Slices no later slab reaches are final: normalise, map back to units and dtype, store.
        final_stop = slab_ranges[slab_index + 1][0] if slab_index + 1 < len(slab_tiles) else len(positions)
        count = final_stop - buffer_start
        if count > 0:
            # a few slices at a time: the float temporaries stay small beside the output
            for begin in range(0, count, _FINISH_SLICES):
                end = min(count, begin + _FINISH_SLICES)
                finished = buffer[begin:end] / (slice_weight_sum[buffer_start + begin:buffer_start + end,
                                                                 None, None].astype(np.float32)
                                                * inplane_weight_sum[None])
                out[buffer_start + begin:buffer_start + end] = cast_to_dtype(intensities.inverse(finished),
                                                                             out.dtype)
            buffer = buffer[count:].copy()
            buffer_start = final_stop
    _copy_acquired(volume, out, acquired)
    keep_constant_neighbourhoods(volume, out, positions)
    if progress is not None:
        progress(1.0)


def _copy_acquired(volume: np.ndarray, out: np.ndarray, acquired: np.ndarray) -> None:
    """Acquired slices straight from the input, in its own values (no normalise round trip)."""
    for output_index in np.flatnonzero(acquired >= 0):
        source = volume[acquired[output_index]]
        out[output_index] = source if out.dtype == volume.dtype else cast_to_dtype(source, out.dtype)


def keep_constant_neighbourhoods(volume: np.ndarray, out: np.ndarray, positions: np.ndarray) -> None:
    """Where all 27 LR neighbours of an output voxel hold one value (the 3x3 in-plane
    neighbourhoods, edges replicated, on LR slices n-1, n, n+1 around its nearest slice n), the
    output voxel is that value, exactly and in input units: no invented structure in air, in
    padding or in a constant volume, whatever the network would say there and whatever the
    model's intensity window (a -3024 padding stays -3024). One pass over the LR slices."""
    slices, rows, cols = volume.shape
    nearest = np.clip(np.rint(np.asarray(positions, dtype=np.float32)), 0, slices - 1).astype(int)
    extremes: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def in_plane_extremes(index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in extremes:
            plane = np.pad(volume[index], 1, mode="edge")
            views = [plane[a:a + rows, b:b + cols] for a in range(3) for b in range(3)]
            low, high = views[0].copy(), views[0].copy()
            for view in views[1:]:
                np.minimum(low, view, out=low)
                np.maximum(high, view, out=high)
            extremes[index] = (low, high)
        return extremes[index]

    for centre in np.unique(nearest):
        around = [min(max(index, 0), slices - 1) for index in (centre - 1, centre, centre + 1)]
        for index in [index for index in extremes if index < around[0]]:
            del extremes[index]
        lows, highs = zip(*(in_plane_extremes(index) for index in around))
        constant = (np.minimum(np.minimum(lows[0], lows[1]), lows[2])
                    == np.maximum(np.maximum(highs[0], highs[1]), highs[2]))
        if not constant.any():
            continue
        value = volume[centre][constant]
        value = value if out.dtype == volume.dtype else cast_to_dtype(value, out.dtype)
        for output_index in np.flatnonzero(nearest == centre):
            out[output_index][constant] = value


def _owned_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Split overlapping [start, stop) ranges into disjoint ones covering the same span: each
    overlap is cut at its middle, so every voxel belongs to exactly one tile."""
    cuts = [ranges[0][0]] + [(following[0] + previous[1]) // 2
                             for previous, following in zip(ranges, ranges[1:])] + [ranges[-1][1]]
    return list(zip(cuts[:-1], cuts[1:]))


def _write_owned_parts(model: CycleINR, volume: np.ndarray, out: np.ndarray, positions: np.ndarray,
                       scale: float, intensities: IntensityMap, device: torch.device, plan: TilePlan,
                       tiles, slab_ranges, progress, should_stop: CancelCheck, autocast, background,
                       copied: np.ndarray, paths: HotPaths) -> None:
    """Exact halo: tiles agree wherever they overlap, so nothing needs blending. Each tile
    computes only the voxels it owns and writes them straight into ``out`` in its dtype: no
    float32 output buffer (for a 512x512x64 CT at x5 that buffer alone was 330 MB)."""
    slab_tiles, row_tiles, col_tiles = tiles
    slices = volume.shape[0]
    own_slices = _owned_ranges([(first, last + 1) for first, last in slab_ranges])
    own_rows, own_cols = _owned_ranges(row_tiles), _owned_ranges(col_tiles)
    total = len(positions) * volume.shape[1] * volume.shape[2]
    done = 0
    for (slab_start, slab_stop), (first, stop) in zip(slab_tiles, own_slices):
        if stop <= first:
            continue
        in_start, in_stop = max(0, slab_start - plan.halo), min(slices, slab_stop + plan.halo)
        for row_range in own_rows:
            for col_range in own_cols:
                if should_stop():
                    raise Cancelled("cancelled by the user")
                tile = _run_tile(model, volume, intensities, device, plan, (in_start, in_stop), row_range,
                                 col_range, positions[first:stop] - in_start, scale, *autocast,
                                 should_stop, background, copied[first:stop], paths)
                out[first:stop, row_range[0]:row_range[1], col_range[0]:col_range[1]] = cast_to_dtype(
                    intensities.inverse(tile), out.dtype)
                done += tile.size
                if progress is not None:
                    progress(min(1.0, done / total))
    if progress is not None:
        progress(1.0)


def _run_tile(model: CycleINR, volume: np.ndarray, intensities: IntensityMap, device: torch.device,
              plan: TilePlan, slice_range, row_range, col_range, local_positions: np.ndarray,
              scale: float, use_autocast: bool, autocast_dtype, should_stop: CancelCheck,
              background: float | None, copied: np.ndarray | None, paths: HotPaths) -> np.ndarray:
    """Encode one tile with its halo and decode the output slices of its core; slices marked
    ``copied`` lie on an input slice and take its (normalised) values without decoding."""
    _, rows, cols = volume.shape
    halo = plan.halo
    row_in = (max(0, row_range[0] - halo), min(rows, row_range[1] + halo))
    col_in = (max(0, col_range[0] - halo), min(cols, col_range[1] + halo))
    block = volume[slice_range[0]:slice_range[1], row_in[0]:row_in[1], col_in[0]:col_in[1]]
    tensor = torch.from_numpy(intensities.forward(np.ascontiguousarray(block)))[None, None].to(device)
    # The query needs the core plus one latent ring in-plane (the 3x3 neighbourhood).
    row_q = (max(row_in[0], row_range[0] - 1), min(row_in[1], row_range[1] + 1))
    col_q = (max(col_in[0], col_range[0] - 1), min(col_in[1], col_range[1] + 1))
    row_crop = slice(row_q[0] - row_in[0], row_q[1] - row_in[0])
    col_crop = slice(col_q[0] - col_in[0], col_q[1] - col_in[0])
    row_keep = slice(row_range[0] - row_q[0], row_range[1] - row_q[0])
    col_keep = slice(col_range[0] - col_q[0], col_range[1] - col_q[0])
    result = np.empty((len(local_positions), row_range[1] - row_range[0], col_range[1] - col_range[0]),
                      dtype=np.float32)
    queried = tensor[:, :, :, row_crop, col_crop]
    high, low = float(queried.max()), float(queried.min())
    if high == low or (background is not None and high < background):
        # constant (or all background) around this tile's queries: linear interpolation is exact
        positions = torch.as_tensor(local_positions, dtype=torch.float32, device=device)
        interpolated = interpolate_slices(queried, positions)[0, 0, :, row_keep, col_keep]
        return interpolated.float().cpu().numpy()
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=use_autocast):
        latent = paths.encode(tensor, torch.channels_last_3d)[:, :, :, row_crop, col_crop]
        prepared = prepare(model, queried, latent, background)
        del latent
        window = ((row_keep.start, row_keep.stop), (col_keep.start, col_keep.stop))
        per_slice = (row_range[1] - row_range[0]) * (col_range[1] - col_range[0])
        chunk = max(4, plan.decode_voxels // per_slice)
        query_spacing = 1.0 / scale
        decoded = np.arange(len(local_positions)) if copied is None else np.flatnonzero(~copied)
        for start in range(0, len(decoded), chunk):
            if should_stop():
                raise Cancelled("cancelled by the user")
            rows_out = decoded[start:start + chunk]
            values = query_slices(model, prepared, local_positions[rows_out], query_spacing,
                                  window=window, max_voxels=plan.decode_voxels, decode=paths.decode)
            values = values[0, 0].float()
            if intensities.clip:
                values = values.clamp_(0, 1)
            result[rows_out] = values.cpu().numpy()
    if copied is not None and copied.any():
        inputs = np.rint(local_positions[copied]).astype(np.int64)
        result[copied] = queried[0, 0, inputs, row_keep, col_keep].float().cpu().numpy()
    return result
