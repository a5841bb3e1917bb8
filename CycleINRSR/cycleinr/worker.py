"""One super-resolution job in its own process, for front ends that must stay responsive (Slicer).

    python -m cycleinr.worker --input in.nrrd --output out.nrrd (--scale R | --spacing MM) [...]

The caller reads stdout line by line; every line starts with a keyword:

    PROGRESS 0.42            fraction of the work done (0..1), at most every 0.2 s and at the end
    STATUS <text>            what is being done now (e.g. the adaptation phase and its outcome)
    WARNING <text>           something the user should know (e.g. scale outside the trained range)
    RESULT {json}            written once on success: scale, slice_axis, spacing, device, model
    ERROR <Kind>: <text>     one line, the reason for a non-zero exit

Exit codes: 0 done, 2 bad input/model/output, 3 not enough memory (host or GPU: a caller can retry
with smaller tiles or on the CPU), 130 cancelled (SIGTERM/SIGINT), 1 unexpected failure.
Pure Python: nothing here imports Slicer, Qt or VTK.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import warnings

EXIT_OK, EXIT_UNEXPECTED, EXIT_INPUT, EXIT_MEMORY, EXIT_CANCELLED = 0, 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    from .commands import finite_float, positive_int

    parser = argparse.ArgumentParser(prog="python -m cycleinr.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="input volume file (NRRD, NIfTI, MHA)")
    parser.add_argument("--output", required=True, help="output volume file (NRRD, NIfTI, MHA)")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--scale", type=finite_float, help="upsampling factor r > 1")
    amount.add_argument("--spacing", type=finite_float, help="target slice spacing in mm")
    parser.add_argument("--axis", choices=["I", "J", "K"], help="slice axis (default: coarsest spacing)")
    parser.add_argument("--model", help="weights file (.safetensors); default: the bundled model")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--tile-size", type=positive_int, help="tile core size in voxels along every axis")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--keep-acquired", action=argparse.BooleanOptionalAction, default=True,
                        help="copy output slices that lie on input slices unchanged (default)")
    parser.add_argument("--adapt", type=float, metavar="MINUTES",
                        help="adapt the model to this scan for MINUTES first (cycleinr.adapt)")
    parser.add_argument("--slice-thickness", type=float, metavar="MM",
                        help="with --adapt: slice thickness (default: measured from a CT scan, see cycleinr.slice_profile)")
    parser.add_argument("--save-model", metavar="FILE", help="with --adapt: keep the weights used here")
    parser.add_argument("--overwrite", action="store_true")
    return parser


class ProgressPrinter:
    """A ``progress(fraction)`` callback that prints throttled PROGRESS lines."""

    def __init__(self, stream, interval: float = 0.2):
        self.stream = stream
        self.interval = interval
        self.last_time = 0.0
        self.last_fraction = -1.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction >= 1.0 or now - self.last_time >= self.interval:
            if fraction != self.last_fraction:
                emit(self.stream, f"PROGRESS {min(max(float(fraction), 0.0), 1.0):.4f}")
                self.last_time, self.last_fraction = now, fraction


def emit(stream, line: str) -> None:
    stream.write(line.replace("\n", " ") + "\n")
    stream.flush()


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    try:
        import torch
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def run(args, stream=sys.stdout, stop: threading.Event | None = None) -> int:
    """The job itself; ``stop`` is set by the signal handlers (or a test) to cancel it."""
    from .errors import Cancelled, CycleINRError, ResourceError
    from .jobs import super_resolve_file

    stop = stop or threading.Event()
    if args.threads:
        import torch
        torch.set_num_threads(max(1, args.threads))
    options = dict(scale=args.scale, target_spacing=args.spacing, slice_axis=args.axis,
                   model=args.model, device=args.device, overwrite=args.overwrite,
                   tile_size=[args.tile_size] if args.tile_size else None, keep_acquired=args.keep_acquired)
    if args.adapt:
        options.update(adapt_minutes=args.adapt, slice_thickness=args.slice_thickness,
                       save_model=args.save_model, log=lambda line: emit(stream, f"STATUS {line}"))
    progress = ProgressPrinter(stream)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = super_resolve_file(args.input, args.output, progress=progress, cancel=stop, **options)
        for warning in caught:
            emit(stream, f"WARNING {warning.message}")
    except Cancelled as error:
        emit(stream, f"ERROR Cancelled: {error}")
        return EXIT_CANCELLED
    except ResourceError as error:
        emit(stream, f"ERROR ResourceError: {error}")
        return EXIT_MEMORY
    except CycleINRError as error:
        emit(stream, f"ERROR {type(error).__name__}: {error}")
        return EXIT_INPUT
    except Exception as error:  # noqa: BLE001 - the caller needs one line whatever happened
        if _is_out_of_memory(error):
            where = "GPU" if "cuda" in str(args.device) or "CUDA" in str(error) else "host"
            emit(stream, f"ERROR ResourceError: {where} out of memory ({str(error).splitlines()[0][:200]})")
            return EXIT_MEMORY
        emit(stream, f"ERROR {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}")
        return EXIT_UNEXPECTED
    progress(1.0)
    emit(stream, "RESULT " + json.dumps({
        "scale": result.scale, "slice_axis": "KJI"[result.slice_axis], "spacing": list(result.spacing),
        "device": result.device, "model": result.model_name, "warnings": result.warnings,
        "adapted": None if result.adaptation is None else result.adaptation.adapted}))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()

    def request_stop(signum, frame):
        stop.set()

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), request_stop)
    return run(args, sys.stdout, stop)


if __name__ == "__main__":
    sys.exit(main())
