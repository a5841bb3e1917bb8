"""Weights on disk: safetensors with the model's JSON description in its header.

Loading never unpickles (safetensors holds raw tensors only), so a file a user hands us cannot
run code. The same JSON is also written beside the weights (``<name>.json``) for people to read;
the copy inside the safetensors header is the one that counts.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelInfo
from .errors import ModelError
from .model import CycleINR, build_model

METADATA_KEY = "cycleinr"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODELS = {"ct": "cycleinr_ct.safetensors", "ct-cpu": "cycleinr_ct_cpu.safetensors"}
MODEL_ENV = "CYCLEINR_MODEL"


@dataclass
class LoadedModel:
    network: CycleINR
    info: ModelInfo
    path: Path | None

    @property
    def name(self) -> str:
        return self.info.name


def save_model(path: str | os.PathLike, network: CycleINR, info: ModelInfo,
               half_precision: bool = False) -> Path:
    """Write weights + description atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"weights file must end in .safetensors, got {path.name}")
    info.config = network.config
    dtype = torch.float16 if half_precision else torch.float32
    tensors = {name: value.detach().to("cpu", dtype).contiguous()
               for name, value in network.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    description = info.to_json()
    save_file(tensors, str(partial), metadata={METADATA_KEY: description})
    os.replace(partial, path)
    path.with_suffix(".json").write_text(description + "\n")
    return path


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The description stored in a weights file, without loading its tensors."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except FileNotFoundError:
        raise ModelError(f"model file not found: {path}") from None
    except Exception as error:  # safetensors raises its own error types for bad headers
        raise ModelError(f"{path.name} is not a readable safetensors weights file ({error})") from None
    if METADATA_KEY not in metadata:
        raise ModelError(f"{path.name} has no CycleINR description in its header: not a CycleINR model")
    try:
        return ModelInfo.from_json(metadata[METADATA_KEY])
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path.name} has an invalid CycleINR description: {error}") from None


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the network its file describes and load the weights, checking every tensor."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else default_model_path()
    if path.is_dir():
        raise ModelError(f"model path is a folder, expected a .safetensors file: {path}")
    info = read_model_info(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as error:
        raise ModelError(f"{path.name} could not be read (truncated or corrupt?): {error}") from None
    network = build_model(info.config)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{path.name} does not match its configuration: "
                         f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelError(f"{path.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"the configuration needs {tuple(expected[name].shape)}")
        if not torch.isfinite(tensor).all():
            raise ModelError(f"{path.name}: tensor {name} holds NaN or infinite values")
    network.load_state_dict({name: t.float() for name, t in tensors.items()})
    network.to(device).eval()
    return LoadedModel(network, info, path)


def default_model_path(device_type: str = "cpu") -> Path:
    """The bundled model for a device: $CYCLEINR_MODEL if set, else the first bundled file in
    the device's order of preference (CPU-sized first on a CPU, paper-sized first on a GPU)."""
    override = os.environ.get(MODEL_ENV)
    if override:
        return Path(override)
    order = ("ct-cpu", "ct") if device_type == "cpu" else ("ct", "ct-cpu")
    for kind in order:
        path = WEIGHTS_DIR / DEFAULT_MODELS[kind]
        if path.exists():
            return path
    raise ModelError(f"no bundled model in {WEIGHTS_DIR}; pass a model file (--model) or set {MODEL_ENV}")


def describe(path: str | os.PathLike) -> str:
    info = read_model_info(path)
    return json.dumps(json.loads(info.to_json()), indent=2)
