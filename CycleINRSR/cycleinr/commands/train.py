"""cycleinr train DATA... --output RUN_DIR: train or resume (run with torchrun for several GPUs/processes)."""
from __future__ import annotations

import sys

from . import finite_float


def add_arguments(parser) -> None:
    parser.add_argument("data", nargs="+", help="training volumes, DICOM series folders, or folders of them")
    parser.add_argument("--output", required=True, help="run folder (checkpoints, log.csv); an existing "
                                                        "run there is resumed")
    parser.add_argument("--preset", default="cpu", help="architecture: paper, cpu, cpu-wide, cpu-fact or tiny (default cpu)")
    parser.add_argument("--init", dest="init_model", help="start from these weights (fine-tune)")
    parser.add_argument("--no-attention", action="store_true", help="LAM off (ablation, Table 2)")
    parser.add_argument("--no-cycle", action="store_true", help="lambda = 0 (ablation, Table 2)")
    parser.add_argument("--cycle-weight", type=finite_float, default=1.0, help="lambda (default 1)")
    parser.add_argument("--detail-weight", type=finite_float, default=0.0,
                        help="mu: weight of the slice-detail term that keeps new slices as noisy/sharp as "
                             "the real ones (ours, not the paper's; default 0 = off)")
    parser.add_argument("--modality", choices=["ct", "mr"],
                        help="intensity normalisation: CT window or MR percentiles (default: the --init "
                             "model's, else ct)")
    parser.add_argument("--fine-spacing", type=finite_float, default=1.6,
                        help="axes with spacing at or below this (mm) serve as HR slice axes")
    parser.add_argument("--degrade", nargs="+", choices=["interval", "slab"], default=["interval", "slab"])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--lr", type=finite_float, default=1e-4)
    parser.add_argument("--lr-halve-every", type=int, default=200, help="epochs between halvings (paper 200)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr-slices", type=int, default=8, help="LR slices per patch")
    parser.add_argument("--patch", type=int, default=32, help="in-plane patch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-foreground", type=float, default=0.0, metavar="FRACTION",
                        help="redraw patches with less than this fraction of voxels above background "
                             "(e.g. 0.3; default 0 = off)")
    parser.add_argument("--val", nargs="*", default=[], help="held-back volumes validated each epoch "
                        "(x2/x3/x5 on a central crop, model and trilinear, to validation.csv)")
    parser.add_argument("--max-minutes", type=finite_float, help="stop with a checkpoint after this long")
    parser.add_argument("--name", default="cycleinr", help="name of the final model file")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--fp16-weights", action="store_true", help="store the final weights in fp16")
    parser.set_defaults(run=run)


def options_from_args(args):
    from ..train import TrainOptions

    return TrainOptions(
        data=args.data, output=args.output, preset=args.preset, init_model=args.init_model,
        attention=not args.no_attention, cycle_weight=0.0 if args.no_cycle else args.cycle_weight,
        detail_weight=args.detail_weight,
        modality=args.modality, fine_spacing=args.fine_spacing, degrade=tuple(args.degrade),
        steps=args.steps, steps_per_epoch=args.steps_per_epoch, lr=args.lr,
        lr_halve_every=args.lr_halve_every, batch_size=args.batch_size, lr_slices=args.lr_slices,
        patch=args.patch, seed=args.seed, min_foreground=args.min_foreground, validation=list(args.val),
        max_seconds=args.max_minutes * 60 if args.max_minutes else None, name=args.name,
        half_precision_weights=args.fp16_weights)


def run(args) -> int:
    from ..train import _distributed, train

    options = options_from_args(args)
    rank = _distributed()[0]
    bar = _progress_bar(options.steps) if rank == 0 else None
    try:
        path = train(options, log=bar.write if bar else _log, device=args.device,
                     report=_show_losses(bar) if bar else None,
                     progress=(lambda fraction: _advance(bar, round(fraction * options.steps))) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    if rank == 0:
        print(path)
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _StderrBar:
    """tqdm on a terminal; plain one-line messages where stderr is a file or pipe."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def write(self, message: str) -> None:
        if self.bar.disable:
            _log(message)
        else:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


def _progress_bar(total: int) -> _StderrBar:
    return _StderrBar(total)


def _advance(bar: _StderrBar, step: int) -> None:
    if step > bar.bar.n:
        bar.bar.update(step - bar.bar.n)


def _show_losses(bar: _StderrBar):
    def show(row: dict) -> None:
        if bar.bar.n == 0 and row["step"] > 1:
            bar.bar.n = row["step"] - 1  # a resumed run starts part-way
        bar.bar.set_postfix(loss=f"{row['loss']:.4f}", cycle=f"{row['cycle']:.4f}", r=f"{row['scale']:.1f}",
                            refresh=False)
    return show
