"""cycleinr demo: super-resolve the bundled real thick-slice CT crop and draw a comparison.

The sample is a 256x256x36 crop of a real 5 mm / 2.5 mm-step chest CT (TCGA-THCA, CC BY 3.0).
It is taken to 1 mm slices (x2.5), and a PNG shows coronal and sagittal views of the input
(nearest slice, as a viewer shows thick slices), trilinear interpolation, and CycleINR.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import finite_float

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "tcga_thca_ct_chest_crop.nii.gz"


def add_arguments(parser) -> None:
    parser.add_argument("--output-dir", default="cycleinr-demo", help="where to write (default ./cycleinr-demo)")
    parser.add_argument("--spacing", type=finite_float, default=1.0, help="target slice spacing in mm (default 1)")
    parser.add_argument("--model", help="weights file (default: the bundled model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--overwrite", action="store_true", help="replace earlier demo outputs")
    parser.set_defaults(run=run)


def run(args) -> int:
    import SimpleITK as sitk

    from ..baselines import interpolate_image
    from ..figures_demo import comparison_png
    from ..jobs import super_resolve_file
    from ..progress import progress_bar
    from ..volumes import check_output_path, read_image, write_image

    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    result_path = folder / "sample_cycleinr.nii.gz"
    linear_path = folder / "sample_trilinear.nii.gz"
    picture_path = folder / "sample_comparison.png"
    for path in (result_path, linear_path):
        check_output_path(path, args.overwrite)
    if picture_path.exists() and not args.overwrite:
        check_output_path(folder / "sample_comparison.nii.gz", False)  # same rule, clear message
    image = read_image(SAMPLE)
    started = time.time()
    with progress_bar("demo", enabled=sys.stderr.isatty()) as bar:
        result = super_resolve_file(SAMPLE, result_path, target_spacing=args.spacing, model=args.model,
                                    device=args.device, overwrite=args.overwrite, progress=bar)
    seconds = time.time() - started
    linear = interpolate_image(image, target_spacing=args.spacing, method="linear")
    write_image(linear, linear_path, overwrite=args.overwrite)
    ours = sitk.ReadImage(str(result_path))
    comparison_png(image, linear, ours, result.scale, picture_path, title_model=result.model_name)
    print(f"input   {SAMPLE.name}: {image.GetSize()} voxels, spacing {_fmt(image.GetSpacing())} mm")
    print(f"output  {result_path}: {ours.GetSize()} voxels, spacing {_fmt(ours.GetSpacing())} mm "
          f"(x{result.scale:g}, model {result.model_name}, {result.device}, {seconds:.1f} s)")
    print(f"compare {linear_path} (trilinear) and {picture_path}")
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    return 0


def _fmt(spacing) -> str:
    return " x ".join(f"{s:.3g}" for s in spacing)
