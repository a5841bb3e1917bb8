"""Training: L = L1(INR) + lambda * L1(cycle) [+ mu * detail] on pairs made on the fly (paper Eq. 6-9).

The cycle term re-encodes the *generated* HR patch with the same network and queries it at the
LR slice positions (k * r in HR index units, generally between HR slices): gradients flow
through both passes. Runs on one device, or under ``torchrun`` with DistributedDataParallel
(gloo on CPU, NCCL on GPU), each rank cutting its own share of one global batch, so a run gives
the same result on any number of processes (up to float summation order).

Multi-process, from the repository root (or with the package pip-installed, drop PYTHONPATH)::

    PYTHONPATH=CycleINRSR torchrun --standalone --nproc_per_node=2 -m cycleinr train DATA... --output RUN
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 $(which cycleinr) train ...

Checkpoints are safetensors only (weights + Adam state) plus a JSON file with the step, the
learning rate and the sampler's RNG state, so a resumed run continues exactly; nothing is
ever unpickled.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import CT_NORMALISATION, MR_NORMALISATION, ModelInfo, Normalisation, preset
from .errors import Cancelled, InputError, OutputError
from .model import CycleINR, build_model, use_channels_last
from .normalise import intensity_map
from .pairs import Batch, PairSampler, TrainingVolume, fine_axes
from .weights import load_model, save_model

CHECKPOINT_WEIGHTS = "last.safetensors"
CHECKPOINT_STATE = "last_optimizer.safetensors"
CHECKPOINT_JSON = "last_state.json"


@dataclass
class TrainOptions:
    """Everything a run needs; stored in each checkpoint's JSON. ``batch_size`` is per process."""

    data: list[str]                     # volume files / DICOM folders / folders of them
    output: str                         # run folder: checkpoints, log.csv, final model
    preset: str = "cpu"                 # architecture preset (ignored when init_model is given)
    init_model: str | None = None       # start from these weights (fine-tuning)
    attention: bool = True              # False: the LAM ablation
    cycle_weight: float = 1.0           # lambda; 0 = --no-cycle ablation
    detail_weight: float = 0.0          # mu, the slice-detail term (not in the paper; 0 = off)
    modality: str | None = None         # ct window or mr percentiles; None: the --init model's, else ct
    fine_spacing: float = 1.6           # axes at or below this spacing (mm) are learned from
    degrade: tuple[str, ...] = ("interval", "slab")
    steps: int = 1000                   # total optimisation steps
    steps_per_epoch: int = 100
    lr: float = 1e-4
    lr_halve_every: int = 200           # epochs (paper: 200)
    batch_size: int = 4
    lr_slices: int = 8
    patch: int = 32
    seed: int = 0
    min_foreground: float = 0.0         # redraw patches with less of the body than this (0 = off)
    validation: list[str] = field(default_factory=list)
    validation_scales: tuple[float, ...] = (2.0, 3.0, 5.0)
    max_seconds: float | None = None    # stop (with a checkpoint) after this wall time
    name: str = "cycleinr"
    half_precision_weights: bool = False


def modality_normalisation(modality: str) -> Normalisation:
    if modality not in ("ct", "mr"):
        raise InputError(f"modality must be ct or mr, got {modality!r}")
    return CT_NORMALISATION if modality == "ct" else MR_NORMALISATION


def load_training_volumes(paths: list[str], modality: str | Normalisation,
                          fine_spacing: float) -> list[TrainingVolume]:
    """Read the volumes and their intensity maps under the model's normalisation (or a modality's)."""
    from .jobs import list_inputs
    from .volumes import read_image
    import SimpleITK as sitk

    files: list[Path] = []
    for item in paths:
        path = Path(item)
        if path.is_dir() and not _looks_like_dicom(path):
            files.extend(list_inputs(path))
        else:
            files.append(path)
    if not files:
        raise InputError("no training volumes given")
    rule = modality if isinstance(modality, Normalisation) else modality_normalisation(modality)
    volumes = []
    for path in files:
        image = read_image(path)
        array = sitk.GetArrayFromImage(image)
        if not np.issubdtype(array.dtype, np.integer):
            array = array.astype(np.float32)
        spacing = tuple(reversed(image.GetSpacing()))
        volumes.append(TrainingVolume(path.name, array, spacing, fine_axes(spacing, fine_spacing),
                                      intensity_map(array, rule)))
    return volumes


def _looks_like_dicom(folder: Path) -> bool:
    from .volumes import is_volume_file
    entries = list(folder.iterdir())
    return bool(entries) and all(p.is_file() and not is_volume_file(p) for p in entries)


def slice_detail(volume: torch.Tensor) -> torch.Tensor:
    """Mean |HH| of each slice's finest in-plane Haar diagonal band: (B, 1, T, H, W) -> (B, T).

    The band holds the slice's noise and its sharpest edges (the wavelet noise estimate behind
    SNLI reads the same band), so it says how noisy/sharp a slice is without needing its noise
    realisation, which no model can predict."""
    height, width = volume.shape[-2] // 2 * 2, volume.shape[-1] // 2 * 2
    volume = volume[..., :height, :width]
    diagonal = (volume[..., 0::2, 0::2] - volume[..., 0::2, 1::2]
                - volume[..., 1::2, 0::2] + volume[..., 1::2, 1::2]) / 2
    return diagonal.abs().mean(dim=(-1, -2)).flatten(1)


def cycle_loss_terms(network, lr: torch.Tensor, hr: torch.Tensor, positions: torch.Tensor,
                     scale: float, cycle_weight: float, detail_weight: float = 0.0,
                     target_slices: torch.Tensor | None = None):
    """(total, inr, cycle, detail) for one batch. ``network`` may be DDP-wrapped.

    The cycle term calls the network a second time on the *generated* HR patch (a new encoding,
    not an interpolation of it) and queries it at the LR slice positions k * r (HR index units).
    The detail term (ours, off by default) is the L1 distance between the per-slice detail energy
    of the generated and the real thin slices: L1 alone is minimised by the conditional median,
    which smooths away the unpredictable noise, so new slices come out smoother than the acquired
    ones and the slice-to-slice noise level swings (SNLI); this term asks each new slice to carry
    as much fine detail as the real slice at its place, without asking for the same noise.
    ``target_slices`` (bool per HR slice; None: all) limits the L1 and detail terms to those
    slices: adaptation scores only the new ones, as the output keeps the acquired ones.
    """
    generated = network(lr, positions, 1.0 / scale)
    scored, target = generated, hr
    if target_slices is not None:
        scored, target = generated[:, :, target_slices], hr[:, :, target_slices]
    inr = F.l1_loss(scored, target)
    zero = torch.zeros((), device=lr.device)
    total, cycle, detail = inr, zero, zero
    if detail_weight > 0:
        detail = F.l1_loss(slice_detail(scored.float()), slice_detail(target.float()))
        total = total + detail_weight * detail
    if cycle_weight > 0:
        lr_positions = torch.arange(lr.shape[2], device=lr.device, dtype=torch.float32) * scale
        lr_positions = lr_positions.clamp(max=generated.shape[2] - 1)
        reconstructed = network(generated, lr_positions, scale)  # re-encodes the generated volume
        cycle = F.l1_loss(reconstructed, lr)
        total = total + cycle_weight * cycle
    return total, inr.detach(), cycle.detach(), detail.detach()


def backward_on_batch(model, batch: Batch, cycle_weight: float, device: torch.device,
                      use_amp: bool = False, detail_weight: float = 0.0,
                      target_slices: torch.Tensor | None = None):
    """Forward both passes and backpropagate; gradients accumulate in ``model`` (DDP averages
    them over processes here). Returns the (total, inr, cycle, detail) loss tensors."""
    lr_tensor = torch.from_numpy(batch.lr).to(device)
    hr_tensor = torch.from_numpy(batch.hr).to(device)
    positions = torch.from_numpy(batch.hr_positions).float().to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
        loss, inr, cycle, detail = cycle_loss_terms(model, lr_tensor, hr_tensor, positions, batch.scale,
                                                    cycle_weight, detail_weight, target_slices)
    loss.backward()
    return loss.detach(), inr, cycle, detail


def _distributed() -> tuple[int, int, int]:
    """Rank, world size, local rank from torchrun's environment (1 process otherwise)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def learning_rate_at(options: TrainOptions, step: int) -> float:
    """Adam's rate for the step after ``step``: ``lr`` halved every ``lr_halve_every`` epochs."""
    epoch = step // options.steps_per_epoch
    return options.lr * 0.5 ** (epoch // max(1, options.lr_halve_every))


def train(options: TrainOptions, progress: Callable[[float], None] | None = None,
          cancel=None, log: Callable[[str], None] = print, device: str = "auto",
          report: Callable[[dict], None] | None = None) -> Path:
    """Train (or resume) into ``options.output``; returns the path of the final weights.

    ``progress(fraction)`` after every step; ``cancel`` (callable or threading.Event) stops at the
    next step with a checkpoint written and raises ``Cancelled``; ``log(message)`` gets one-line
    messages (rank 0 only); ``report(row)`` gets each step's losses as a dict. Under torchrun
    (RANK/WORLD_SIZE set) every process calls this with the same options: ``batch_size`` is per
    process, and K processes train exactly as one process with K times the batch would.
    """
    if options.steps < 1 or options.steps_per_epoch < 1 or options.batch_size < 1:
        raise InputError("steps, steps per epoch and batch size must be positive")
    rank, world, local_rank = _distributed()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    torch_device = _training_device(device, local_rank)
    should_stop = (cancel.is_set if hasattr(cancel, "is_set") else cancel) or (lambda: False)
    run_dir = Path(options.output)
    _check_run_folder(run_dir)  # a read-only or full place fails now, not at the first checkpoint

    torch.manual_seed(options.seed)
    network, info = _initial_network(options)
    use_channels_last(network.to(torch_device)).train()
    optimiser = torch.optim.Adam(network.parameters(), lr=options.lr)

    volumes = load_training_volumes(options.data, info.normalisation, options.fine_spacing)
    if rank == 0 and options.validation:
        from .validation import load_validation_volume
        for path in options.validation:  # fail now, not after the first epoch
            load_validation_volume(path, options.fine_spacing)
    sampler = PairSampler(volumes, options.lr_slices, options.patch, options.batch_size,
                          options.degrade, seed=options.seed, min_foreground=options.min_foreground)
    step, elapsed_before = _resume(run_dir, network, optimiser, sampler, rank, torch_device, log)
    model = network
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[torch_device.index] if torch_device.type == "cuda" else None)
    use_amp = torch_device.type == "cuda"
    log_file = _open_log(run_dir / "log.csv", step) if rank == 0 else None
    writer = csv.writer(log_file) if log_file else None
    start_time = time.time()
    if rank == 0:
        log(f"training {info.config} on {len(volumes)} volumes "
            f"({', '.join(v.name for v in volumes)}) on {torch_device}, world size {world}, from step {step}")
    try:
        while step < options.steps:
            stop_now = _agree(should_stop(), world, torch_device)
            if stop_now:
                if rank == 0 and step > 0:
                    _save_checkpoint(run_dir, network, info, optimiser, sampler, step,
                                     elapsed_before + time.time() - start_time, options)
                raise Cancelled(f"training cancelled at step {step} (checkpoint kept; rerun to resume)")
            epoch = step // options.steps_per_epoch
            learning_rate = learning_rate_at(options, step)
            for group in optimiser.param_groups:
                group["lr"] = learning_rate
            batch = sampler.sample(rank, world)
            optimiser.zero_grad(set_to_none=True)
            loss, inr, cycle, detail = backward_on_batch(model, batch, options.cycle_weight, torch_device,
                                                         use_amp, options.detail_weight)
            optimiser.step()
            step += 1
            seconds = elapsed_before + time.time() - start_time
            row = {"step": step, "epoch": epoch, "loss": loss.item(), "inr": inr.item(),
                   "cycle": cycle.item(), "detail": detail.item(), "lr": learning_rate,
                   "seconds": seconds, "scale": batch.scale}
            if writer:
                writer.writerow([step, epoch, f"{row['loss']:.6f}", f"{row['inr']:.6f}",
                                 f"{row['cycle']:.6f}", f"{learning_rate:.3g}", f"{seconds:.1f}",
                                 f"{batch.scale:.1f}", f"{row['detail']:.6f}"])
            if report is not None and rank == 0:
                report(row)
            if progress is not None:
                progress(step / options.steps)
            at_epoch_end = step % options.steps_per_epoch == 0
            out_of_time = _agree(options.max_seconds is not None
                                 and time.time() - start_time >= options.max_seconds, world, torch_device)
            if at_epoch_end or step == options.steps or out_of_time:
                if rank == 0:
                    _save_checkpoint(run_dir, network, info, optimiser, sampler, step, seconds, options)
                    log_file.flush()
                    if at_epoch_end and options.validation:
                        _validate(network, info, options, step, run_dir, log)
                if world > 1:
                    torch.distributed.barrier()
            if out_of_time:
                if rank == 0:
                    log(f"stopping at step {step}: time limit of {options.max_seconds:g} s reached")
                break
    finally:
        if log_file:
            log_file.close()
    final = run_dir / f"{options.name}.safetensors"
    if rank == 0:
        info.name = options.name
        info.provenance.update(_provenance(options, volumes, step, elapsed_before + time.time() - start_time,
                                           torch_device, world))
        save_model(final, network, info, half_precision=options.half_precision_weights)
    if world > 1:
        torch.distributed.barrier()
    return final


def _initial_network(options: TrainOptions) -> tuple[CycleINR, ModelInfo]:
    """A fresh network of the preset (attention off for the ablation), or the given weights.

    Fine-tuning keeps the init model's intensity normalisation unless a modality is named: a CT
    model fine-tuned with modality "mr" learns (and stores) the MR percentile normalisation, so
    the saved model always describes the intensities it was trained on."""
    if options.init_model:
        loaded = load_model(options.init_model, "cpu")
        if not options.attention and loaded.network.config.attention:
            raise InputError("--no-attention cannot be combined with --init from a model with attention")
        # this run's provenance goes on top; the init model's is kept whole under its own key,
        # so nothing of the earlier training is mistaken for this run's
        normalisation = (loaded.info.normalisation if options.modality is None
                         else modality_normalisation(options.modality))
        info = replace(loaded.info, normalisation=normalisation, provenance={"initialised_from": {
            "name": loaded.info.name, "provenance": loaded.info.provenance}})
        return loaded.network, info
    config = preset(options.preset)
    if not options.attention:
        config = type(config)(**{**config.to_dict(), "attention": False})
    return build_model(config), ModelInfo(config=config, normalisation=modality_normalisation(options.modality or "ct"))


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every process when it is true on any (so all stop at the same step)."""
    if world == 1:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


LOG_HEADER = ["step", "epoch", "loss", "inr", "cycle", "lr", "seconds", "scale", "detail"]


def _open_log(path: Path, step: int):
    """log.csv for appending; rows past the resumed step (written after the last checkpoint by a
    run that was then killed) are dropped, so the log matches the weights."""
    rows = []
    if path.exists():
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle)][1:]
        rows = [row for row in rows if row and int(row[0]) <= step]
    handle = open(path, "w", newline="")
    writer = csv.writer(handle)
    writer.writerow(LOG_HEADER)
    writer.writerows(rows)
    return handle


def _training_device(device: str, local_rank: int) -> torch.device:
    if device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")


def _provenance(options: TrainOptions, volumes, step: int, seconds: float, device, world: int) -> dict:
    return {
        "training_data": [{"name": v.name, "spacing_kji": list(v.spacing), "fine_axes": list(v.fine_axes)}
                          for v in volumes],
        "steps": step, "wall_seconds": round(seconds, 1), "device": str(device), "world_size": world,
        "cycle_weight": options.cycle_weight, "detail_weight": options.detail_weight, "degrade": list(options.degrade),
        "batch_size": options.batch_size, "patch": options.patch, "lr_slices": options.lr_slices,
        "learning_rate": options.lr, "scales": "2.0-6.0 step 0.1", "seed": options.seed,
        "min_foreground": options.min_foreground,
    }


def _check_run_folder(run_dir: Path) -> None:
    from .output_files import check_output_path

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the run folder {run_dir}: {error.strerror or error}") from None
    check_output_path(run_dir / CHECKPOINT_WEIGHTS, overwrite=True, suffixes=(".safetensors",))


def _save_checkpoint(run_dir: Path, network: CycleINR, info: ModelInfo, optimiser, sampler: PairSampler,
                     step: int, seconds: float, options: TrainOptions) -> None:
    from .output_files import write_safetensors_atomically, write_text_atomically

    save_model(run_dir / CHECKPOINT_WEIGHTS, network, info)
    tensors, scalars = {}, {}
    for index, param in enumerate(network.parameters()):
        state = optimiser.state.get(param, {})
        for key, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = float(value)
    tensors["torch_rng"] = torch.get_rng_state()
    write_safetensors_atomically(tensors, run_dir / CHECKPOINT_STATE)  # verified before it replaces the last
    state = {"step": step, "seconds": seconds, "sampler": sampler.state(), "optimiser_scalars": scalars,
             "options": {k: v for k, v in asdict(options).items()}}
    write_text_atomically(json.dumps(state, indent=1), run_dir / CHECKPOINT_JSON)


def _resume(run_dir: Path, network: CycleINR, optimiser, sampler: PairSampler, rank: int,
            device: torch.device, log) -> tuple[int, float]:
    """Continue from the last checkpoint in ``run_dir`` if there is one: weights, Adam, RNG, step."""
    from safetensors.torch import load_file

    state_path = run_dir / CHECKPOINT_JSON
    if not state_path.exists():
        return 0, 0.0
    state = json.loads(state_path.read_text())
    loaded = load_model(run_dir / CHECKPOINT_WEIGHTS, device)
    if loaded.network.config != network.config:
        raise InputError(f"{run_dir} holds a run of a different architecture; use a new output folder")
    network.load_state_dict(loaded.network.state_dict())
    tensors = load_file(str(run_dir / CHECKPOINT_STATE))
    scalars = state["optimiser_scalars"]
    for index, param in enumerate(network.parameters()):
        entry = {}
        for key in ("exp_avg", "exp_avg_sq"):
            if f"{index}.{key}" in tensors:
                entry[key] = torch.empty_like(param).copy_(tensors[f"{index}.{key}"])  # param's layout
        if f"{index}.step" in scalars:
            entry["step"] = torch.tensor(scalars[f"{index}.step"])
        if entry:
            optimiser.state[param] = entry
    torch.set_rng_state(tensors["torch_rng"])
    sampler.set_state(state["sampler"])
    if rank == 0:
        log(f"resuming {run_dir} at step {state['step']}")
    return int(state["step"]), float(state.get("seconds", 0.0))


def _validate(network: CycleINR, info: ModelInfo, options: TrainOptions, step: int, run_dir: Path, log) -> None:
    """Held-back volumes at x2/x3/x5 against trilinear, written to validation.csv."""
    from .validation import summarise, validate_model

    network.eval()
    try:
        rows = validate_model(network, info, options.validation, options.validation_scales,
                              options.fine_spacing)
    finally:
        network.train()
    path = run_dir / "validation.csv"
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["step", "volume", "scale", "method", "psnr", "ssim", "snli"])
        for row in rows:
            writer.writerow([step] + row)
    log(f"step {step} validation PSNR: {summarise(rows)}")
