"""One module per ``cycleinr`` sub-command: ``add_arguments(parser)`` and ``run(args)``."""
import argparse
import math


def finite_float(text: str) -> float:
    """An argparse type: a float that is a number (``nan``, ``inf`` are refused, with the reason)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_scale_arguments(parser) -> None:
    """--scale | --spacing and --axis: how far and along which axis, the same for every command."""
    amount = parser.add_mutually_exclusive_group(required=True)
    amount.add_argument("--scale", type=finite_float, help="upsampling factor r > 1 (e.g. 5, 2.5)")
    amount.add_argument("--spacing", type=finite_float, help="target slice spacing in mm")
    parser.add_argument("--axis", choices=["I", "J", "K", "i", "j", "k"],
                        help="slice axis as an image index letter (default: the coarsest spacing)")
