"""torch.compile for the engine's two hot paths (the encoder and the decoder MLP), opt-in.

Off by default, because it did not pay where it was measured, on the 2-core CPU machine with
the bundled model: ``cycleinr bench`` (512x512x64 at x5) took 85 s eager and 100 s compiled, and
the compiler's memory raised the host peak from 1.28 to 1.59 GiB (over the issue's target);
on 160x160x16 at x5, one thread, four runs each, same output bit for bit, eager took 3.0-3.1 s,
a compiled encoder 2.9-3.4 s, a compiled decoder 3.2-3.3 s, both 3.0-3.6 s. A profile says why:
oneDNN convolutions and GEMMs are 80 % of the time, little element-wise work is left to fuse.
On a GPU a whole job takes seconds, so a compilation that costs tens of seconds pays only in a
long-running process (a batch of volumes); ``cycleinr bench --compile`` measures it there.

A compilation can fail (no C++ compiler, an unsupported operator, a new torch). Then the
engine warns once, names the error in the result's notes, and goes on uncompiled: the values
are the same up to float summation order.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import Cancelled
from .model import CycleINR
from .slice_query import decode_latents


class CompileWarning(UserWarning):
    """torch.compile failed and the engine went on uncompiled."""


class CompiledOrEager:
    """A torch.compile'd function that falls back, once and for good, to the eager one."""

    def __init__(self, function: Callable, label: str, notes: list[str] | None = None) -> None:
        self.eager = function
        self.label = label
        self.notes = notes if notes is not None else []
        self.error: BaseException | None = None
        try:
            # dynamic: tiles and decoder chunks change size; one graph serves them all
            self.compiled = torch.compile(function, dynamic=True)
        except Exception as error:  # noqa: BLE001 - any failure means: run eager, and say so
            self._fall_back(error)

    def _fall_back(self, error: BaseException) -> None:
        self.error = error
        message = (f"torch.compile failed for the {self.label} ({type(error).__name__}: "
                   f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no message'}); "
                   "running it uncompiled")
        warnings.warn(message, CompileWarning, stacklevel=3)
        self.notes.append(message)

    def __call__(self, *args, **kwargs):
        if self.error is None:
            try:
                return self.compiled(*args, **kwargs)
            except (Cancelled, KeyboardInterrupt, MemoryError, torch.cuda.OutOfMemoryError):
                raise
            except Exception as error:  # noqa: BLE001 - the functions are pure: rerun eagerly
                self._fall_back(error)
        return self.eager(*args, **kwargs)


@dataclass
class HotPaths:
    """The functions the engine calls per tile: plain, or compiled with a fallback."""

    encode: Callable
    decode: Callable
    compiled: bool


def hot_paths(model: CycleINR, compile_model: bool, notes: list[str] | None = None) -> HotPaths:
    if not compile_model:
        return HotPaths(model.encode, decode_latents, False)
    return HotPaths(CompiledOrEager(model.encode, "encoder", notes),
                    CompiledOrEager(decode_latents, "decoder", notes), True)
