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

from .bundled import METADATA_KEY, default_model_path, model_path, read_description  # noqa: F401  (re-exported)
from .config import ModelInfo
from .errors import ModelError
from .model import CycleINR, build_model


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
    """Write weights + description atomically and verified (``output_files``)."""
    from .output_files import write_safetensors_atomically, write_text_atomically

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"weights file must end in .safetensors, got {path.name}")
    info.config = network.config
    dtype = torch.float16 if half_precision else torch.float32
    tensors = {name: value.detach().to("cpu", dtype).contiguous()
               for name, value in network.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    description = info.to_json()
    write_safetensors_atomically(tensors, path, metadata={METADATA_KEY: description})
    write_text_atomically(description + "\n", path.with_suffix(".json"))
    return path


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """The description stored in a weights file, without loading its tensors."""
    description = read_description(path)
    try:
        return ModelInfo.from_dict(description)
    except (ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{Path(path).name} has an invalid CycleINR description: {error}") from None


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Build the network its file describes and load the weights, checking every tensor."""
    from safetensors.torch import load_file

    path = model_path(path)
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


def describe(path: str | os.PathLike) -> str:
    info = read_model_info(path)
    return json.dumps(json.loads(info.to_json()), indent=2)
