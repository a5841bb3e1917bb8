"""CycleINR: arbitrary-scale slice-axis super-resolution of CT and MR volumes (CVPR 2024 method).

The engine is pure Python on torch, numpy and SimpleITK; it never imports Slicer, Qt or VTK.
Names are imported on first use (PEP 562), so ``import cycleinr.geometry`` needs numpy only:
the Slicer module reads out output grids before torch is installed.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "api": ["ScaleWarning", "SuperResolved", "super_resolve", "super_resolve_image"],
    "config": ["ModelConfig", "ModelInfo", "Normalisation", "PRESETS", "preset"],
    "errors": ["Cancelled", "CycleINRError", "InputError", "ModelError", "OutputError", "ResourceError"],
    "geometry": ["OutputGrid", "output_positions", "output_slice_count", "plan_output"],
    "model": ["CycleINR", "build_model"],
    "volumes": ["read_image"],
    "weights": ["LoadedModel", "default_model_path", "load_model", "save_model"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'cycleinr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
