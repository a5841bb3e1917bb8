"""``cycleinr bench``: the engine's speed and memory against SimpleITK and the FLOP floor, in one run.

The floor is the job's multiply-adds (``cost.job_cost``, x2 for FLOPs) over the dense matmul
rate this device reaches in the same run (square GEMMs, in the precision the engine computes
in: float32 on CPU, bfloat16/float16 under autocast on GPU). Engine / floor says how much of the
device the engine leaves unused. Everything runs in this process, one after the other, so the
figures share the machine's state (measure ratios, not absolute times, on a shared machine).

Peak host memory is the kernel's high-water mark of this process (VmHWM, reset before each
measured call where Linux allows it) and a 10 ms RSS sampler as a fallback; the growth over the
RSS before the call is what the job itself needed, input excluded (it exists before).
"""
from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .baselines import interpolate
from .config import ModelInfo, preset
from .cost import job_cost
from .geometry import acquired_slices, output_positions, plan_output
from .inference import axis_tiles, default_memory_budget, plan_tiles
from .weights import LoadedModel, load_model

SAMPLE = Path(__file__).resolve().parent / "sample" / "tcga_thca_ct_chest_crop.nii.gz"
SAMPLE_SPACING_XYZ = (0.977, 0.977, 2.5)


def bench_volume(shape_xyz: tuple[int, int, int]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The real sample CT mirrored (no seams) or cropped to ``shape_xyz``; array order [z, y, x]."""
    import SimpleITK as sitk

    from .volumes import read_image

    image = read_image(SAMPLE)  # the one checked reader, even for the bundled file
    sample = sitk.GetArrayFromImage(image)
    target = tuple(int(size) for size in reversed(shape_xyz))
    if min(target) < 2:
        raise ValueError(f"bench shape must be at least 2 voxels per axis, got {tuple(shape_xyz)}")
    pads = [(0, max(0, want - have)) for want, have in zip(target, sample.shape)]
    grown = np.pad(sample, pads, mode="symmetric") if any(p[1] for p in pads) else sample
    starts = [(have - want) // 2 for have, want in zip(grown.shape, target)]
    volume = grown[tuple(slice(s, s + w) for s, w in zip(starts, target))]
    spacing = tuple(reversed(image.GetSpacing()))
    return np.ascontiguousarray(volume), spacing


def check_bench_memory(shape_xyz, scale: float) -> None:
    """Refuse, before building anything, a job whose int16 input and output cannot fit in memory."""
    import psutil

    from .errors import ResourceError

    input_bytes = 2.0 * float(np.prod([float(size) for size in shape_xyz]))
    needed = input_bytes * (1.0 + float(scale))
    available = psutil.virtual_memory().available
    if needed > available:
        raise ResourceError(f"a {'x'.join(str(int(s)) for s in shape_xyz)} volume at x{scale:g} needs "
                            f"{needed / 2**30:.1f} GiB for its input and output alone, only "
                            f"{available / 2**30:.1f} GiB is available: use a smaller --shape")


def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 2.0, size: int = 2048) -> float:
    """Dense GEMM FLOP/s of this device now (best of repeated size^3 products)."""
    left = torch.randn(size, size, device=device).to(dtype)
    right = torch.randn(size, size, device=device).to(dtype)
    best = 0.0
    deadline = time.perf_counter() + seconds
    with torch.inference_mode():
        torch.mm(left, right)  # warm-up: library initialisation, clocks
        while time.perf_counter() < deadline or best == 0.0:
            _synchronise(device)
            start = time.perf_counter()
            torch.mm(left, right)
            _synchronise(device)
            best = max(best, 2.0 * size ** 3 / (time.perf_counter() - start))
    return best


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakHostMemory:
    """Peak RSS of this process during a ``with`` block, and the RSS just before it."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self.before = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakHostMemory":
        self.before = self._process.memory_info().rss
        self._hwm_reset = _reset_high_water_mark()
        self.peak = self.before
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        if self._hwm_reset:
            self.peak = max(self.peak, _high_water_mark() or 0)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class BenchResult:
    """Every figure ``cycleinr bench`` prints, in seconds, bytes and FLOPs."""

    shape_xyz: tuple[int, int, int]
    output_shape_xyz: tuple[int, int, int]
    scale: float
    dtype: str
    device: str
    device_name: str
    threads: int
    model: str
    model_note: str
    matmul_dtype: str
    matmul_flops_per_s: float
    engine_s: float
    sitk_linear_s: float
    sitk_bspline_s: float
    flops_ideal: float
    flops_processed: float
    flops_split: dict[str, float]
    floor_s: float
    engine_over_floor: float
    halo_overhead: float
    tile_core: tuple[int, int, int]
    tile_halo: int
    input_bytes: int
    output_bytes: int
    host_rss_before: int
    host_peak: int
    host_growth: int
    gpu_peak_allocated: int | None = None
    gpu_peak_reserved: int | None = None
    load_average: tuple[float, float, float] | None = None
    skip_below: float | None = None
    copied_slices: int = 0
    compiled: bool = False
    compile_notes: list[str] = field(default_factory=list)
    paper_sized: bool = False
    targets: list[dict] = field(default_factory=list)
    machine: str = field(default_factory=platform.platform)
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_bench_model(model: str | None, preset_name: str | None, device: torch.device) -> tuple[LoadedModel, str]:
    """A weights file or bundled model, or an UNTRAINED network of a preset (speed does not
    depend on the weights). Default: on CPU the model the engine itself picks there (the bundled
    CPU-sized one); on GPU the paper-sized network, which the GPU targets are about (no trained
    paper-sized model is bundled yet)."""
    if model or (preset_name is None and device.type != "cuda"):
        from .bundled import model_path

        path = model_path(model, device.type)
        loaded = load_model(path, device)
        what = f"weights file {model}" if model else "the engine's default on this device"
        return loaded, f"{what} ({Path(path).name})"
    name = preset_name or "paper"
    torch.manual_seed(0)
    from .model import build_model

    network = build_model(preset(name)).to(device).eval()
    info = ModelInfo(config=network.config, name=f"preset-{name}-untrained")
    return LoadedModel(network, info, None), (f"preset '{name}' with UNTRAINED random weights "
                                              "(speed does not depend on the weights)")


def _encoded_voxels(network, shape: tuple[int, int, int], budget: int, scale: float) -> tuple[float, tuple, int]:
    """Voxels the encoder actually processes (halos included) under the engine's own tile plan."""
    plan = plan_tiles(network, shape, budget, scale=scale)
    total = 1.0
    for length, core in zip(shape, plan.core):
        tiles = axis_tiles(length, core, plan.overlap)
        total *= sum(min(stop + plan.halo, length) - max(start - plan.halo, 0) for start, stop in tiles)
    return total, plan.core, plan.halo


def run_bench(shape_xyz, scale: float, device: torch.device, loaded: LoadedModel, model_note: str,
              memory_budget: int | None = None, skip_below: float | None = None, report=print,
              compile_model: bool = False) -> BenchResult:
    """Time the engine, SimpleITK linear and B-spline on one real volume; count the floor.

    With ``compile_model`` the warm-up compiles (its time is reported, not counted) and the
    timed run is the compiled engine's."""
    from .api import super_resolve

    check_bench_memory(shape_xyz, scale)
    volume, spacing = bench_volume(shape_xyz)
    grid = plan_output(volume.shape, spacing, scale=scale)
    network = loaded.network
    budget = int(memory_budget) if memory_budget else default_memory_budget(device)
    source_shape = tuple(np.moveaxis(np.empty(volume.shape, dtype=np.uint8), grid.slice_axis, 0).shape)
    encoded, core, halo = _encoded_voxels(network, source_shape, budget, grid.scale)

    use_half = device.type == "cuda"
    matmul_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_half else torch.float32
    report(f"measuring the dense matmul rate ({str(matmul_dtype).replace('torch.', '')}) ...")
    rate = matmul_rate(device, matmul_dtype)

    report("warming up the engine on a small crop" + (" (compiling)" if compile_model else "") + " ...")
    start = time.perf_counter()
    warm = super_resolve(np.ascontiguousarray(volume[:4, :32, :32]), spacing, scale=scale, model=loaded,
                         device=str(device), memory_budget=budget, compile_model=compile_model)
    report(f"  warm-up {time.perf_counter() - start:.1f} s")
    report(f"engine: {volume.shape[::-1]} -> {grid.shape[::-1]} (x, y, z) ...")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with PeakHostMemory() as host:
        start = time.perf_counter()
        result = super_resolve(volume, spacing, scale=scale, model=loaded, device=str(device),
                               memory_budget=budget, skip_below=skip_below, progress=_tenths(report),
                               compile_model=compile_model)
        _synchronise(device)
        engine_s = time.perf_counter() - start
    gpu_allocated = gpu_reserved = None
    if device.type == "cuda":
        gpu_allocated = int(torch.cuda.max_memory_allocated(device))
        gpu_reserved = int(torch.cuda.max_memory_reserved(device))
    output_bytes = int(result.array.nbytes)
    compile_notes = list(warm.warnings) + list(result.warnings) if compile_model else []
    del result

    report("SimpleITK linear ...")
    start = time.perf_counter()
    interpolate(volume, spacing, scale=scale, method="linear")
    linear_s = time.perf_counter() - start
    report("SimpleITK B-spline ...")
    start = time.perf_counter()
    interpolate(volume, spacing, scale=scale, method="bspline")
    bspline_s = time.perf_counter() - start

    config = network.config
    # Acquired slices are copied, not decoded (keep_acquired, the default): the floor counts the
    # output voxels the network actually computes.
    slices = source_shape[0]
    copied = int((acquired_slices(output_positions(slices, grid.scale)) >= 0).sum())
    decoded = grid.voxels - copied * (volume.size // slices)
    ideal = job_cost(config, volume.size, decoded, grid.scale)
    processed = job_cost(config, volume.size, decoded, grid.scale, encoded_voxels=int(encoded))
    floor_s = ideal.flops / rate
    bench = BenchResult(
        shape_xyz=tuple(int(s) for s in shape_xyz), output_shape_xyz=tuple(int(s) for s in grid.shape[::-1]),
        scale=float(grid.scale), dtype=str(volume.dtype), device=str(device), device_name=_device_name(device),
        threads=torch.get_num_threads(), model=loaded.name, model_note=model_note,
        matmul_dtype=str(matmul_dtype).replace("torch.", ""), matmul_flops_per_s=rate,
        engine_s=engine_s, sitk_linear_s=linear_s, sitk_bspline_s=bspline_s,
        flops_ideal=ideal.flops, flops_processed=processed.flops,
        flops_split={"encoder": 2 * ideal.encoder, "projections": 2 * ideal.projections,
                     "per_output_voxel": 2 * ideal.per_output},
        floor_s=floor_s, engine_over_floor=engine_s / floor_s, halo_overhead=encoded / volume.size,
        tile_core=tuple(int(c) for c in core), tile_halo=int(halo),
        input_bytes=int(volume.nbytes), output_bytes=output_bytes, host_rss_before=int(host.before),
        host_peak=int(host.peak), host_growth=int(host.peak - host.before),
        gpu_peak_allocated=gpu_allocated, gpu_peak_reserved=gpu_reserved,
        load_average=tuple(os.getloadavg()) if hasattr(os, "getloadavg") else None, skip_below=skip_below,
        copied_slices=copied, compiled=compile_model, compile_notes=compile_notes,
        paper_sized=config == preset("paper"))
    bench.targets = check_targets(bench)
    return bench


# The targets, for 512x512x64 at x5 (memory: at every size). GB = 1e9 bytes.
TARGET_JOB = ((512, 512, 64), 5.0)
CPU_FLOOR_RATIO = 3.0
CPU_SMALL_MODEL_SECONDS = 180.0
GPU_PAPER_SECONDS = 2.0
GPU_PAPER_BYTES = 8e9
HOST_MARGIN_BYTES = 1.5e9


def check_targets(result: BenchResult) -> list[dict]:
    """Each target that applies to this run: what it limits, the measured value, and whether it is met."""
    targets = [{"target": "host peak <= input + output + 1.5 GB", "value": result.host_peak,
                "limit": result.input_bytes + result.output_bytes + HOST_MARGIN_BYTES, "unit": "bytes"}]
    if (tuple(result.shape_xyz), result.scale) == TARGET_JOB:
        if result.device == "cpu":
            targets.append({"target": "engine / floor <= 3 (CPU)", "value": result.engine_over_floor,
                            "limit": CPU_FLOOR_RATIO, "unit": "ratio"})
            if not result.paper_sized:
                targets.append({"target": "CPU-sized model done in <= 3 min", "value": result.engine_s,
                                "limit": CPU_SMALL_MODEL_SECONDS, "unit": "s"})
        elif result.paper_sized:
            targets.append({"target": "paper-sized model <= 2 s (H100)", "value": result.engine_s,
                            "limit": GPU_PAPER_SECONDS, "unit": "s"})
            targets.append({"target": "GPU memory <= 8 GB (H100)", "value": result.gpu_peak_reserved,
                            "limit": GPU_PAPER_BYTES, "unit": "bytes"})
    for target in targets:
        target["met"] = bool(target["value"] is not None and target["value"] <= target["limit"])
    return targets


def _tenths(report):
    """A progress callback that reports every 10 %, with the elapsed time."""
    start, reported = time.perf_counter(), [0]

    def update(fraction: float) -> None:
        tenth = int(fraction * 10)
        if tenth > reported[0]:
            reported[0] = tenth
            report(f"  {tenth * 10}% after {time.perf_counter() - start:.0f} s")
    return update


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"


def _size(count: float) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def format_result(result: BenchResult) -> str:
    """The side-by-side table ``cycleinr bench`` prints."""
    x, y, z = result.shape_xyz
    ox, oy, oz = result.output_shape_xyz
    lines = [
        f"volume {x}x{y}x{z} ({result.dtype}, real CT sample) at x{result.scale:g} -> {ox}x{oy}x{oz}",
        f"device {result.device} ({result.device_name}), {result.threads} torch threads"
        + (f", load average {result.load_average[0]:.1f}" if result.load_average else ""),
        f"model {result.model}: {result.model_note}",
        *([f"skip-air option on: voxels with every LR neighbour below {result.skip_below:g} interpolated "
           "(the floor counts every voxel)"] if result.skip_below is not None else []),
        *([f"{result.copied_slices} of {oz} output slices lie on input slices and are copied, not decoded "
           "(the floor counts only decoded voxels)"] if result.copied_slices else []),
        f"dense matmul rate {result.matmul_flops_per_s / 1e9:.0f} GFLOP/s ({result.matmul_dtype})",
        "",
        f"{'':32s}{'seconds':>10s}{'x engine':>10s}",
        f"{'engine (CycleINR)':32s}{result.engine_s:10.2f}{1.0:10.2f}",
        f"{'SimpleITK linear':32s}{result.sitk_linear_s:10.2f}{result.sitk_linear_s / result.engine_s:10.3f}",
        f"{'SimpleITK B-spline':32s}{result.sitk_bspline_s:10.2f}{result.sitk_bspline_s / result.engine_s:10.3f}",
        f"{'floor (FLOPs / matmul rate)':32s}{result.floor_s:10.2f}{result.floor_s / result.engine_s:10.3f}",
        f"{'engine / floor':32s}{result.engine_over_floor:10.2f}",
        "",
        f"FLOPs {result.flops_ideal:.3g} ideal (encoder {result.flops_split['encoder']:.3g}, "
        f"Q/K/V {result.flops_split['projections']:.3g}, per output voxel "
        f"{result.flops_split['per_output_voxel']:.3g}); {result.flops_processed:.3g} processed: tiles "
        f"{'x'.join(map(str, result.tile_core))} (z, y, x) + halo {result.tile_halo}, encoder work "
        f"x{result.halo_overhead:.2f} the ideal",
        f"peak host memory {_size(result.host_peak)}: RSS before {_size(result.host_rss_before)}, growth "
        f"{_size(result.host_growth)} (output {_size(result.output_bytes)}, input {_size(result.input_bytes)} "
        "held before)",
    ]
    if result.gpu_peak_allocated is not None:
        lines.append(f"peak GPU memory {_size(result.gpu_peak_allocated)} allocated, "
                     f"{_size(result.gpu_peak_reserved)} reserved")
    if result.compiled:
        lines.append("engine compiled with torch.compile (compilation in the warm-up, not timed)"
                     + "".join(f"; {note}" for note in result.compile_notes))
    for target in result.targets:
        value, limit = target["value"], target["limit"]
        shown = (f"{_size(value)} (limit {_size(limit)})" if target["unit"] == "bytes" and value is not None
                 else f"{value:.2f} (limit {limit:g})" if value is not None else "not measured")
        lines.append(f"target {target['target']}: {shown}: {'met' if target['met'] else 'NOT MET'}")
    return "\n".join(lines)
