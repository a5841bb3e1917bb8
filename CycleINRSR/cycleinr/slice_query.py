"""Inference-only evaluation of ``CycleINR.query``, restructured so the work is large matmuls.

Same maths as ``model.CycleINR.query`` (the training path keeps using that), re-ordered with
three exact identities, so that per output voxel only the unavoidable work remains:

1. The query is linear in the slice fraction f: q = W_Q((1-f) z_lo + f z_hi) / sqrt(d)
   = (1-f) Q_lo + f Q_hi with Q = W_Q z / sqrt(d) computed once per LR voxel. So the 27 logits
   of an output voxel are (1-f) (Q_lo . K_i) + f (Q_hi . K_i). Output slices are grouped by
   their nearest LR slice n; lo and hi then lie in {n-1, n, n+1}, so one batched matmul
   (3 x d) @ (d x 27) per in-plane voxel gives every logit of the group's r slices, and a
   (slices x 3) coefficient matrix mixes them. The trilinear latent z^ and the linear
   interpolation of the intensities are the same mix of the three LR slices.
2. The attention-weighted value sum is three batched matmuls per in-plane voxel,
   (slices x 9) @ (9 x C), one per LR slice, on the 3x3 in-plane neighbourhoods of K and V
   gathered once per LR slice (not once per group: that copy cost more than the matmuls).
3. The decoder's coordinate inputs (offset to n, log of the query spacing) are constant over
   an output slice, so they fold into a per-slice bias of the first and the skip layer:
   no coordinate tensor, no concatenation of them.

Results match ``query`` to float32 round-off (tested at 1e-4 relative). Optionally (the
``background`` of ``prepare``) voxels whose 27 LR neighbours are all background get linear
interpolation instead, and so do voxels whose 27 LR neighbours are all equal (always: linear
interpolation is then that constant); only the other pixels go through attention and decoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import CycleINR

_NEIGHBOURS = 27


@dataclass
class PreparedLatent:
    """Per-LR-voxel tensors of one tile, channels last, each with one edge-copy slice before and
    after (so LR slices n-1, n, n+1, clamped as query() clamps them, are the view [n:n+3])."""

    latent: torch.Tensor          # (S + 2, H, W, C)
    intensities: torch.Tensor     # (S + 2, H, W)
    queries: torch.Tensor | None  # (S + 2, H, W, d), already divided by sqrt(d)
    keys: torch.Tensor | None     # (S + 2, H + 2, W + 2, d), also edge-replicated in-plane
    values: torch.Tensor | None   # (S + 2, H + 2, W + 2, C)
    neighbour_max: torch.Tensor | None = None  # (S + 2, H, W): 3x3 in-plane max of the intensities
    background: float | None = None            # skip voxels whose 27 LR neighbours are all below
    neighbour_min: torch.Tensor | None = None  # (S + 2, H, W): 3x3 in-plane min (constant = min == max)

    @property
    def slices(self) -> int:
        return self.latent.shape[0] - 2


def _pad_slices(tensor: torch.Tensor) -> torch.Tensor:
    return torch.cat([tensor[:1], tensor, tensor[-1:]])


def prepare(model: CycleINR, volume: torch.Tensor, latent: torch.Tensor,
            background: float | None = None) -> PreparedLatent:
    """Everything that depends on LR voxels only, once per tile (batch size 1).

    ``background`` (normalised intensity): output voxels whose 27 LR neighbours all lie below it
    skip attention and decoder and get linear interpolation (an option; off by default).
    """
    if latent.shape[0] != 1 or volume.shape[0] != 1:
        raise ValueError("slice_query works on one tile at a time (batch size 1)")
    channels_last = latent[0].permute(1, 2, 3, 0)
    intensities = _pad_slices(volume[0, 0])
    # 3x3 in-plane extremes of every LR slice: voxels whose 27 neighbours are all equal (or all
    # background) take linear interpolation, which is then that constant, without the network
    padded = F.pad(intensities[:, None], (1, 1, 1, 1), mode="replicate")
    neighbour_max = F.max_pool2d(padded, 3, stride=1)[:, 0]
    neighbour_min = -F.max_pool2d(-padded, 3, stride=1)[:, 0]
    if not model.config.attention:
        return PreparedLatent(_pad_slices(channels_last), intensities, None, None, None, neighbour_max, background,
                              neighbour_min)
    keys, values = model.keys_values(latent)
    scale = 1.0 / math.sqrt(model.config.attention_dim)
    queries = model.to_query(channels_last) * scale
    return PreparedLatent(_pad_slices(channels_last), intensities, _pad_slices(queries),
                          _pad_slices(keys[0]), _pad_slices(values[0]), neighbour_max, background, neighbour_min)


def _in_plane_neighbourhood(padded: torch.Tensor, slice_index: int, rows: slice, cols: slice) -> torch.Tensor:
    """(pixels, 9, channels): the 3x3 in-plane neighbours of each window voxel on one (padded) LR
    slice, in query()'s (row, column) order. Gathered once per LR slice and window, then shared
    by the three groups of output slices that reach that LR slice."""
    plane = padded[slice_index, rows.start:rows.stop + 2, cols.start:cols.stop + 2]
    s0, s1, s2 = plane.stride()
    height, width = rows.stop - rows.start, cols.stop - cols.start
    window = plane.as_strided((height, width, 3, 3, plane.shape[-1]), (s0, s1, s0, s1, s2))
    return window.reshape(height * width, 9, plane.shape[-1])


class _NeighbourCache:
    """In-plane neighbourhoods of K and V for the LR slices the current group needs (at most 3)."""

    def __init__(self, prepared: PreparedLatent, rows: slice, cols: slice) -> None:
        self.prepared, self.rows, self.cols = prepared, rows, cols
        self.slices: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def around(self, nearest: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K and V neighbourhoods of LR slices n-1, n, n+1 (padded indices n, n+1, n+2)."""
        wanted = range(nearest, nearest + 3)
        self.slices = {index: value for index, value in self.slices.items() if index in wanted}
        for index in wanted:
            if index not in self.slices:
                self.slices[index] = (
                    _in_plane_neighbourhood(self.prepared.keys, index, self.rows, self.cols),
                    _in_plane_neighbourhood(self.prepared.values, index, self.rows, self.cols))
        return [self.slices[index] for index in wanted]


def _slice_coefficients(positions: np.ndarray, nearest: int, slices: int) -> np.ndarray:
    """(k, 3): weights of LR slices (n-1, n, n+1) in each output slice's linear interpolation."""
    lower = np.clip(np.floor(positions), 0, slices - 1)
    fraction = np.clip(positions - lower, 0.0, 1.0)
    upper = np.minimum(lower + 1, slices - 1)
    mix = np.zeros((len(positions), 3), dtype=np.float64)
    rows = np.arange(len(positions))
    np.add.at(mix, (rows, (lower - nearest + 1).astype(int)), 1.0 - fraction)
    np.add.at(mix, (rows, (upper - nearest + 1).astype(int)), fraction)
    return mix


def query_slices(model: CycleINR, prepared: PreparedLatent, positions: torch.Tensor | np.ndarray,
                 query_spacing: float, window: tuple[tuple[int, int], tuple[int, int]] | None = None,
                 max_voxels: int = 1 << 16, decode=None) -> torch.Tensor:
    """Same values as ``model.query(volume, latent, positions, query_spacing)``, shape (1, 1, T, h, w).

    ``window`` ((row_start, row_stop), (col_start, col_stop)) restricts the output in-plane
    (the neighbourhoods still reach one voxel beyond it); ``max_voxels`` bounds the output voxels
    handled at once (working set about ``max_voxels`` x (27 (C + d) / r + 3 x decoder width) floats).
    Rows go in chunks, and within a chunk groups go in LR-slice order, so each LR slice's
    neighbourhoods are gathered once. ``decode`` replaces ``decode_latents`` (a compiled one).
    """
    decode = decode or decode_latents
    latent = prepared.latent
    slices, (rows, cols) = prepared.slices, latent.shape[1:3]
    (row_start, row_stop), (col_start, col_stop) = window if window is not None else ((0, rows), (0, cols))
    positions = np.asarray(positions.detach().cpu().numpy() if torch.is_tensor(positions) else positions)
    # query() works on float32 positions and torch.round rounds half to even, as numpy's rint does.
    positions = positions.astype(np.float32)
    nearest_all = np.clip(np.rint(positions), 0, slices - 1).astype(int)
    width = col_stop - col_start
    out = torch.empty((len(positions), row_stop - row_start, width), dtype=latent.dtype, device=latent.device)
    groups = [(int(nearest), np.nonzero(nearest_all == nearest)[0]) for nearest in np.unique(nearest_all)]
    largest = max(len(members) for _, members in groups)
    step = max(1, max_voxels // max(1, largest * width))
    for first in range(row_start, row_stop, step):
        rows_now, cols_now = slice(first, min(row_stop, first + step)), slice(col_start, col_stop)
        cache = _NeighbourCache(prepared, rows_now, cols_now) if model.config.attention else None
        for nearest, members in groups:
            values = _query_group(model, prepared, nearest, positions[members].astype(np.float64),
                                  query_spacing, rows_now, cols_now, cache, decode)
            out[members, rows_now.start - row_start:rows_now.stop - row_start] = values
    return out[None, None]


def _query_group(model: CycleINR, prepared: PreparedLatent, nearest: int, positions: np.ndarray,
                 query_spacing: float, rows: slice, cols: slice, cache: _NeighbourCache | None,
                 decode) -> torch.Tensor:
    """Output slices sharing the nearest LR slice ``nearest``, on one in-plane window -> (k, h, w)."""
    latent = prepared.latent
    slices, channels = prepared.slices, latent.shape[-1]
    device = latent.device
    around = slice(nearest, nearest + 3)  # LR slices n-1, n, n+1 in the edge-padded tensors
    mix_np = _slice_coefficients(positions, nearest, slices)
    mix = torch.as_tensor(mix_np, dtype=torch.float32, device=device)  # (k, 3)
    height, width = rows.stop - rows.start, cols.stop - cols.start
    pixels = height * width

    mix_t = mix.t().contiguous().to(latent.dtype)  # (3, k)
    intensities = prepared.intensities[around, rows, cols].reshape(3, pixels).t()
    interpolated = torch.mm(intensities, mix_t)  # (P, k)
    active = _active_pixels(prepared, around, rows, cols)
    if active is not None and active.numel() == 0:
        return interpolated.t().reshape(len(positions), height, width)

    def per_pixel(tensor: torch.Tensor) -> torch.Tensor:
        """(3, h, w, ch) LR-slice tensor -> (A, ch, 3) for the pixels that are worked on."""
        tensor = tensor.reshape(3, pixels, tensor.shape[-1])
        if active is not None:
            tensor = tensor.index_select(1, active)
        return tensor.permute(1, 2, 0)

    def subset(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if active is None else tensor.index_select(0, active)

    count = pixels if active is None else active.numel()
    # Mixing the three LR slices is a K=3 GEMM over (pixel, channel) rows; its (A, C, k) result
    # is used transposed, as (A, k, C), without a copy.
    three = per_pixel(latent[around, rows, cols]).reshape(count * channels, 3)
    trilinear = torch.mm(three, mix_t).view(count, channels, -1).transpose(1, 2)  # (A, k, C)
    if model.config.attention:
        queries = per_pixel(prepared.queries[around, rows, cols])  # (A, d, 3)
        neighbours = [(subset(keys), subset(values)) for keys, values in cache.around(nearest)]
        raw = torch.cat([torch.bmm(keys, queries) for keys, _ in neighbours], dim=1)  # (A, 27, 3)
        logits = torch.mm(raw.view(count * 27, 3), mix_t).view(count, 27, -1).transpose(1, 2)
        weights = torch.softmax(logits.float(), dim=-1).to(latent.dtype)  # (A, k, 27)
        sampled = trilinear if model.config.attention_residual else torch.zeros_like(trilinear)
        for block, (_, values) in enumerate(neighbours):
            sampled = torch.baddbmm(sampled, weights[:, :, 9 * block:9 * block + 9], values)
    else:
        sampled = trilinear.contiguous()
    offsets = torch.as_tensor(positions - nearest, dtype=torch.float32, device=device)
    decoded = decode(model, sampled, offsets, math.log(query_spacing))  # (A, k)
    if model.config.predict_residual:
        decoded = decoded + subset(interpolated).to(decoded.dtype)
    if active is not None:
        decoded = interpolated.to(decoded.dtype).index_copy_(0, active, decoded)
    return decoded.t().reshape(len(positions), height, width)


def _active_pixels(prepared: PreparedLatent, around: slice, rows: slice, cols: slice) -> torch.Tensor | None:
    """Indices of window pixels whose 27 LR neighbours vary (and, with a background, reach it);
    None = all."""
    if prepared.neighbour_max is None:
        return None
    nearby = prepared.neighbour_max[around, rows, cols].amax(0).reshape(-1)
    varying = nearby > prepared.neighbour_min[around, rows, cols].amin(0).reshape(-1) \
        if prepared.neighbour_min is not None else torch.ones_like(nearby, dtype=torch.bool)
    if prepared.background is not None:
        varying &= nearby >= prepared.background
    active = torch.nonzero(varying).squeeze(1)
    return None if active.numel() == nearby.numel() else active


def _coordinate_bias(layer: torch.nn.Linear, first_coord: int, offsets: torch.Tensor,
                     log_spacing: float) -> torch.Tensor:
    """Per-slice bias (k, out): the layer's bias plus its response to the two coordinates."""
    weight = layer.weight
    bias = layer.bias + weight[:, first_coord + 1] * log_spacing
    return bias[None, :] + offsets[:, None].to(weight.dtype) * weight[:, first_coord][None, :]


def decode_latents(model: CycleINR, sampled: torch.Tensor, offsets: torch.Tensor, log_spacing: float) -> torch.Tensor:
    """The decoder on (P, k, C) latents with the coordinates folded into biases -> (P, k).

    The first layer and the latent part of the skip layer (never the first: skip_at >= 1) both
    multiply ``sampled``: one GEMM does both, so the skip layer needs no concatenation.
    """
    decoder = model.decoder
    layers, skip_at = decoder.layers, decoder.skip_at
    channels = sampled.shape[-1]
    width = layers[0].weight.shape[0]
    stacked = torch.cat([layers[0].weight[:, :channels], layers[skip_at].weight[:, width:width + channels]])
    projected = torch.matmul(sampled, stacked.t().to(sampled.dtype))
    hidden = projected[..., :width]
    hidden += _coordinate_bias(layers[0], channels, offsets, log_spacing).to(hidden.dtype)
    hidden.relu_()
    last = len(layers) - 1
    for index in range(1, len(layers)):
        layer = layers[index]
        if index == skip_at:
            hidden = torch.matmul(hidden, layer.weight[:, :width].t().to(hidden.dtype))
            hidden += projected[..., width:]
            hidden += _coordinate_bias(layer, width + channels, offsets, log_spacing).to(hidden.dtype)
        else:
            hidden = layer(hidden)
        if index < last or decoder.output_relu:
            hidden.relu_()
    return hidden.squeeze(-1)
