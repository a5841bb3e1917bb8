"""Adapt a model to one volume: fine-tune on its own in-plane data, for a bounded time.

A thick-slice volume is sharp in-plane. Degrading one in-plane axis by the wanted factor r (the
SMORE/SAINT idea) gives LR/HR pairs from the very scan to be super-resolved: same scanner, kernel,
noise and anatomy. ``fine_tune`` trains a copy of the model on such pairs with the training loss
(L1 + lambda * cycle) and returns it; the given model is left untouched. Used by ``cycleinr fit``
and by the CycleINRTraining Slicer module (numpy array in, ``LoadedModel`` out, no files).

For super-resolving one scan, ``super_resolve(..., adapt_minutes=M)`` / ``--adapt`` (``cycleinr.adapt``)
is the path to use: its pairs follow the scan's own slice profile, and it keeps the base model
when held-back pairs say adapting did not help. This module keeps the fixed interval/slab mixture.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import Cancelled, InputError
from .geometry import choose_slice_axis
from .normalise import intensity_map
from .pairs import SCALES, PairSampler, TrainingVolume
from .train import backward_on_batch
from .weights import LoadedModel


def fine_tune(volume: np.ndarray, spacing: Sequence[float], model=None, scale: float | None = None,
              seconds: float = 120.0, max_steps: int | None = None, slice_axis: int | None = None,
              lr: float = 1e-4, cycle_weight: float = 1.0, batch_size: int = 4, lr_slices: int = 8,
              patch: int = 32, degrade: Sequence[str] = ("interval", "slab"), seed: int = 0,
              device: str = "auto", progress: Callable[[float], None] | None = None,
              cancel=None, log: Callable[[str], None] | None = None) -> LoadedModel:
    """A copy of ``model`` fine-tuned on ``volume``'s axes other than its slice axis.

    ``volume`` is [k, j, i] (or any order, with ``spacing`` per array axis, as for
    ``super_resolve``); ``model`` is a LoadedModel, a weights path, or None for the bundled one.
    Pairs use factor ``scale`` only when it is given (the factor about to be applied), else
    2.0-6.0. Stops after ``seconds`` of wall time or ``max_steps``, whichever comes first;
    ``progress(fraction)`` reports the larger of the two fractions; ``cancel`` raises ``Cancelled``.
    """
    from .api import pick_model
    from .devices import resolve_device

    if volume.ndim != 3:
        raise InputError(f"fine-tuning needs a 3D volume, got shape {volume.shape}")
    if seconds <= 0 and not max_steps:
        raise InputError("give a positive time (seconds) or number of steps to fine-tune for")
    torch_device = resolve_device(device)
    base = pick_model(model, torch_device)
    network = copy.deepcopy(base.network).to(torch_device).train()
    info = copy.deepcopy(base.info)
    axis = choose_slice_axis(spacing, slice_axis)
    in_plane = tuple(a for a in range(3) if a != axis)
    scales = SCALES if scale is None else (float(scale),)
    if scale is not None and not (2.0 <= scale <= 6.0):
        warnings.warn(f"fine-tuning at scale {scale:g}, outside the 2-6 range models are trained on",
                      stacklevel=2)
    data = TrainingVolume("input", volume, tuple(float(s) for s in spacing), in_plane,
                          intensity_map(volume, info.normalisation))
    sampler = PairSampler([data], lr_slices, patch, batch_size, tuple(degrade), seed=seed, scales=scales)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr)
    should_stop = (cancel.is_set if hasattr(cancel, "is_set") else cancel) or (lambda: False)
    use_amp = torch_device.type == "cuda"
    start, step, losses = time.time(), 0, []
    while True:
        elapsed = time.time() - start
        done = [elapsed / seconds if seconds > 0 else 0.0, step / max_steps if max_steps else 0.0]
        if step > 0 and max(done) >= 1.0:
            break
        if should_stop():
            raise Cancelled(f"fine-tuning cancelled at step {step}")
        optimiser.zero_grad(set_to_none=True)
        loss, _, _, _ = backward_on_batch(network, sampler.sample(), cycle_weight, torch_device, use_amp)
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if progress is not None:
            progress(min(1.0, max(done)))
    network.eval()
    if log is not None:
        first, last = np.mean(losses[:10]), np.mean(losses[-10:])
        log(f"fine-tuned {step} steps in {time.time() - start:.0f} s; loss {first:.4f} -> {last:.4f} "
            "(means of the first and last 10 steps)")
    info.name = f"{base.info.name}-fit"
    info.provenance = dict(info.provenance, fine_tuned={
        "base_model": base.info.name, "steps": step, "seconds": round(time.time() - start, 1),
        "scales": [float(scale)] if scale is not None else "2.0-6.0 step 0.1",
        "axes": list(in_plane), "lr": lr, "cycle_weight": cycle_weight, "degrade": list(degrade),
        "final_loss": float(np.mean(losses[-10:]))})
    return LoadedModel(network, info, None)


def fitted_method(model=None, seconds: float = 120.0, device: str = "auto", **options):
    """An ``evaluate`` method that fine-tunes on each thick input before super-resolving it."""
    from .api import super_resolve

    def run(thick, thick_spacing, scale, slice_axis):
        tuned = fine_tune(thick, thick_spacing, model, scale=scale, seconds=seconds,
                          slice_axis=slice_axis, device=device, **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super_resolve(thick, thick_spacing, scale=scale, slice_axis=slice_axis,
                                 model=tuned, device=device).array
    return run
