"""The CycleINR network: encoder, attention-enhanced latent sampling, MLP decoder.

Tensors are (batch, channel, slice, row, column): the network upsamples along dim 2 only
(the caller transposes so the chosen axis is there). In-plane, every query coincides with an
LR voxel, so the only continuous coordinate is the slice position ``t`` in LR index units.

Choices the paper leaves open (see DESIGN.md):
- The decoder sees *relative* coordinates only: the offset of ``t`` from its nearest LR slice and
  the log of the query spacing. Nothing depends on where a tile starts.
- ``attention_residual``: the attention output is added to the trilinear latent z^ rather than
  replacing it, so LAM refines interpolation instead of having to rediscover it. With
  ``attention=False`` the latent is z^ itself (the ablation of Table 2).
- ``predict_residual``: the decoder predicts a correction to linear interpolation of the input
  intensities (an easy identity to start from; needs far fewer steps to beat interpolation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def _block_conv(width: int, factorised: bool) -> list[nn.Module]:
    """One 3^3 conv, or its (2+1)D factorisation (in-plane 1x3x3, ReLU, through-plane 3x1x1):
    the same one-voxel reach in every direction, so the receptive radius is unchanged."""
    if not factorised:
        return [nn.Conv3d(width, width, 3, padding=1)]
    return [nn.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1)), nn.ReLU(inplace=True),
            nn.Conv3d(width, width, (3, 1, 1), padding=(1, 0, 0))]


class Encoder(nn.Module):
    """Residual 3D CNN (ArSSR's ResCNN shape): conv in, residual blocks of conv+ReLU, conv out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.encoder_channels
        self.head = nn.Conv3d(1, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(*[layer for _ in range(config.convs_per_block)
                            for layer in (*_block_conv(width, config.factorised_encoder), nn.ReLU(inplace=True))])
            for _ in range(config.encoder_blocks))
        self.tail = nn.Conv3d(width, config.latent_dim, 3, padding=1)

    def forward(self, volume: torch.Tensor, memory_format=None) -> torch.Tensor:
        """``memory_format`` channels_last_3d keeps every feature map in that layout: the
        one-channel input cannot carry it, so the head's output is converted once. None: the
        layout of the weights (see ``use_channels_last``)."""
        if memory_format is None:
            channels_last = self.tail.weight.is_contiguous(memory_format=torch.channels_last_3d)
            memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        features = self.head(volume).contiguous(memory_format=memory_format)
        for block in self.blocks:
            features = features + block(features)
        return self.tail(features)


class Decoder(nn.Module):
    """MLP with ReLUs; its input is concatenated again before the middle layer (ArSSR)."""

    def __init__(self, in_dim: int, config: ModelConfig) -> None:
        super().__init__()
        width, count = config.decoder_width, config.decoder_layers
        self.skip_at = count // 2
        layers = []
        for index in range(count):
            fan_in = in_dim if index == 0 else width
            if index == self.skip_at:
                fan_in += in_dim
            fan_out = 1 if index == count - 1 else width
            layers.append(nn.Linear(fan_in, fan_out))
        self.layers = nn.ModuleList(layers)
        self.output_relu = config.output_relu

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            if index == self.skip_at:
                hidden = torch.cat([hidden, inputs], dim=-1)
            hidden = layer(hidden)
            if index < last or self.output_relu:
                hidden = torch.relu(hidden)
        return hidden


def interpolate_slices(grid: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of a (B, C, S, H, W) grid at fractional slice positions -> (B, C, T, H, W)."""
    slices = grid.shape[2]
    lower = positions.floor().clamp(0, slices - 1)
    fraction = (positions - lower).clamp(0, 1).to(grid.dtype)
    lower = lower.long()
    upper = (lower + 1).clamp(max=slices - 1)
    shape = (1, 1, -1, 1, 1)
    return (grid.index_select(2, lower) * (1 - fraction).view(shape)
            + grid.index_select(2, upper) * fraction.view(shape))


class CycleINR(nn.Module):
    """encode(volume) -> latent; query(volume, latent, positions, query_spacing) -> intensities."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        latent = config.latent_dim
        if config.attention:
            self.to_query = nn.Linear(latent, config.attention_dim, bias=False)
            self.to_key = nn.Linear(latent, config.attention_dim, bias=False)
            self.to_value = nn.Linear(latent, latent, bias=False)
        self.decoder = Decoder(latent + 2, config)

    def encode(self, volume: torch.Tensor, memory_format=None) -> torch.Tensor:
        return self.encoder(volume, memory_format)

    def keys_values(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V once per LR voxel, channels last, padded by one voxel in-plane (edge copies)."""
        padded = F.pad(latent, (1, 1, 1, 1, 0, 0), mode="replicate").permute(0, 2, 3, 4, 1)
        return self.to_key(padded), self.to_value(padded)

    def sample_latent(self, latent: torch.Tensor, positions: torch.Tensor,
                      keys_values: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Latent at each query (B, T, H, W, L): trilinear z^, refined by attention over 27 LR latents."""
        trilinear = interpolate_slices(latent, positions).permute(0, 2, 3, 4, 1)
        if not self.config.attention:
            return trilinear
        keys, values = keys_values if keys_values is not None else self.keys_values(latent)
        slices, rows, cols = latent.shape[2:]
        nearest = positions.round().clamp(0, slices - 1).long()
        query = self.to_query(trilinear) * (1.0 / math.sqrt(self.config.attention_dim))
        logits, gathered = [], []
        for slice_step in (-1, 0, 1):
            index = (nearest + slice_step).clamp(0, slices - 1)
            key_slab = keys.index_select(1, index)
            for row_step in range(3):
                for col_step in range(3):
                    key = key_slab[:, :, row_step:row_step + rows, col_step:col_step + cols]
                    logits.append((query * key).sum(-1))
                    gathered.append((slice_step, row_step, col_step))
        weights = torch.softmax(torch.stack(logits, dim=-1), dim=-1)
        attended = torch.zeros_like(trilinear)
        slab_cache: dict[int, torch.Tensor] = {}
        for neighbour, (slice_step, row_step, col_step) in enumerate(gathered):
            if slice_step not in slab_cache:
                slab_cache = {slice_step: values.index_select(1, (nearest + slice_step).clamp(0, slices - 1))}
            value = slab_cache[slice_step][:, :, row_step:row_step + rows, col_step:col_step + cols]
            attended = attended + weights[..., neighbour:neighbour + 1] * value
        if self.config.attention_residual:
            return trilinear + attended
        return attended

    def query(self, volume: torch.Tensor, latent: torch.Tensor, positions: torch.Tensor,
              query_spacing: float,
              keys_values: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Intensities at slice positions ``positions`` (LR index units, any real values inside the
        grid); ``query_spacing`` is the spacing of the queried slices in LR slice units (1/r)."""
        sampled = self.sample_latent(latent, positions, keys_values)
        slices = latent.shape[2]
        offset = positions - positions.round().clamp(0, slices - 1)
        batch, count, rows, cols, _ = sampled.shape
        coords = torch.empty(batch, count, rows, cols, 2, dtype=sampled.dtype, device=sampled.device)
        coords[..., 0] = offset.to(sampled.dtype).view(1, -1, 1, 1)
        coords[..., 1] = math.log(query_spacing)
        decoded = self.decoder(torch.cat([sampled, coords], dim=-1)).squeeze(-1).unsqueeze(1)
        if self.config.predict_residual:
            decoded = decoded + interpolate_slices(volume, positions).to(decoded.dtype)
        return decoded

    def forward(self, volume: torch.Tensor, positions: torch.Tensor, query_spacing: float) -> torch.Tensor:
        return self.query(volume, self.encode(volume), positions, query_spacing)


def use_channels_last(model: CycleINR) -> CycleINR:
    """Put the encoder's weights, and so its feature maps, in channels-last layout: 3D
    convolutions run faster so (oneDNN on CPU: a 32-channel 3^3 convolution's forward and
    backward in 38 ms instead of 68 on one core, a whole training step about 15 % faster;
    cuDNN's tensor-core kernels on GPU), and the latent comes out in the layout the slice query
    reads. Same values up to float summation order. Idempotent; training, saving (weights are
    written contiguous) and DDP work as before."""
    model.encoder.to(memory_format=torch.channels_last_3d)
    return model


def build_model(config: ModelConfig) -> CycleINR:
    return CycleINR(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
