"""The ``cycleinr`` command line: one sub-command per module in ``cycleinr.commands``.

Each command module has ``add_arguments(parser)`` and ``run(args) -> int``; modules are imported
only when their command runs, so ``cycleinr --help`` is fast. Any failure ends with a one-line
reason on stderr and a non-zero exit code (2: bad input/model/output, 1: unexpected, 130: cancelled
or SIGINT, 143: SIGTERM, 129: SIGHUP; temporary files are removed on the way out).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
import warnings

COMMANDS = {
    "super-resolve": ("cycleinr.commands.super_resolve", "super-resolve a volume or a folder of volumes"),
    "demo": ("cycleinr.commands.demo", "super-resolve the bundled real CT sample and draw a comparison PNG"),
    "bench": ("cycleinr.commands.bench", "time the engine against SimpleITK resampling and the FLOP floor"),
    "eval": ("cycleinr.commands.evaluate", "the paper's evaluation protocol: PSNR, SSIM, LPIPS, SNLI"),
    "train": ("cycleinr.commands.train", "train or resume a model on thin-axis patches (torchrun for DDP)"),
    "fit": ("cycleinr.commands.fit", "fine-tune a model on one volume's own in-plane data, then super-resolve it"),
    "model-info": ("cycleinr.commands.model_info", "print the description stored in a weights file"),
}


def build_parser(available: dict[str, object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cycleinr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in available.items():
        help_text = COMMANDS[name][1]
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
    return parser


def _version() -> str:
    from . import __version__
    return f"cycleinr {__version__}"


def _load_commands(argv: list[str]) -> dict[str, object]:
    """Import the asked command only (all of them for --help)."""
    wanted = [arg for arg in argv if arg in COMMANDS][:1] or list(COMMANDS)
    modules = {}
    for name in COMMANDS:
        if name in wanted:
            try:
                modules[name] = importlib.import_module(COMMANDS[name][0])
            except ModuleNotFoundError as error:
                if error.name and error.name.startswith("cycleinr.commands"):
                    continue  # command not built yet in this checkout
                raise
    return modules


def main(argv: list[str] | None = None) -> int:
    from .errors import Cancelled, CycleINRError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_load_commands(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    warnings.formatwarning = lambda message, category, *rest: f"warning: {message}\n"
    previous = _stop_on_signals()
    try:
        return int(args.run(args) or 0)
    except Cancelled as error:
        print(f"cycleinr: cancelled: {error}", file=sys.stderr)
        return 130
    except Interrupted as stop:
        print(f"cycleinr: interrupted by {stop.name}; no output was written for the unfinished job",
              file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("cycleinr: interrupted", file=sys.stderr)
        return 130
    except CycleINRError as error:
        print(f"cycleinr: error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print("cycleinr: error: out of memory (try a smaller tile size or scale)", file=sys.stderr)
        return 2
    except Exception as error:  # the one-line promise holds for the unexpected too
        if args.verbose:
            raise
        print(f"cycleinr: internal error: {type(error).__name__}: {error} (rerun with -v for details)",
              file=sys.stderr)
        return 1
    finally:
        _restore_signals(previous)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C, so every temporary file and claim is removed on
    the way out (the writers' ``finally`` blocks) before the one-line message and exit 128+N."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _on_stop_signal(signum, frame):
    for number in _STOP_SIGNALS:  # the clean-up on the way out must not be cut short by a second signal
        signal.signal(number, signal.SIG_IGN)
    raise Interrupted(signum)


def _stop_on_signals() -> dict:
    previous = {}
    if threading.current_thread() is not threading.main_thread():
        return previous  # handlers can only be set from the main thread (main() called from a thread)
    for number in _STOP_SIGNALS:
        handler = signal.getsignal(number)
        if number != signal.SIGINT and handler is signal.SIG_IGN:
            continue  # e.g. SIGHUP ignored under nohup: keep it so
        previous[number] = handler
        signal.signal(number, _on_stop_signal)
    return previous


def _restore_signals(previous: dict) -> None:
    for number, handler in previous.items():
        signal.signal(number, handler if handler is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
