"""cycleinr bench --shape X Y Z --scale R [--device D] [--model FILE | --preset NAME] [--threads N] [--json [FILE]]

``--json`` alone prints the figures as JSON on standard output (the table then goes to
standard error), so ``cycleinr bench --json`` is the whole check against the issue's targets.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import PRESETS
from . import finite_float


def add_arguments(parser) -> None:
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=[512, 512, 64],
                        help="volume size in voxels, image order (z = slice axis); built from the real "
                             "sample CT, mirrored or cropped (default 512 512 64)")
    parser.add_argument("--scale", type=finite_float, default=5.0, help="upsampling factor (default 5)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", help="weights file (.safetensors) or bundled model name (ct-cpu, mr-cpu); "
                                       "default on CPU: the model the engine picks there (ct-cpu)")
    which.add_argument("--preset", choices=list(PRESETS),
                       help="an untrained network of this size (default on GPU: paper)")
    parser.add_argument("--memory-budget", type=finite_float, metavar="GIB",
                        help="tile working-set budget in GiB (default: the engine's own choice)")
    parser.add_argument("--skip-below", type=finite_float, metavar="VALUE",
                        help="time the skip-air option: voxels whose LR neighbours are all below VALUE "
                             "(input units, e.g. -900 HU) get linear interpolation")
    parser.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's own)")
    parser.add_argument("--compile", action="store_true",
                        help="time the engine compiled with torch.compile (compiled in the warm-up)")
    parser.add_argument("--json", metavar="FILE", nargs="?", const="-",
                        help="also write every figure to this JSON file; without FILE, JSON on standard "
                             "output and the table on standard error")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..bench import format_result, resolve_bench_model, run_bench
    from ..devices import resolve_device
    from ..errors import InputError

    if min(args.shape) < 2:
        raise InputError(f"--shape needs at least 2 voxels per axis, got {args.shape}")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loaded, note = resolve_bench_model(args.model, args.preset, device)
    budget = int(args.memory_budget * 2**30) if args.memory_budget else None
    result = run_bench(tuple(args.shape), args.scale, device, loaded, note, memory_budget=budget,
                       skip_below=args.skip_below, compile_model=args.compile,
                       report=lambda message: print(message, file=sys.stderr, flush=True))
    figures = json.dumps(result.to_dict(), indent=2) + "\n"
    if args.json == "-":
        print(format_result(result), file=sys.stderr)
        sys.stdout.write(figures)
    else:
        print(format_result(result))
        if args.json:
            from ..output_files import write_text_atomically
            write_text_atomically(figures, args.json)
    return 0
