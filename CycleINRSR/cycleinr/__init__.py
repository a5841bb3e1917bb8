"""CycleINR: arbitrary-scale slice-axis super-resolution of CT and MR volumes (CVPR 2024 method).

The engine is pure Python on torch, numpy and SimpleITK; it never imports Slicer, Qt or VTK.
"""
from .api import ScaleWarning, SuperResolved, super_resolve, super_resolve_image
from .config import ModelConfig, ModelInfo, Normalisation, PRESETS, preset
from .errors import Cancelled, CycleINRError, InputError, ModelError, OutputError, ResourceError
from .geometry import OutputGrid, output_positions, output_slice_count, plan_output
from .model import CycleINR, build_model
from .weights import LoadedModel, default_model_path, load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "Cancelled", "CycleINR", "CycleINRError", "InputError", "LoadedModel", "ModelConfig",
    "ModelError", "ModelInfo", "Normalisation", "OutputError", "OutputGrid", "PRESETS",
    "ResourceError", "ScaleWarning", "SuperResolved", "build_model", "default_model_path",
    "load_model", "output_positions", "output_slice_count", "plan_output", "preset",
    "save_model", "super_resolve", "super_resolve_image",
]
