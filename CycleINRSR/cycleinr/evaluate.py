"""The paper's evaluation protocol (Section 4.1): degrade thin slices, super-resolve back, score.

Degradation along the slice axis, for a scale r = p / q (a ratio of small integers; r = 2, 3, 5
have q = 1). The thick volume keeps every p-th thin slice position, 0, p, 2p, ... (m of them), so
its slice spacing is p times the thin one:
- ``interval``: the thin slice at each kept position (the paper's protocol);
- ``slab``: the mean of a slab p thin slices thick centred on each kept position (what a scanner's
  thick reconstruction is close to). Each thin slice stands for a box one spacing wide, so for
  odd p the slab holds p whole slices, for even p p - 1 whole slices and half of each neighbour.
  At the volume's ends the slab is cut off and the mean is taken over what exists. Integer inputs
  are rounded back to their dtype, as a scanner would store them.
Super-resolving the thick volume by p / q puts output slice j at thin index j q (see
``cycleinr.geometry``), so the ground truth is thin slices 0, q, 2q, ... up to (m - 1) p, voxel for
voxel; nothing is interpolated to compare. Scores are taken on that region only.

A real thick acquisition has no ground truth: ``evaluate_thick`` measures what can be measured,
the SNLI of the result and the cycle error (the result sampled back at the input slice positions,
against the input).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import numpy as np

from . import metrics
from .errors import InputError
from .geometry import choose_slice_axis, output_slice_count
from .normalise import cast_to_dtype

DEGRADATIONS = ("interval", "slab")
METRICS = ("psnr", "ssim") + tuple(f"lpips_{b}" for b in metrics.LPIPS_BACKBONES) + ("snli",)
THICK_METRICS = ("snli", "cycle_psnr", "cycle_mae")
MAX_DENOMINATOR = 12

# A method maps (thick volume, its spacing per array axis, scale, slice axis) -> output array on
# super_resolve's grid.
Method = Callable[[np.ndarray, Sequence[float], float, int], np.ndarray]


def exact_ratio(scale: float) -> Fraction:
    """r as p / q with q <= 12: the thin grid then holds the ground truth of every output slice."""
    ratio = Fraction(float(scale)).limit_denominator(MAX_DENOMINATOR)
    if abs(float(ratio) - float(scale)) > 1e-6 or ratio <= 1:
        raise InputError(f"scale {scale:g} has no ground truth on the thin grid: use a scale > 1 that is "
                         f"a ratio of small integers (2, 2.5, 5/3 ...)")
    return ratio


def scale_label(scale: float) -> str:
    """'x2', 'x2.5', 'x1.667' (JSON keys and table rows)."""
    return f"x{float(scale):.4g}"


@dataclass(frozen=True)
class Degraded:
    """A thick volume made from a thin one, and the thin slices its super-resolution must match."""

    thick: np.ndarray
    thick_spacing: tuple[float, ...]
    truth: np.ndarray
    truth_spacing: tuple[float, ...]
    scale: float
    slice_axis: int


def degrade(thin: np.ndarray, spacing: Sequence[float], scale: float, mode: str = "interval",
            slice_axis: int | None = None) -> Degraded:
    """Make the thick volume and cut out the ground truth region (see the module docstring)."""
    if mode not in DEGRADATIONS:
        raise InputError(f"degradation must be one of {', '.join(DEGRADATIONS)}, got {mode!r}")
    if thin.ndim != 3 or len(spacing) != 3:
        raise InputError(f"expected a 3D volume with 3 spacings, got shape {thin.shape}")
    axis = choose_slice_axis(spacing, slice_axis)
    ratio = exact_ratio(scale)
    p, q = ratio.numerator, ratio.denominator
    n = thin.shape[axis]
    m = (n - 1) // p + 1
    if m < 2:
        raise InputError(f"{n} slices are too few for scale {float(ratio):g}: the thick volume "
                         f"(every {p}th slice) would have a single slice")
    kept = np.arange(m) * p
    source = np.moveaxis(thin, axis, 0)
    if mode == "interval":
        thick = source[kept]
    else:
        thick = np.stack([_slab_mean(source, centre, p) for centre in kept])
        thick = cast_to_dtype(thick, thin.dtype)
    truth = source[0:(m - 1) * p + 1:q]
    assert truth.shape[0] == output_slice_count(m, float(ratio))
    thick_spacing = list(spacing)
    thick_spacing[axis] = spacing[axis] * p
    truth_spacing = list(spacing)
    truth_spacing[axis] = spacing[axis] * q
    return Degraded(np.ascontiguousarray(np.moveaxis(thick, 0, axis)), tuple(thick_spacing),
                    np.moveaxis(truth, 0, axis), tuple(truth_spacing), float(ratio), axis)


def _slab_mean(source: np.ndarray, centre: int, width: int) -> np.ndarray:
    """Mean over the box [centre - width/2, centre + width/2] of slices that are boxes one wide."""
    low, high = centre - width / 2.0, centre + width / 2.0
    total = np.zeros(source.shape[1:], dtype=np.float64)
    weight_sum = 0.0
    for index in range(max(0, math.floor(low + 0.5)), min(source.shape[0], math.ceil(high - 0.5) + 1)):
        weight = min(index + 0.5, high) - max(index - 0.5, low)
        if weight > 0:
            total += weight * source[index]
            weight_sum += weight
    return total / weight_sum


# methods ---------------------------------------------------------------------------------------

INTERPOLATIONS = {"trilinear": "linear", "cubic": "bspline", "nearest": "nearest"}


def interpolation_method(name: str) -> Method:
    """'trilinear', 'cubic' (B-spline) or 'nearest' from cycleinr.baselines."""
    from .baselines import interpolate

    kind = INTERPOLATIONS[name]

    def run(thick, thick_spacing, scale, slice_axis):
        return interpolate(thick, thick_spacing, scale=scale, slice_axis=slice_axis, method=kind)
    return run


def cycleinr_method(model=None, device: str = "auto", **options) -> Method:
    """A CycleINR model (loaded once): None for the bundled one, a path, or a LoadedModel."""
    from .api import pick_model, super_resolve
    from .devices import resolve_device

    torch_device = resolve_device(device)
    loaded = pick_model(model, torch_device)

    def run(thick, thick_spacing, scale, slice_axis):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scale-range notes: the table shows every scale anyway
            return super_resolve(thick, thick_spacing, scale=scale, slice_axis=slice_axis,
                                 model=loaded, device=str(torch_device), **options).array
    run.model_name = loaded.name
    return run


def adapted_method(minutes: float, model=None, device: str = "auto", slice_thickness: float | str | None = None,
                   log: Callable[[str], None] | None = None, **adapt_options) -> Method:
    """``super_resolve(..., adapt_minutes=minutes)``: adapts to each thick input (each volume and
    scale afresh, from the same base model) before super-resolving it, as the CLI's --adapt does.
    ``slice_thickness`` "spacing": each thick input's own slice spacing (slab averaging's truth)."""
    from .api import pick_model, super_resolve
    from .devices import resolve_device

    torch_device = resolve_device(device)
    loaded = pick_model(model, torch_device)

    def run(thick, thick_spacing, scale, slice_axis):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = super_resolve(thick, thick_spacing, scale=scale, slice_axis=slice_axis, model=loaded,
                                   device=str(torch_device), adapt_minutes=minutes,
                                   slice_thickness=(float(thick_spacing[slice_axis]) if slice_thickness == "spacing"
                                                    else slice_thickness),
                                   adapt_options=adapt_options or None)
        run.adaptations.append(result.adaptation)
        if log is not None:
            log(f"x{scale:g}: {result.adaptation.message()}")
        return result.array
    run.adaptations = []
    run.model_name = loaded.name
    return run


def method_from_spec(spec: str, device: str = "auto", skip_below: float = -900.0,
                     slice_thickness: float | None = None, log=None,
                     adapt_options: dict | None = None) -> tuple[str, Method]:
    """'trilinear', 'cubic', 'nearest', 'cycleinr' (bundled model) or 'cycleinr=PATH';
    'cycleinr-regenerate[=PATH]' lets the network regenerate the acquired slices too;
    'cycleinr-skip[=PATH]' interpolates where every LR neighbour is below ``skip_below`` (air);
    'cycleinr-adapt=MINUTES[:PATH]' adapts to each input for MINUTES first (``slice_thickness``
    mm for its slice profile; ``adapt_options`` go to ``adapt_model``, e.g. clock="cpu")."""
    name, _, model = spec.partition("=")
    if name == "cycleinr-adapt":
        minutes, _, path = model.partition(":")
        try:
            value = float(minutes)
        except ValueError:
            value = 0.0
        if not value > 0:
            raise InputError(f"{spec!r}: give the adaptation time, e.g. cycleinr-adapt=3 (minutes)")
        return spec, adapted_method(value, path or None, device, slice_thickness, log, **(adapt_options or {}))
    if name in INTERPOLATIONS and not model:
        return name, interpolation_method(name)
    if name in ("cycleinr", "cycleinr-regenerate"):
        return spec, cycleinr_method(model or None, device, keep_acquired=name == "cycleinr")
    if name == "cycleinr-skip":
        return spec, cycleinr_method(model or None, device, skip_below=skip_below)
    raise InputError(f"unknown method {spec!r}; use trilinear, cubic, nearest, cycleinr[=MODEL], "
                     "cycleinr-regenerate[=MODEL], cycleinr-skip[=MODEL] or cycleinr-adapt=MINUTES[:MODEL]")


# scoring ---------------------------------------------------------------------------------------

def score(truth: np.ndarray, result: np.ndarray, modality: str = "ct", slice_axis: int = 0,
          window: metrics.IntensityRange | None = None, lpips: bool | Sequence[str] = False,
          lpips_weights=None, device: str = "cpu") -> dict:
    """PSNR, SSIM, SNLI (and LPIPS when asked) of one result against its ground truth.

    A metric that cannot be computed is None, with its reason in ``notes``.
    """
    if result.shape != truth.shape:
        raise InputError(f"a method returned shape {result.shape}, the ground truth is {truth.shape}")
    window = window or metrics.intensity_range(truth, modality)
    scores: dict = {"psnr": metrics.psnr(truth, result, window),
                    "ssim": metrics.ssim(truth, result, window, slice_axis)}
    notes: dict[str, str] = {}
    backbones = metrics.LPIPS_BACKBONES if lpips is True else tuple(lpips or ())
    for backbone in backbones:
        key = f"lpips_{backbone}"
        try:
            scores[key] = metrics.lpips_score(truth, result, window, backbone, slice_axis,
                                              lpips_weights, device)
        except metrics.LpipsUnavailable as reason:
            scores[key] = None
            notes[key] = str(reason)
    scores.update(_snli_entry(result, modality, slice_axis, window, notes))
    scores["notes"] = notes
    return scores


def _snli_entry(volume, modality, slice_axis, window, notes) -> dict:
    try:
        return {"snli": metrics.snli(volume, modality, slice_axis, window)}
    except InputError as reason:
        notes["snli"] = str(reason)
        return {"snli": None}


def run_methods(degraded: Degraded, methods: dict[str, Method]) -> dict[str, np.ndarray]:
    return {name: method(degraded.thick, degraded.thick_spacing, degraded.scale, degraded.slice_axis)
            for name, method in methods.items()}


def evaluate_volume(thin: np.ndarray, spacing: Sequence[float], scale: float,
                    methods: dict[str, Method], degrade_mode: str = "interval", modality: str = "ct",
                    lpips: bool | Sequence[str] = False, slice_axis: int | None = None,
                    lpips_weights=None, device: str = "cpu") -> dict[str, dict]:
    """One thin volume, one scale: {method: {"psnr", "ssim", "snli", ["lpips_*"], "notes"}}.

    Cheap enough for per-epoch validation on small crops (LPIPS off by default).
    """
    degraded = degrade(thin, spacing, scale, degrade_mode, slice_axis)
    window = metrics.intensity_range(degraded.truth, modality)
    outputs = run_methods(degraded, methods)
    return {name: score(degraded.truth, output, modality, degraded.slice_axis, window, lpips,
                        lpips_weights, device)
            for name, output in outputs.items()}


def cycle_error(volume: np.ndarray, result: np.ndarray, scale: float, slice_axis: int,
                window: metrics.IntensityRange) -> dict:
    """The result sampled back at the input slice positions (linear along the slice axis) against
    the input: PSNR on the comparison window and mean absolute error in the volume's units.

    Input slice k sits at output index k r; slices past the last output slice are left out.
    """
    source = np.moveaxis(volume, slice_axis, 0)
    output = np.moveaxis(result, slice_axis, 0)
    last = output.shape[0] - 1
    kept = [k for k in range(source.shape[0]) if k * scale <= last + 1e-6]
    back = np.empty((len(kept),) + source.shape[1:], dtype=np.float64)
    for row, k in enumerate(kept):
        position = min(k * scale, last)
        low = int(math.floor(position + 1e-9))
        weight = position - low
        back[row] = output[low].astype(np.float64)
        if weight > 1e-9:
            back[row] = (1 - weight) * back[row] + weight * output[low + 1]
    original = source[kept].astype(np.float64)
    return {"cycle_psnr": metrics.psnr(original, back, window),
            "cycle_mae": float(np.mean(np.abs(original - back)))}


def evaluate_thick(volume: np.ndarray, spacing: Sequence[float], scale: float,
                   methods: dict[str, Method], modality: str = "ct",
                   slice_axis: int | None = None) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """A real thick acquisition (no ground truth): SNLI of each result and its cycle error.

    Returns the scores and the results (for figures). Interpolation's cycle error is zero wherever
    output slices coincide with input slices (integer scales): it says nothing about quality there.
    """
    axis = choose_slice_axis(spacing, slice_axis)
    window = metrics.intensity_range(volume, modality)
    outputs = {name: method(volume, tuple(spacing), float(scale), axis) for name, method in methods.items()}
    scores = {}
    for name, output in outputs.items():
        notes: dict[str, str] = {}
        entry = _snli_entry(output, modality, axis, window, notes)
        entry.update(cycle_error(volume, output, float(scale), axis, window))
        entry["notes"] = notes
        scores[name] = entry
    return scores, outputs


def reference_snli(volume: np.ndarray, modality: str, slice_axis: int) -> float | None:
    """SNLI of the ground truth / input itself: the level a faithful result should have."""
    try:
        return metrics.snli(volume, modality, slice_axis)
    except InputError:
        return None
