"""Batch super-resolution inside Slicer, without a window:

    Slicer --no-main-window --python-script cycleinr_batch.py --input thick.nrrd --output thin.nrrd --scale 5

Loads the input with Slicer's readers, runs the CycleINRSR logic (the same path as the GUI),
saves the output with Slicer's writers, and exits with 0 on success, 2 on bad arguments or a
failed job. Messages go to stderr as one line each. Slicer reads --help/-h itself: for this
script's help put "--" first (``... --python-script cycleinr_batch.py -- --help``).
"""
import argparse
import os
import sys


def parseArguments(argv):
    parser = argparse.ArgumentParser(prog="cycleinr_batch.py", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="volume file Slicer can read (NRRD, NIfTI, MHA, ...)")
    parser.add_argument("--output", required=True, help="output volume file (.nrrd, .nii.gz, ...)")
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--scale", type=float, help="upsampling factor r > 1")
    amount.add_argument("--spacing", type=float, help="target slice spacing in mm")
    parser.add_argument("--model", help="weights file (.safetensors); default: the bundled model")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--axis", choices=["I", "J", "K"], help="slice axis (default: coarsest spacing)")
    parser.add_argument("--tile-size", type=int, help="tile core size in voxels")
    parser.add_argument("--adapt", type=float, metavar="MINUTES",
                        help="adapt the model to this scan for MINUTES first (kept only if it helps)")
    parser.add_argument("--slice-thickness", type=float, metavar="MM",
                        help="with --adapt: slice thickness (default: measured from a CT scan, see cycleinr.slice_profile)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return parser.parse_args(argv)


def run(argv):
    import slicer
    args = parseArguments(argv)
    if os.path.exists(args.output) and not args.overwrite:
        raise ValueError(f"output exists: {args.output} (use --overwrite)")
    from CycleINRSR import CycleINRSRLogic
    inputNode = slicer.util.loadVolume(args.input)
    logic = CycleINRSRLogic()
    logic.ensureDependencies(askConfirmation=False)
    lastShown = [-1]

    def progress(fraction):
        percent = int(fraction * 100)
        if percent >= lastShown[0] + 10 or percent == 100:
            lastShown[0] = percent
            print(f"{os.path.basename(args.input)}: {percent}%", flush=True)

    outputNode = logic.superResolve(inputNode, scale=args.scale, targetSpacing=args.spacing,
                                    device=args.device, model=args.model, sliceAxis=args.axis,
                                    tileSize=args.tile_size, progress=progress, showResult=False,
                                    adaptMinutes=args.adapt, sliceThickness=args.slice_thickness,
                                    status=lambda message: print(message, flush=True))
    if not slicer.util.saveNode(outputNode, args.output):
        raise RuntimeError(f"cannot write {args.output}")
    print(f"{args.output}: {' x '.join(str(n) for n in outputNode.GetImageData().GetDimensions())} voxels, "
          f"spacing {' x '.join(f'{s:.4g}' for s in outputNode.GetSpacing())} mm", flush=True)


def main():
    try:
        run(sys.argv[1:])
        status = 0
    except SystemExit as stop:  # argparse: --help or bad arguments
        status = int(stop.code or 0) and 2
    except Exception as error:  # noqa: BLE001 - one line for the log, an exit code for the caller
        print(f"cycleinr_batch: error: {error}", file=sys.stderr, flush=True)
        status = 2
    try:
        import slicer
        slicer.util.exit(status)  # lets Slicer finish its pending events, then exit with status
    except Exception:  # noqa: BLE001 - no Slicer application to ask: the status must still get out
        sys.exit(status)


main()
