"""torch.compile in the engine: opt-in, same values, and a failed compilation falls back loudly."""
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cycleinr import Cancelled, super_resolve
from cycleinr.compiled import CompiledOrEager, CompileWarning, hot_paths
from conftest import HEAD_CT


@pytest.fixture(scope="module")
def thick_head():
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(HEAD_CT)))
    return np.ascontiguousarray(volume[::3, :36, :40])


def _broken_compile(reason):
    """A stand-in for torch.compile on a machine where compiling fails when first called."""
    def compile_(function, **_options):
        def compiled(*args, **kwargs):
            raise RuntimeError(reason)
        return compiled
    return compile_


def test_failed_compilation_warns_and_gives_the_uncompiled_result(thick_head, tiny_model, monkeypatch):
    eager = super_resolve(thick_head, (4.5, 0.957, 0.957), scale=3, model=tiny_model, device="cpu")
    monkeypatch.setattr(torch, "compile", _broken_compile("InductorError: no working C++ compiler"))
    with pytest.warns(CompileWarning, match="torch.compile failed for the encoder"):
        fallen_back = super_resolve(thick_head, (4.5, 0.957, 0.957), scale=3, model=tiny_model,
                                    device="cpu", compile_model=True)
    np.testing.assert_array_equal(fallen_back.array, eager.array)
    said = " ".join(fallen_back.warnings)
    assert "encoder" in said and "decoder" in said and "no working C++ compiler" in said
    assert "running it uncompiled" in said
    assert not eager.warnings


def test_compile_that_raises_at_once_also_falls_back(monkeypatch):
    def refuses(function, **_options):
        raise RuntimeError("torch.compile is not supported on this Python")
    monkeypatch.setattr(torch, "compile", refuses)
    notes = []
    with pytest.warns(CompileWarning):
        wrapped = CompiledOrEager(lambda value: value * 2, "decoder", notes)
    assert wrapped(3) == 6 and wrapped.error is not None
    assert notes == ["torch.compile failed for the decoder (RuntimeError: torch.compile is not supported "
                     "on this Python); running it uncompiled"]


def test_cancel_is_not_mistaken_for_a_compile_failure(monkeypatch):
    """Cancelling must stop the job, not switch it to eager mode and carry on."""
    monkeypatch.setattr(torch, "compile", lambda function, **_options: function)

    def stops(_value):
        raise Cancelled("cancelled by the user")
    wrapped = CompiledOrEager(stops, "encoder", [])
    with pytest.raises(Cancelled):
        wrapped(1)
    assert wrapped.error is None


def test_compile_is_off_unless_asked(tiny_model):
    paths = hot_paths(tiny_model.network, compile_model=False)
    assert not paths.compiled and not isinstance(paths.encode, CompiledOrEager)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler, none found")
def test_compiled_engine_gives_the_same_values(thick_head, tiny_model):
    eager = super_resolve(thick_head, (4.5, 0.957, 0.957), scale=2.5, model=tiny_model, device="cpu")
    compiled = super_resolve(thick_head, (4.5, 0.957, 0.957), scale=2.5, model=tiny_model, device="cpu",
                             compile_model=True, tile_size=(5, 20, 24))
    assert not compiled.warnings, compiled.warnings  # it really compiled, no fallback
    assert np.abs(compiled.array.astype(float) - eager.array.astype(float)).max() <= 1  # HU, int16 rounding
