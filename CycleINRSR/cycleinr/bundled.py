"""Where the bundled weights are and what a weights file says it is, without torch.

Kept free of torch and safetensors so the Slicer panel can show the model's name and trained
range before the user has installed either. The safetensors header is an 8-byte little-endian
length followed by JSON; the model description sits in its ``__metadata__``.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from .errors import ModelError

METADATA_KEY = "cycleinr"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODELS = {"ct": "cycleinr_ct.safetensors", "ct-cpu": "cycleinr_ct_cpu.safetensors"}
# Every bundled model by the name a user may give instead of a path (--model mr-cpu).
BUNDLED_MODELS = {**DEFAULT_MODELS, "mr": "cycleinr_mr.safetensors", "mr-cpu": "cycleinr_mr_cpu.safetensors"}
MODEL_ENV = "CYCLEINR_MODEL"
_MAX_HEADER = 100 << 20


def default_model_path(device_type: str = "cpu") -> Path:
    """$CYCLEINR_MODEL if set, else the first bundled file in the device's order of preference
    (the CPU-sized model first on a CPU, the paper-sized one first on a GPU)."""
    override = os.environ.get(MODEL_ENV)
    if override:
        return Path(override)
    order = ("ct-cpu", "ct") if device_type == "cpu" else ("ct", "ct-cpu")
    for kind in order:
        path = WEIGHTS_DIR / DEFAULT_MODELS[kind]
        if path.exists():
            return path
    raise ModelError(f"no bundled model in {WEIGHTS_DIR}; pass a model file (--model) or set {MODEL_ENV}")


def bundled_names() -> list[str]:
    """Names of the bundled models that are installed here."""
    return [name for name, file in BUNDLED_MODELS.items() if (WEIGHTS_DIR / file).exists()]


def model_path(model: str | os.PathLike | None = None, device_type: str = "cpu") -> Path:
    """A weights file, a bundled model's name ('ct-cpu', 'mr-cpu' ...), or None: the device's default."""
    if model is None:
        return default_model_path(device_type)
    name = str(model)
    if name in BUNDLED_MODELS:
        path = WEIGHTS_DIR / BUNDLED_MODELS[name]
        if not path.exists():
            raise ModelError(f"the bundled model '{name}' is not installed here; installed: "
                             f"{', '.join(bundled_names()) or 'none'}")
        return path
    return Path(model)


def read_description(path: str | os.PathLike) -> dict:
    """The JSON description in a weights file's header (raises ModelError with the reason)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(_MAX_HEADER, path.stat().st_size - 8):
                raise ValueError("header length is larger than the file")
            header = json.loads(handle.read(length))
        text = header["__metadata__"][METADATA_KEY]
    except (OSError, ValueError, struct.error):
        raise ModelError(f"{path.name} is not a readable safetensors weights file") from None
    except (KeyError, TypeError):
        raise ModelError(f"{path.name} has no CycleINR description in its header: not a CycleINR model") from None
    try:
        description = json.loads(text)
        low, high = (float(value) for value in description["trained_scales"])
    except (ValueError, KeyError, TypeError):
        raise ModelError(f"{path.name} has an invalid CycleINR description") from None
    description["trained_scales"] = [low, high]
    return description
