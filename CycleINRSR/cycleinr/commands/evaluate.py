"""cycleinr eval --data DIR_OR_FILES --scales 2 3 5 [--degrade interval|slab] --methods trilinear cubic cycleinr[=MODEL]

Thin-slice inputs: thick volumes are made from them (every p-th slice, or slab means), each method
super-resolves back, and the result is scored against the thin slices on the original grid.
Real thick inputs (no ground truth): each method super-resolves by each scale and what can be
measured is reported, the SNLI of the result and its cycle error against the input.
Writes a Table-1-shaped Markdown table, a CSV, PNG figures and (with --json) a JSON summary.
"""
from __future__ import annotations

import sys
from pathlib import Path

from . import finite_float


def thickness_value(text: str):
    """A thickness in mm, or 'spacing'."""
    if text == "spacing":
        return text
    return finite_float(text)


def add_arguments(parser) -> None:
    parser.add_argument("--data", nargs="+", required=True, metavar="PATH",
                        help="volume files, DICOM series folders, or folders of these")
    parser.add_argument("--scales", nargs="+", type=finite_float, default=[2.0, 3.0, 5.0], metavar="R",
                        help="scales to evaluate (default 2 3 5); fractional ones such as 2.5 are made "
                             "from every 5th slice and scored on every 2nd")
    parser.add_argument("--degrade", default="interval", choices=["interval", "slab"],
                        help="how thick slices are made from thin ones: interval sampling (the paper) "
                             "or slab averaging (like a scanner's thick reconstruction)")
    parser.add_argument("--methods", nargs="+", default=["trilinear", "cubic", "cycleinr"], metavar="M",
                        help="trilinear, cubic (B-spline), nearest, cycleinr (bundled model), "
                             "cycleinr=MODEL.safetensors; cycleinr-regenerate[=MODEL] (acquired slices "
                             "regenerated too), cycleinr-skip[=MODEL] (with --skip-below), "
                             "cycleinr-adapt=MINUTES[:MODEL] (adapt to each input first, as --adapt)")
    parser.add_argument("--skip-below", type=finite_float, default=-900.0, metavar="VALUE",
                        help="for cycleinr-skip: voxels whose LR neighbours are all below VALUE (input "
                             "units) are interpolated, not run through the network (default -900: CT air)")
    parser.add_argument("--slice-thickness", type=thickness_value, metavar="MM",
                        help="for cycleinr-adapt: the thick slices' thickness for the slice profile, or "
                             "'spacing' (contiguous: the thick slices' spacing at each scale, the true "
                             "thickness of --degrade slab) (default: measured from a CT scan, as "
                             "super-resolve --adapt does for NIfTI/NRRD)")
    parser.add_argument("--adapt-clock", default="wall", choices=["wall", "cpu"],
                        help="for cycleinr-adapt: count the minutes in wall time (as --adapt does) or in this "
                             "process's CPU time (steady figures on a busy shared machine; with "
                             "OMP_NUM_THREADS=1, minutes of one core)")
    parser.add_argument("--modality", default="auto", choices=["auto", "ct", "mr"],
                        help="CT: window [-1024, 3071] HU; MR: [min, 99.9th percentile] of the reference "
                             "(auto: CT when the darkest voxels are air in HU)")
    parser.add_argument("--axis", choices=["I", "J", "K", "i", "j", "k"],
                        help="slice axis as an image index letter (default: the coarsest spacing)")
    parser.add_argument("--kind", default="auto", choices=["auto", "thin", "thick"],
                        help="thin: degrade and compare with the original; thick: a real thick "
                             "acquisition with no ground truth (auto: thick when the slice spacing is "
                             "more than twice the finest in-plane spacing)")
    parser.add_argument("--no-lpips", action="store_true", help="do not compute LPIPS")
    parser.add_argument("--lpips-weights", metavar="DIR",
                        help="folder holding torchvision's ImageNet backbone files (default: "
                             "$CYCLEINR_LPIPS_WEIGHTS or torch's hub cache)")
    parser.add_argument("--out", default="cycleinr_eval", help="folder for the table, CSV and figures")
    parser.add_argument("--json", metavar="FILE", help="also write the summary as JSON")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.set_defaults(run=run)


def _inputs(paths: list[str]) -> list[Path]:
    from ..errors import InputError
    from ..jobs import list_inputs
    from .super_resolve import _is_dicom_folder

    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise InputError(f"input not found: {path}")
        found.extend(list_inputs(path) if path.is_dir() and not _is_dicom_folder(path) else [path])
    return found


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_thick(spacing, axis: int, kind: str) -> bool:
    if kind != "auto":
        return kind == "thick"
    in_plane = min(s for a, s in enumerate(spacing) if a != axis)
    return spacing[axis] > 2.0 * in_plane


def _generated_index(count: int, is_original) -> int:
    """The output slice nearest the middle that no method copies from the input."""
    middle = count // 2
    for offset in range(count):
        for index in (middle + offset, middle - offset):
            if 0 <= index < count and not is_original(index):
                return index
    return middle


def run(args) -> int:
    import SimpleITK as sitk

    from .. import evaluate as protocol
    from .. import figures, metrics
    from ..api import slice_axis_of_image
    from ..eval_report import Results
    from ..geometry import choose_slice_axis
    from ..volumes import check_readable, read_image

    inputs = _inputs(args.data)
    for path in inputs:
        check_readable(path)  # a damaged volume among several is refused before any work
    methods = dict(protocol.method_from_spec(spec, args.device, args.skip_below, args.slice_thickness,
                                             log=lambda line: print(line, file=sys.stderr, flush=True),
                                             adapt_options={"clock": args.adapt_clock})
                   for spec in args.methods)
    for scale in args.scales:
        protocol.exact_ratio(scale)  # fail before any work on a scale without ground truth
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lpips = () if args.no_lpips else metrics.LPIPS_BACKBONES
    thin_results, thick_results = Results(), Results()
    references: list[str] = []
    for path in inputs:
        image = read_image(path)
        volume = sitk.GetArrayFromImage(image)
        spacing = tuple(reversed(image.GetSpacing()))
        axis = choose_slice_axis(spacing, slice_axis_of_image(args.axis.upper() if args.axis else None))
        modality = metrics.guess_modality(volume) if args.modality == "auto" else args.modality
        name = _volume_name(path)
        thick = _is_thick(spacing, axis, args.kind)
        print(f"{name}: {'real thick' if thick else 'thin'} {modality.upper()}, shape {volume.shape}, "
              f"slice axis {'KJI'[axis]} ({spacing[axis]:g} mm)", file=sys.stderr)
        for scale in args.scales:
            label = protocol.scale_label(scale)
            if thick:
                scores, outputs = protocol.evaluate_thick(volume, spacing, scale, methods, modality, axis)
                for method, entry in scores.items():
                    thick_results.add(name, scale, method, entry)
                snli = protocol.reference_snli(volume, modality, axis)
                references.append(f"{name} (input, {label}): SNLI {_text(snli)}")
                shown, grid_spacing = outputs, list(spacing)
                grid_spacing[axis] /= scale
                index = _generated_index(next(iter(outputs.values())).shape[axis],
                                         lambda j: abs(j / scale - round(j / scale)) < 1e-6)
            else:
                degraded = protocol.degrade(volume, spacing, scale, args.degrade, axis)
                window = metrics.intensity_range(degraded.truth, modality)
                outputs = protocol.run_methods(degraded, methods)
                for method, output in outputs.items():
                    thin_results.add(name, scale, method, protocol.score(
                        degraded.truth, output, modality, axis, window, lpips, args.lpips_weights,
                        "cpu"))
                snli = protocol.reference_snli(degraded.truth, modality, axis)
                references.append(f"{name} (thin ground truth, {label}): SNLI {_text(snli)}")
                thick_view = protocol.interpolation_method("nearest")(
                    degraded.thick, degraded.thick_spacing, degraded.scale, axis)
                shown = {"ground truth": degraded.truth, "thick input": thick_view, **outputs}
                grid_spacing = degraded.truth_spacing
                ratio = protocol.exact_ratio(scale)
                index = _generated_index(degraded.truth.shape[axis],
                                         lambda j: (j * ratio.denominator) % ratio.numerator == 0)
            if not args.no_figures:
                figure = out / f"{name}_{label}_{'thick' if thick else args.degrade}.png"
                figures.comparison_figure(shown, grid_spacing, axis, index,
                                          figures.display_window(volume, modality), figure,
                                          title=f"{name} {label} ({'real thick input' if thick else args.degrade})")
            print(f"{name} {label}: done", file=sys.stderr)
    _write(thin_results, out / f"eval_{args.degrade}", f"thin-slice volumes, {args.degrade} degradation",
           args, references)
    _write(thick_results, out / "eval_thick", "real thick inputs (no ground truth)", args, references)
    return 0


def _text(value) -> str:
    return "n/c" if value is None else f"{value:.4f}"


def _write(results, stem: Path, title: str, args, references: list[str]) -> None:
    """The Markdown table (also printed), the CSV, the JSON if asked, and the metric plot."""
    from .. import figures
    from ..eval_report import markdown_table, write_csv, write_json
    from ..output_files import write_text_atomically

    if not results.rows:
        return
    table = markdown_table(results, title)
    relevant = [line for line in references if ("thin ground truth" in line) != ("thick" in stem.name)]
    if relevant:
        table += "\nReference levels:\n" + "".join(f"- {line}\n" for line in relevant)
    write_text_atomically(table, stem.with_suffix(".md"))
    write_csv(results, stem.with_suffix(".csv"))
    if args.json:
        json_path = Path(args.json)
        if "thick" in stem.name:
            json_path = json_path.with_name(json_path.stem + "_thick" + json_path.suffix)
        write_json(results, json_path)
    if not args.no_figures:
        figures.metric_plot(results.summary(), results.metric_names(), stem.with_name(stem.name + "_vs_scale.png"),
                            title=title)
    print(table)
