"""cycleinr fit INPUT OUTPUT --scale R: fine-tune a model on the input's own in-plane data, then
super-resolve the input with it. Nothing is written unless the whole job succeeds.

``cycleinr super-resolve IN OUT --scale R --adapt [MINUTES]`` does this with the scan's own slice
profile and a held-back check that keeps the base model when adapting does not help."""
from __future__ import annotations

import sys
from pathlib import Path

from . import add_scale_arguments, finite_float


def add_arguments(parser) -> None:
    parser.add_argument("input", help="volume file (.nii/.nii.gz/.nrrd/.mha/.mhd) or DICOM series folder")
    parser.add_argument("output", help="output file (.nii/.nii.gz/.nrrd/.mha)")
    add_scale_arguments(parser)
    parser.add_argument("--model", help="weights to start from (default: the bundled model)")
    parser.add_argument("--minutes", type=finite_float, default=2.0, help="fine-tuning time limit (default 2)")
    parser.add_argument("--steps", type=int, help="stop after this many steps if sooner")
    parser.add_argument("--lr", type=finite_float, default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--no-cycle", action="store_true", help="fine-tune with the L1 term only")
    parser.add_argument("--degrade", nargs="+", choices=["interval", "slab"], default=["interval", "slab"],
                        help="how LR in-plane pairs are made (default both)")
    parser.add_argument("--save-model", help="also write the fine-tuned weights here (.safetensors)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args) -> int:
    import SimpleITK as sitk

    from ..errors import ModelError
    from ..finetune import fine_tune
    from ..jobs import check_not_into_input, expected_output, super_resolve_file
    from ..volumes import check_output_path, read_image
    from ..weights import save_model

    check_not_into_input(args.input, args.output)
    check_output_path(args.output, args.overwrite)  # fail before minutes of fine-tuning
    if args.save_model:
        if not args.save_model.endswith(".safetensors"):
            raise ModelError(f"--save-model must end in .safetensors, got {args.save_model}")
        check_output_path(args.save_model, args.overwrite, suffixes=(".safetensors",))
    image = read_image(args.input)
    grid = expected_output(image, args.scale, args.spacing, args.axis)
    volume = sitk.GetArrayFromImage(image)
    spacing = tuple(reversed(image.GetSpacing()))
    tuned = fine_tune(volume, spacing, args.model, scale=grid.scale, seconds=args.minutes * 60,
                      max_steps=args.steps, slice_axis=grid.slice_axis, lr=args.lr,
                      cycle_weight=0.0 if args.no_cycle else 1.0, degrade=args.degrade, seed=args.seed,
                      device=args.device, log=lambda message: print(message, file=sys.stderr, flush=True))
    del volume, image
    super_resolve_file(args.input, args.output, scale=grid.scale, slice_axis=grid.slice_axis,
                       overwrite=args.overwrite, model=tuned, device=args.device)
    if args.save_model:
        save_model(args.save_model, tuned.network, tuned.info)
    print(args.output)
    return 0
