"""cycleinr super-resolve INPUT OUTPUT (--scale R | --spacing MM) ...

INPUT may be a folder (of volume files or DICOM series folders): OUTPUT is then a folder, and
under ``torchrun`` the files are shared out across the ranks, one GPU each.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from ..adapt import DEFAULT_MINUTES
from . import add_scale_arguments, finite_float, positive_int


def add_arguments(parser) -> None:
    parser.add_argument("input", help="volume file (.nii/.nii.gz/.nrrd/.mha/.mhd), DICOM series folder, "
                                      "or a folder of these (batch)")
    parser.add_argument("output", help="output file (.nii/.nii.gz/.nrrd/.mha), or a folder in batch mode")
    add_scale_arguments(parser)
    parser.add_argument("--model", help="weights file (.safetensors) or a bundled model's name (ct-cpu, "
                                        "mr-cpu); default: the bundled CT model (its CPU-sized variant on a CPU)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--tile-size", type=positive_int, nargs="+", metavar="N",
                        help="tile core size in voxels (1 or 3 values, array order k j i)")
    parser.add_argument("--halo", type=positive_int, help="context voxels around each tile "
                                                 "(default: the model's receptive radius: exact)")
    parser.add_argument("--skip-below", type=finite_float, metavar="VALUE",
                        help="interpolate instead of running the network where every LR neighbour is below "
                             "VALUE in input units (e.g. -900 HU: air); off by default")
    parser.add_argument("--keep-acquired", action=argparse.BooleanOptionalAction, default=True,
                        help="output slices that lie exactly on an input slice are the input slice, "
                             "unchanged (default); --no-keep-acquired lets the network regenerate them")
    parser.add_argument("--compile", action="store_true",
                        help="run the network through torch.compile (off by default: measured not to pay "
                             "on CPU; the first volume pays the compilation); if it fails, a warning says so "
                             "and the work goes on uncompiled")
    parser.add_argument("--adapt", type=float, nargs="?", const=DEFAULT_MINUTES, metavar="MINUTES",
                        help="first adapt the model to this scan for MINUTES (default "
                             f"{DEFAULT_MINUTES:g}): its own in-plane data, degraded with its slice profile; the "
                             "base model is kept if that does not help on held-back data, and the output "
                             "line says which was used")
    parser.add_argument("--slice-thickness", type=float, metavar="MM",
                        help="with --adapt: the scan's slice thickness (DICOM: read from SliceThickness; "
                             "NIfTI/NRRD CT without it: measured from the scan; MR: pairs for thin and for contiguous slices)")
    parser.add_argument("--save-model", metavar="FILE",
                        help="with --adapt: keep the weights used in FILE (.safetensors); without it "
                             "nothing is kept")
    parser.add_argument("--format", default=".nii.gz", choices=[".nii.gz", ".nii", ".nrrd", ".mha"],
                        help="output format in batch mode")
    parser.add_argument("--output-format", default="volume", choices=["volume", "dicom"],
                        help="volume: a file in the format its suffix (in batch mode --format) names; dicom: "
                             "a derived DICOM series folder per input, for PACS (DICOM series input only)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def _rank_world() -> tuple[int, int]:
    """Rank and world size under torchrun (environment variables only: no process group needed)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _device_for_rank(device: str) -> str:
    if device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
        import torch
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def run(args) -> int:
    from ..jobs import check_batch_output, list_inputs, super_resolve_file
    from ..progress import progress_bar

    source, target = Path(args.input), Path(args.output)
    options = dict(scale=args.scale, target_spacing=args.spacing, slice_axis=args.axis,
                   model=args.model, device=_device_for_rank(args.device), overwrite=args.overwrite,
                   tile_size=args.tile_size, halo=args.halo, skip_below=args.skip_below,
                   keep_acquired=args.keep_acquired, compile_model=args.compile,
                   output_format=args.output_format)
    options.update(_adapt_options(args, source))
    show = not args.no_progress and sys.stderr.isatty()
    if not source.is_dir() or _is_dicom_folder(source):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with progress_bar(source.name, enabled=show) as bar:
                    result = super_resolve_file(source, target, progress=bar, **options)
            finally:  # shown on failure too: a reader's warning may say why
                for warning in caught:
                    print(f"warning: {warning.message}", file=sys.stderr)
        if result.adaptation is not None:
            print(f"{target}: {result.adaptation.message()}")
        print(f"{target}: scale {result.scale:g} along axis {'KJI'[result.slice_axis]}, "
              f"model {result.model_name} on {result.device}")
        return 0
    rank, world = _rank_world()
    items = list_inputs(source)
    if args.output_format == "dicom":
        from ..dicom_out import check_dicom_inputs
        check_dicom_inputs(items)
    items = items[rank::world]
    destinations = check_batch_output(target, args.overwrite, source, items, args.format, args.output_format)
    if items:
        # one model for the whole batch: loaded once, and compiled once with --compile
        from ..api import pick_model
        from ..devices import resolve_device

        options["model"] = pick_model(args.model, resolve_device(options["device"]))
    failures = 0
    for item, destination in zip(items, destinations):
        try:
            with progress_bar(item.name, enabled=show) as bar:
                result = super_resolve_file(item, destination, progress=bar, **options)
            adapted = f" ({result.adaptation.message()})" if result.adaptation is not None else ""
            print(f"{destination}: done{adapted}")
        except Exception as error:  # one bad file must not stop an archive run
            failures += 1
            print(f"cycleinr: {item.name}: {error}", file=sys.stderr)
    if failures:
        print(f"cycleinr: error: {failures} of {len(items)} volumes failed (rank {rank})", file=sys.stderr)
        return 2
    return 0


def _adapt_options(args, source: Path) -> dict:
    """--adapt / --slice-thickness / --save-model as super_resolve_file options (checked here)."""
    from ..errors import InputError

    if args.adapt is None:
        if args.save_model or args.slice_thickness is not None:
            raise InputError("--save-model and --slice-thickness go with --adapt MINUTES")
        return {}
    if not args.adapt > 0:
        raise InputError(f"--adapt takes a positive number of minutes, got {args.adapt:g}")
    if args.save_model and source.is_dir() and not _is_dicom_folder(source):
        raise InputError("--save-model keeps one adapted model: give one input, not a folder")
    return dict(adapt_minutes=args.adapt, slice_thickness=args.slice_thickness, save_model=args.save_model,
                log=lambda line: print(line, file=sys.stderr, flush=True))


def _is_dicom_folder(folder: Path) -> bool:
    """A folder of DICOM slices is one input; a folder of volumes or series folders is a batch."""
    from ..volumes import is_volume_file
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    subfolders = [p for p in folder.iterdir() if p.is_dir()]
    return bool(files) and not subfolders and not any(is_volume_file(p) for p in files)
