"""cycleinr model-info FILE: what a weights file says it is."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("model", nargs="?", help="weights file (default: the bundled model)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..weights import default_model_path, describe

    print(describe(args.model or default_model_path()))
    return 0
