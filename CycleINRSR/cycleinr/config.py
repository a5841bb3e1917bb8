"""Model configurations: the paper's network and smaller ones, as data rather than code.

A config is everything needed to rebuild a network from its weights: it is stored (as JSON)
inside every weights file, so a file always says what it is. The paper's ablations are flags
(``attention`` off = plain trilinear latent, Table 2), in the spirit of LIIF's constructor flags.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a CycleINR network (upsampling along one axis only)."""

    encoder_channels: int = 64      # intermediate width of the residual 3D CNN
    encoder_blocks: int = 3         # residual blocks (paper: 3)
    convs_per_block: int = 6        # Conv3d 3^3 + ReLU per block (paper: 6)
    factorised_encoder: bool = False  # each block conv as (2+1)D: 1x3x3 in-plane, ReLU, 3x1x1 (ours)
    latent_dim: int = 128           # |z| (paper: 128)
    attention: bool = True          # LAM / ALCGS over the 27 neighbouring LR latents
    attention_dim: int = 128        # width of W_Q and W_K
    attention_residual: bool = True  # z~ = z^ + attention (z^ = trilinear latent); see model.py
    decoder_width: int = 256        # paper: 256
    decoder_layers: int = 8         # paper: 8, input re-injected before the middle layer
    predict_residual: bool = True   # decoder predicts a correction to linear interpolation
    output_relu: bool = False       # ArSSR's last ReLU; only meaningful without predict_residual

    def __post_init__(self) -> None:
        for name in ("encoder_channels", "encoder_blocks", "convs_per_block", "latent_dim",
                     "attention_dim", "decoder_width", "decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.decoder_layers < 2:
            raise ValueError("model config: decoder_layers must be at least 2")
        if self.output_relu and self.predict_residual:
            raise ValueError("model config: output_relu cannot be combined with predict_residual "
                             "(a correction to interpolation must be able to be negative)")

    @property
    def receptive_radius(self) -> int:
        """LR voxels on each side that influence one output voxel (all 3^3 convs + the 3^3 neighbourhood)."""
        convs = 2 + self.encoder_blocks * self.convs_per_block
        return convs + 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"model config has unknown fields: {sorted(unknown)}")
        return cls(**data)


# Named presets. "paper" is section 4.1 of the paper; "cpu" is sized so a 512x512x64 CT at x5
# finishes in minutes on two CPU cores; "cpu-wide" is 1.5x its width with a twice wider decoder
# and LAM on; "cpu-fact" spends the CPU budget on a deeper, wider factorised encoder (12 of 27
# MACs per conv, the same receptive field per conv, more in-plane context: where the slice
# axis lacks detail, in-plane structure is what a new slice can be inferred from); "tiny" is
# for tests only. The capacity table in the CT model card compares them.
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    "cpu": ModelConfig(encoder_channels=32, encoder_blocks=2, convs_per_block=3, latent_dim=32,
                       attention_dim=16, decoder_width=64, decoder_layers=4),
    "cpu-wide": ModelConfig(encoder_channels=48, encoder_blocks=2, convs_per_block=3, latent_dim=48,
                            attention_dim=32, decoder_width=128, decoder_layers=4),
    "cpu-fact": ModelConfig(encoder_channels=48, encoder_blocks=3, convs_per_block=3, latent_dim=48,
                            factorised_encoder=True, attention=False, decoder_width=96,
                            decoder_layers=4),
    "tiny": ModelConfig(encoder_channels=8, encoder_blocks=1, convs_per_block=2, latent_dim=8,
                        attention_dim=8, decoder_width=16, decoder_layers=2),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}") from None


@dataclass(frozen=True)
class Normalisation:
    """How intensities map to the network's [0, 1] range; belongs to the model.

    kind "window": clip to [low, high] in the input's units (CT: HU -1024..3071) and scale.
    kind "percentile": per volume, the low/high percentiles of the voxels (MR) map to 0 and 1.
    """

    kind: str = "window"
    low: float = -1024.0
    high: float = 3071.0

    def __post_init__(self) -> None:
        if self.kind not in ("window", "percentile"):
            raise ValueError(f"normalisation kind must be 'window' or 'percentile', got {self.kind!r}")
        if not self.high > self.low:
            raise ValueError(f"normalisation needs high > low, got low={self.low}, high={self.high}")
        if self.kind == "percentile" and not (0 <= self.low < self.high <= 100):
            raise ValueError("percentile normalisation needs 0 <= low < high <= 100")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalisation":
        return cls(**data)


CT_NORMALISATION = Normalisation("window", -1024.0, 3071.0)
MR_NORMALISATION = Normalisation("percentile", 0.5, 99.5)


@dataclass
class ModelInfo:
    """Everything stored next to the weights: architecture, intensities, provenance."""

    config: ModelConfig = field(default_factory=ModelConfig)
    normalisation: Normalisation = field(default_factory=lambda: CT_NORMALISATION)
    trained_scales: tuple[float, float] = (2.0, 6.0)
    name: str = "untrained"
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": "cycleinr-model/1",
            "name": self.name,
            "config": self.config.to_dict(),
            "normalisation": self.normalisation.to_dict(),
            "trained_scales": list(self.trained_scales),
            "provenance": self.provenance,
        }, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelInfo":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelInfo":
        if data.get("format") != "cycleinr-model/1":
            raise ValueError(f"not a CycleINR model description (format={data.get('format')!r})")
        low, high = data["trained_scales"]
        return cls(config=ModelConfig.from_dict(data["config"]),
                   normalisation=Normalisation.from_dict(data["normalisation"]),
                   trained_scales=(float(low), float(high)),
                   name=str(data.get("name", "unnamed")),
                   provenance=dict(data.get("provenance", {})))
