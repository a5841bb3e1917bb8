"""Adapting a model to one volume: the fine_tune API and the ``cycleinr fit`` command."""
from __future__ import annotations

import threading

import pytest
import SimpleITK as sitk
import torch
from conftest import HEAD_CT, SAMPLE_CT

from cycleinr.cli import main
from cycleinr.errors import Cancelled
from cycleinr.finetune import fine_tune
from cycleinr.weights import load_model, save_model

SMALL = dict(batch_size=1, lr_slices=3, patch=16, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def thick_ct():
    """The real thick-slice chest CT crop (2.5 mm slices, 0.98 mm in-plane), [k, j, i]."""
    image = sitk.ReadImage(str(SAMPLE_CT))
    return sitk.GetArrayFromImage(image)[:, 96:160, 96:160].copy(), tuple(reversed(image.GetSpacing()))


@pytest.fixture
def tiny_weights(tmp_path, tiny_model):
    return save_model(tmp_path / "tiny.safetensors", tiny_model.network, tiny_model.info)


def test_fine_tune_returns_an_adapted_copy(thick_ct, tiny_model):
    volume, spacing = thick_ct
    before = {k: v.clone() for k, v in tiny_model.network.state_dict().items()}
    tuned = fine_tune(volume, spacing, tiny_model, scale=2.5, seconds=60, max_steps=3, **SMALL)
    after = tiny_model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the given model is untouched
    assert any(not torch.equal(before[k], v) for k, v in tuned.network.state_dict().items())
    record = tuned.info.provenance["fine_tuned"]
    assert record["steps"] == 3 and record["axes"] == [1, 2]  # the in-plane axes of a thick CT
    assert record["scales"] == [2.5]
    assert not tuned.network.training


def test_fine_tune_stops_on_time_and_on_cancel(thick_ct, tiny_model):
    volume, spacing = thick_ct
    tuned = fine_tune(volume, spacing, tiny_model, seconds=1e-3, **SMALL)
    assert tuned.info.provenance["fine_tuned"]["steps"] == 1  # at least one step, then the time is up
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        fine_tune(volume, spacing, tiny_model, seconds=60, cancel=stop, **SMALL)


def test_fit_command_writes_the_volume_and_the_tuned_model(tmp_path, tiny_weights, capsys):
    output, weights = tmp_path / "fit.nii.gz", tmp_path / "tuned.safetensors"
    code = main(["fit", str(HEAD_CT), str(output), "--scale", "2", "--model", str(tiny_weights),
                 "--steps", "2", "--minutes", "1", "--device", "cpu", "--save-model", str(weights)])
    assert code == 0, capsys.readouterr().err
    source, result = sitk.ReadImage(str(HEAD_CT)), sitk.ReadImage(str(output))
    assert result.GetSize()[2] == 2 * source.GetSize()[2] - 1
    assert result.GetOrigin() == source.GetOrigin()
    assert load_model(weights).info.provenance["fine_tuned"]["steps"] == 2
    assert "fine-tuned 2 steps" in capsys.readouterr().err


def test_fit_writes_nothing_when_it_fails(tmp_path, capsys):
    output = tmp_path / "fit.nii.gz"
    code = main(["fit", str(HEAD_CT), str(output), "--scale", "2", "--model", str(tmp_path / "missing.safetensors"),
                 "--steps", "1", "--device", "cpu"])
    assert code == 2 and "model file not found" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    output.write_bytes(b"keep")
    assert main(["fit", str(HEAD_CT), str(output), "--scale", "2", "--steps", "1"]) == 2
    assert "output exists" in capsys.readouterr().err and output.read_bytes() == b"keep"
