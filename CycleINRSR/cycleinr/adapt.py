"""Adapt to this scan: a short self-supervised refinement of the model on the volume itself.

A thick-slice scan is sharp in-plane. Blurring and sampling one in-plane axis with the scan's own
slice profile (``slice_profile``: its thickness and spacing, overlap and gaps included) at the
factor about to be applied gives LR/HR pairs from the very scan to be super-resolved: same
scanner, kernel, noise and anatomy (the SMORE/ECLARE idea). ``adapt_model`` fine-tunes a copy of
the model on such pairs for a fixed time, with L1 and, for thin slices with gaps, the slice-detail
term of the bundled model's last phase (``detail_weight_for``; the cycle term is left out: it
makes each step 2.5 times dearer, and in a few minutes steps count most), and then decides which
model to use:

- a central band of the volume along its widest in-plane axis is held back; its pairs are never
  trained on and serve as validation (fixed patches, the same for every model scored);
- the copy is scored on them at the start (the base model) and at a few points during training,
  and the best state is kept; if no state beats the base model by ``min_gain_db`` the base model
  is used, unchanged. The ``Adaptation`` record says which, with both scores.

Scores are the PSNR of the new slices only (those lying on an acquired slice are copied from the
input by default, so they are not scored). The given model is never modified.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .errors import Cancelled, InputError
from .geometry import choose_slice_axis
from .metrics import guess_modality
from .normalise import intensity_map
from .pairs import Batch, TrainingVolume, draw_patch, prepare_patch
from .slice_profile import SliceProfile, degrade_with_profile, estimate_profile, profile_for

# torch is imported where it is used: the CLI reads DEFAULT_MINUTES while building its parser

DEFAULT_MINUTES = 3.0


@dataclass
class Adaptation:
    """What adaptation did and which model came out of it."""

    model: "LoadedModel"         # the model to use: the adapted copy or the base model itself
    adapted: bool                # True: the adapted copy beat the base model on the held-back pairs
    base_psnr: float             # dB on the held-back pairs (normalised intensities)
    adapted_psnr: float          # best adapted state on the same pairs
    steps: int
    seconds: float
    profile: SliceProfile
    base_name: str
    slice_check_base: float | None = None     # dB, acquired slices predicted from their neighbours
    slice_check_adapted: float | None = None  # (slice_axis_psnr); None: not run (thickness given)

    @property
    def gain_db(self) -> float:
        return self.adapted_psnr - self.base_psnr

    def message(self) -> str:
        head = (f"adapted to this scan: {self.steps} steps in {self.seconds:.0f} s, slice profile "
                f"{self.profile.describe()}; held-back pairs PSNR {self.base_psnr:.2f} dB (base) -> "
                f"{self.adapted_psnr:.2f} dB ({self.gain_db:+.2f})")
        if self.slice_check_adapted is not None:
            head += (f"; acquired slices predicted from their neighbours {self.slice_check_base:.2f} -> "
                     f"{self.slice_check_adapted:.2f} dB")
        if self.adapted:
            return f"{head}: the adapted model was used"
        if self.slice_check_adapted is not None and self.gain_db > 0:
            return f"{head}: worse on the real slice axis, the base model {self.base_name} was used"
        return f"{head}: no improvement, the base model {self.base_name} was used"


class ProfilePairs:
    """Patches from fine in-plane axes, LR made with the scan's slice profile at one factor.

    Like ``pairs.PairSampler`` (random axis, position, flips and transposes; the patch is turned
    so the fine axis is the network's slice axis), but the factor is fixed and the fine data
    around each patch is cut ``margin`` samples wider so that every LR slice's box is whole.
    Patches that are mostly air are drawn again (``min_foreground``, as in training): a full
    field of view is often half air, where a step teaches nothing and a held-back patch scores
    both models alike.
    """

    def __init__(self, volumes: list[TrainingVolume], scale: float, widths: Sequence[float], lr_slices: int,
                 patch: int, batch_size: int, seed: int, min_foreground: float = 0.0) -> None:
        self.volumes = [v for v in volumes if v.fine_axes]
        if not self.volumes:
            raise InputError("the volume is too small to cut adaptation patches from")
        self.scale, self.widths = float(scale), tuple(float(w) for w in widths)
        self.lr_slices, self.patch, self.batch_size = lr_slices, patch, batch_size
        self.margin = int(math.ceil(max(max(self.widths), 1.0) / 2.0))
        self.hr_slices = int(math.floor((lr_slices - 1) * scale + 1e-6)) + 1
        self.span = int(math.ceil((lr_slices - 1) * scale - 1e-6)) + 1 + 2 * self.margin
        self.rng = np.random.default_rng(seed)
        self.min_foreground = float(min_foreground)
        sizes = np.array([v.array.size for v in self.volumes], dtype=float)
        self.weights = sizes / sizes.sum()

    def sample(self) -> Batch:
        rng = self.rng
        extent = (self.span, self.patch, self.patch)
        width = self.widths[int(rng.integers(len(self.widths)))]  # one profile per batch
        lr_list, hr_list = [], []
        for _ in range(self.batch_size):
            volume, block, flips = draw_patch(rng, self.volumes, self.weights, extent, self.min_foreground)
            block = prepare_patch(volume, block, extent, flips)
            lr_list.append(degrade_with_profile(block, self.scale, width, first=self.margin,
                                                slices=self.lr_slices))
            hr_list.append(block[self.margin:self.margin + self.hr_slices])
        positions = np.arange(self.hr_slices) / self.scale
        return Batch(np.stack(lr_list)[:, None].astype(np.float32),
                     np.stack(hr_list)[:, None].astype(np.float32), self.scale, positions)


def split_for_validation(volume: np.ndarray, slice_axis: int, fraction: float, minimum: int):
    """(training parts, held-back band): a central band along the widest in-plane axis is held
    back (the centre holds the anatomy; the edges of a CT are often air), the two sides train."""
    in_plane = [a for a in range(3) if a != slice_axis]
    axis = max(in_plane, key=lambda a: volume.shape[a])
    size = volume.shape[axis]
    band = min(max(int(round(fraction * size)), minimum), size // 2)
    start = (size - band) // 2
    take = lambda low, high: volume[(slice(None),) * axis + (slice(low, high),)]  # noqa: E731
    return [take(0, start), take(start + band, size)], take(start, start + band), axis


def _usable_axes(shape, in_plane, span: int) -> tuple[int, ...]:
    """In-plane axes long enough to hold a patch's fine extent without padding."""
    return tuple(a for a in in_plane if shape[a] >= span)


def _new_slice_mask(hr_slices: int, scale: float) -> np.ndarray:
    """HR positions that are not acquired slices (those are copied from the input by default)."""
    positions = np.arange(hr_slices) / scale
    return np.abs(positions - np.round(positions)) > 1e-6


def validation_psnr(network, batches: list[Batch], device, keep: np.ndarray) -> float:
    """PSNR (peak 1: normalised intensities) over the new slices of fixed held-back batches."""
    import torch

    network.eval()
    errors = []
    for batch in batches:
        lr = torch.from_numpy(batch.lr).to(device)
        positions = torch.from_numpy(batch.hr_positions).float().to(device)
        with torch.no_grad():
            out = network(lr, positions, 1.0 / batch.scale).float().cpu().numpy()
        difference = (out - batch.hr)[:, :, keep]
        errors.append(np.mean(difference.astype(np.float64) ** 2))
    mse = max(float(np.mean(errors)), 1e-12)
    return 10.0 * math.log10(1.0 / mse)


def adapt_model(volume: np.ndarray, spacing: Sequence[float], scale: float, model=None,
                minutes: float = DEFAULT_MINUTES, slice_axis: int | None = None,
                slice_thickness: float | None = None, thickness_source: str | None = None,
                lr: float | None = None, cycle_weight: float = 0.0, detail_weight: float | None = None,
                batch_size: int = 4, lr_slices: int = 6, patch: int = 24, checks: int = 4,
                validation_fraction: float = 0.2, validation_patches: int = 24, min_gain_db: float = 0.01,
                min_foreground: float = 0.3, keep_acquired: bool = True, trainable: str = "all",
                max_steps: int | None = None, seed: int = 0, device: str = "auto", clock: str = "wall",
                progress: Callable[[float], None] | None = None, cancel=None,
                log: Callable[[str], None] | None = None) -> Adaptation:
    """Fine-tune a copy of ``model`` on ``volume``'s own in-plane pairs for ``minutes``, keep it
    only if it beats the base model on held-back pairs (see the module docstring).

    ``volume`` and ``spacing`` are in array order as for ``super_resolve``; ``scale`` is the factor
    about to be applied; ``slice_thickness`` (mm; None: unknown, see slice_profile.profile_for) sets the
    profile. ``max_steps`` stops sooner (tests). ``progress(fraction)`` reports the share of the
    time used; ``cancel`` (callable or Event) raises ``Cancelled`` within one step. ``clock``
    "wall" (default) counts wall time; "cpu" counts this process's CPU time, so that a
    measurement on a busy shared machine gets the steps the same minutes give on an idle one.
    ``detail_weight`` and ``lr`` (Adam's peak rate) None: chosen from the profile
    (``detail_weight_for``, ``learning_rate_for``). ``min_foreground``:
    patches with less than this fraction of tissue are drawn again (``ProfilePairs``).
    ``keep_acquired`` (as in ``super_resolve``): the output copies the slices that lie on acquired
    ones, so for thin slices with gaps only the new slices are trained on (the held-back pairs
    score the new slices in every case). Slab profiles train on all slices: on the slab-averaged
    CTA at x5 (3 min, two cores) new slices only gave the same PSNR (31.37 vs 31.36 dB) with SNLI
    2.52 against 2.45 (base 2.44). The learning rate warms up over the first ``WARM_UP`` of the
    time, then follows a cosine to zero at its end (``learning_rate_factor``): the last states,
    which the checks pick from, are then settled. ``trainable``: "all" or "decoder" (the
    encoder frozen; ``frozen_parameters``). ``patch`` stays 24: 16 made twice the steps and more
    PSNR but let SNLI rise above the unadapted model's (README, sixth measurement).
    """
    import torch

    from .api import pick_model
    from .devices import resolve_device
    from .model import use_channels_last
    from .train import backward_on_batch
    from .weights import LoadedModel

    if volume.ndim != 3:
        raise InputError(f"adaptation needs a 3D volume, got shape {volume.shape}")
    if not (minutes > 0 and math.isfinite(minutes)):
        raise InputError(f"adaptation time must be a positive number of minutes, got {minutes}")
    if scale <= 1:
        raise InputError(f"adaptation needs a scale > 1, got {scale}")
    if trainable not in TRAINABLE:
        raise InputError(f"trainable must be one of {', '.join(TRAINABLE)}, got {trainable!r}")
    if clock not in ("wall", "cpu"):
        raise InputError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    now = time.monotonic if clock == "wall" else time.process_time
    torch_device = resolve_device(device)
    should_stop = (cancel.is_set if hasattr(cancel, "is_set") else cancel) or (lambda: False)
    base = pick_model(model, torch_device)
    axis = choose_slice_axis(spacing, slice_axis)
    in_plane = tuple(a for a in range(3) if a != axis)
    profile = profile_for(spacing[axis], slice_thickness, thickness_source)
    if slice_thickness is None and guess_modality(volume) == "ct":  # MR: the estimate is tuned on CT
        try:  # a wrong guess harms (see profile_for): measure it from the scan
            profile = thin_if_gaps(estimate_profile(volume, spacing, axis), scale)
        except InputError as reason:  # too few slices or too little tissue: both ends, and say why
            profile = profile_for(spacing[axis], None, f"not measurable: {reason}")
    widths = profile.widths(scale)
    if detail_weight is None:
        detail_weight = detail_weight_for(profile)
    if lr is None:
        lr = learning_rate_for(profile)
    intensities = intensity_map(volume, base.info.normalisation)
    probe = ProfilePairs([TrainingVolume("probe", volume, tuple(spacing), in_plane, intensities)],
                         scale, widths, lr_slices, patch, batch_size, seed)
    train_parts, band, band_axis = split_for_validation(volume, axis, validation_fraction, patch)
    parts = []
    for index, part in enumerate(train_parts):
        axes = _usable_axes(part.shape, in_plane, probe.span)
        if axes and part.shape[band_axis] > 0:
            parts.append(TrainingVolume(f"train{index}", part, tuple(spacing), axes, intensities))
    band_axes = _usable_axes(band.shape, in_plane, probe.span)
    if not parts or not band_axes:
        raise InputError(f"the volume {volume.shape} is too small to adapt on at x{scale:g}: its in-plane "
                         f"axes need at least {2 * probe.span + patch} voxels")
    held_back = ProfilePairs([TrainingVolume("held back", band, tuple(spacing), band_axes, intensities)],
                             scale, widths, lr_slices, patch, batch_size, seed + 1, min_foreground)
    batches = [held_back.sample() for _ in range(max(1, validation_patches // batch_size))]
    keep = _new_slice_mask(held_back.hr_slices, scale)
    sampler = ProfilePairs(parts, scale, widths, lr_slices, patch, batch_size, seed, min_foreground)
    new_only = keep_acquired and keep.any() and not profile.slabs  # see the docstring
    target_slices = torch.from_numpy(keep).to(torch_device) if new_only else None

    network = use_channels_last(copy.deepcopy(base.network).to(torch_device))
    frozen = frozen_parameters(network, trainable)
    for parameter in frozen:
        parameter.requires_grad_(False)
    base_psnr = validation_psnr(network, batches, torch_device, keep)
    best_psnr, best_state = -math.inf, None
    if log is not None:
        log(f"adapting {base.name} to this scan for {minutes:g} min at x{scale:g}, slice profile "
            f"{profile.describe()}; base model {base_psnr:.2f} dB on held-back pairs")
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam([p for p in network.parameters() if p.requires_grad], lr=lr)
    use_amp = torch_device.type == "cuda"
    seconds = minutes * 60.0
    start, step, next_check = now(), 0, 1
    while True:
        elapsed = now() - start
        done = max(elapsed / seconds, step / max_steps if max_steps else 0.0)
        if step > 0 and done >= next_check / checks or (step > 0 and done >= 1.0):
            score = validation_psnr(network, batches, torch_device, keep)
            if score > best_psnr:
                best_psnr, best_state = score, {k: v.detach().clone() for k, v in network.state_dict().items()}
            next_check = min(checks, int(done * checks) + 1)
            if done >= 1.0:
                break
        if should_stop():
            raise Cancelled(f"adaptation cancelled at step {step}")
        network.train()
        for group in optimiser.param_groups:
            group["lr"] = lr * learning_rate_factor(done)
        optimiser.zero_grad(set_to_none=True)
        backward_on_batch(network, sampler.sample(), cycle_weight, torch_device, use_amp, detail_weight,
                          target_slices)
        optimiser.step()
        step += 1
        if progress is not None:
            progress(min(1.0, done))
    seconds_used = now() - start
    for parameter in frozen:
        parameter.requires_grad_(True)
    adapted = best_state is not None and best_psnr >= base_psnr + min_gain_db
    slice_check = (None, None)
    if adapted:
        network.load_state_dict(best_state)
        network.eval()
    # the real-slice check guards against a wrong profile: one read from the header or given
    # is taken as true (the check judges a model on a sparser grid than the one it adapted to,
    # and rejected true-profile slab adaptations that were better on the truth)
    if adapted and (profile.thickness is None or profile.measured):
        candidate = LoadedModel(network, base.info, None)
        slice_check = tuple(slice_axis_psnr(volume, spacing, axis, which, torch_device, intensities,
                                            profile.thickness) for which in (base, candidate))
        if slice_check[0] is not None and slice_check[1] < slice_check[0]:
            adapted = False  # better on its own pairs, worse on the real slice axis: a wrong profile
    if adapted:
        info = copy.deepcopy(base.info)
        info.name = f"{base.info.name}-adapted"
        info.provenance = {"adapted_from": {"name": base.info.name, "provenance": base.info.provenance},
                           "adaptation": {"steps": step, "seconds": round(seconds_used, 1), "scale": float(scale),
                                          "slice_thickness_mm": profile.thickness,  # None: unknown
                                          "slice_spacing_mm": profile.spacing, "lr": lr,
                                          "cycle_weight": cycle_weight, "detail_weight": detail_weight,
                                          "held_back_psnr_base": round(base_psnr, 4),
                                          "held_back_psnr_adapted": round(best_psnr, 4)}}
        chosen = LoadedModel(network, info, None)
    else:
        chosen = base
    result = Adaptation(chosen, adapted, base_psnr, best_psnr, step, seconds_used, profile, base.name,
                        *slice_check)
    if log is not None:
        log(result.message())
    return result


TRAINABLE = ("all", "decoder")


def frozen_parameters(network, trainable: str) -> list:
    """The parameters adaptation leaves as they are: none ("all", the default) or the encoder
    ("decoder": attention and decoder train). Freezing the encoder skips the convolutions'
    backward pass, about twice the steps a minute, but the steps teach less: CTA x5 slab, true
    thickness, 4.3 min of one core's CPU time: all +0.27 dB (488 steps), decoder +0.18 dB (987)."""
    return list(network.encoder.parameters()) if trainable == "decoder" else []


WARM_UP = 0.04  # share of the adaptation time over which the learning rate rises


def learning_rate_factor(done: float) -> float:
    """Warm-up then cosine decay over the time budget. Measured at a fixed 450 steps (x5 interval,
    true thickness, lr 3e-4; gains of the new slices on the thin truth): constant rate
    +0.16 / +0.26 dB on the colonography crop (two seeds), +0.07 / +0.15 on LIDC-0002; this
    schedule +0.20 / +0.13, and with only the new slices trained on +0.34 / +0.12 dB, SNLI
    4.50 -> 4.42 on the colonography crop (README, fifth measurement)."""
    done = min(max(done, 0.0), 1.0)
    if done < WARM_UP:
        return max(done / WARM_UP, 0.02)
    return 0.5 * (1.0 + math.cos(math.pi * (done - WARM_UP) / (1.0 - WARM_UP)))


def thin_if_gaps(profile: SliceProfile, scale: float) -> SliceProfile:
    """A measured profile with gaps, taken as thin slices (one fine sample wide at ``scale``).

    The spectra tell slabs from gaps, not one gap from another: on interval-sampled thin CT
    (x2/x3/x5; CTA, LIDC-IDRI-0002, colonography crops) the estimate read 0.2-0.75 x spacing for
    a true 0.2-0.5, uncorrelated with it, mostly too thick (anatomy runs along the body axis, so
    that axis looks blurrier than the in-plane ones), and pairs that blurred were worse than
    thin ones. The real-slice check still judges the result."""
    if profile.slabs or not profile.measured:
        return profile
    return SliceProfile(profile.spacing / float(scale), profile.spacing,
                        f"measured: slices with gaps, taken as thin (read {profile.thickness:g} mm); "
                        "give --slice-thickness to set it", measured=True)


DETAIL_WEIGHT_GAPS = 3.0    # the bundled model's last training phase
DETAIL_WEIGHT_SLABS = 0.0


def detail_weight_for(profile: SliceProfile) -> float:
    """The slice-detail weight for pairs made with this profile.

    The output keeps the acquired slices, so the new slices must look like them. Thin slices
    with gaps are as noisy as a thin slice: L1 alone makes the new ones smoother, and the detail
    term evens that out (CTA x5 interval, 3 min: SNLI 3.64 -> 3.40). Contiguous or overlapping
    slices are slab means, smooth already, while the pairs' fine planes run across the coarse
    axis and carry far more diagonal detail than an axial slice: the term then made the new
    slices noisier than the kept ones (CTA x5 slab, 3 min: SNLI 2.44 -> 3.34, with L1 alone
    2.44, and +0.25 dB instead of +0.15). Unknown thickness (pairs for both ends): as for gaps."""
    return DETAIL_WEIGHT_SLABS if profile.slabs else DETAIL_WEIGHT_GAPS


LEARNING_RATE_GAPS = 3e-4
LEARNING_RATE_SLABS = 6e-4


def learning_rate_for(profile: SliceProfile) -> float:
    """Adam's peak rate for pairs made with this profile. Measured at x5, true thickness, 4.3 min
    of one core's CPU time (about the steps 3 min on two idle cores make): slabs (L1 alone) gain
    more at 6e-4 than at 3e-4 with SNLI no higher (CTA +0.30 / +0.30 dB over two seeds against
    +0.27, LIDC-0002 +0.26 against +0.25); thin slices with gaps (with the detail term) gain more
    too (colonography +0.50 against +0.36 dB) but their SNLI rises above the unadapted model's
    (4.58 against 4.49), so they keep 3e-4."""
    return LEARNING_RATE_SLABS if profile.slabs else LEARNING_RATE_GAPS


SLICE_CHECK_SIZE = 160  # in-plane crop of the slice-axis check (voxels per side): seconds, not minutes


SLAB_CHECK_SUBDIVISION = 3  # fine samples per acquired slice step where the slab check averages


def slice_axis_psnr(volume: np.ndarray, spacing: Sequence[float], axis: int, model, device,
                    intensities, thickness: float | None = None) -> float | None:
    """PSNR (normalised intensities) of acquired slices predicted from their neighbours: every
    other acquired slice is dropped, the rest are super-resolved and the dropped ones compared.

    The held-back pairs are made with the profile adaptation assumed, so they approve a model
    trained with a wrong one; this check is made on the scan's real slice axis with its real
    profile. Thin slices (``thickness`` below the spacing, or unknown) are predicted x2 and
    compared as they are. A contiguous or overlapping slice is a slab mean, which a model that
    makes thin slices should not reproduce: the kept slices are super-resolved x6 (three fine
    samples per acquired step) and the fine slices are averaged over the dropped slice's
    thickness (its box, as the pairs are made) before the comparison. None when the volume has
    too few slices (fewer than 5)."""
    from .api import super_resolve

    if volume.shape[axis] < 5:
        return None
    moved = np.moveaxis(volume, axis, 0)
    crops = [slice(max(0, (size - SLICE_CHECK_SIZE) // 2), max(0, (size - SLICE_CHECK_SIZE) // 2) + SLICE_CHECK_SIZE)
             for size in moved.shape[1:]]
    moved = moved[:, crops[0], crops[1]]
    count = moved.shape[0] - (1 - moved.shape[0] % 2)  # odd: the last kept slice closes the last gap
    kept = np.ascontiguousarray(moved[0:count:2])
    dropped = moved[1:count:2]
    kept_spacing = (2.0 * float(spacing[axis]),) + tuple(float(spacing[a]) for a in range(3) if a != axis)
    profile = SliceProfile(thickness, float(spacing[axis]))
    if not profile.slabs:
        predicted = super_resolve(kept, kept_spacing, scale=2.0, slice_axis=0, model=model,
                                  device=str(device)).array[1::2]
    else:  # the dropped slices' boxes, centred on fine index step * (2 k + 1), as the pairs are made
        step = SLAB_CHECK_SUBDIVISION
        fine = super_resolve(kept, kept_spacing, scale=2.0 * step, slice_axis=0, model=model,
                             device=str(device)).array
        predicted = degrade_with_profile(fine, 2.0 * step, profile.width(step), first=step,
                                         slices=dropped.shape[0])
    error = intensities.forward(predicted) - intensities.forward(dropped)
    mse = max(float(np.mean(error.astype(np.float64) ** 2)), 1e-12)
    return 10.0 * math.log10(1.0 / mse)


def check_model_output(path, overwrite: bool = False) -> None:
    """Fail before any work if the adapted weights could not be written where asked."""
    from pathlib import Path

    from .errors import ModelError, OutputError

    path = Path(path)
    if not path.name.endswith(".safetensors"):
        raise ModelError(f"the model to save must be a .safetensors file, got {path.name}")
    if path.exists() and not overwrite:
        raise OutputError(f"output exists: {path} (use --overwrite to replace it)")
    if not path.parent.is_dir():
        raise OutputError(f"folder does not exist: {path.parent}")


# rough output voxels per second of the bundled model, only to split one progress bar between
# the adaptation phase (its length is known) and super-resolution (estimated from the output size)
_VOXELS_PER_SECOND = {"cpu": 3e5, "cuda": 2e7}


def phase_progress(progress, minutes: float, output_voxels: int, device):
    """(adaptation callback, super-resolution callback) mapping each phase's own 0..1 onto one
    bar, the adaptation taking its share of the expected total time; (None, None) without a bar."""
    if progress is None:
        return None, None
    adapt_seconds = minutes * 60.0
    infer_seconds = output_voxels / _VOXELS_PER_SECOND.get(device.type, 3e5)
    share = adapt_seconds / (adapt_seconds + infer_seconds)
    return (lambda fraction: progress(share * fraction),
            lambda fraction: progress(share + (1.0 - share) * fraction))
