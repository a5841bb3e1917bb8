"""cycleinr model-info FILE: what a weights file says it is."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="weights file (default: the bundled model)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..bundled import model_path
    from ..weights import describe

    print(describe(model_path(args.model)))
    return 0
