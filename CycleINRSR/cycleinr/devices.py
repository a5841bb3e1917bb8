"""Which torch device a job runs on."""
from __future__ import annotations

import torch

from .errors import InputError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' = CUDA if present, else CPU; 'cuda' without a GPU is an error, not a fallback."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' asked for, but no CUDA GPU is available (use --device cpu)")
        return torch.device(name)
    raise InputError(f"device must be auto, cpu or cuda, got {name!r}")
