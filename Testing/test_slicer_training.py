"""The CycleINRTraining Slicer module on Slicer's own MRML (slicer-core; its panel on the Qt
stand-in): fine-tune and train through its Logic and panel, on real CT crops loaded by Slicer's
volumes logic, with the UNTRAINED tiny test model and a few steps (plumbing only)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import HEAD_CT


@pytest.fixture
def training_module(mrml):
    import CycleINRTraining
    from slicer.ScriptedLoadableModule import createModule
    if not hasattr(mrml.modules, "cycleinrtraining"):
        createModule(CycleINRTraining.CycleINRTraining)
    return mrml, CycleINRTraining


@pytest.mark.slow
def test_fine_tune_on_volume_node_saves_model_and_leaves_volume(training_module, tiny_model_file, tmp_path):
    slicer, module = training_module
    from cycleinr.weights import load_model
    head = slicer.util.loadVolume(str(HEAD_CT))
    before = slicer.util.arrayFromVolume(head).copy()
    fractions = []
    saved = module.CycleINRTrainingLogic().fineTuneOnVolume(
        head, str(tmp_path / "tuned.safetensors"), model=tiny_model_file, seconds=60, maxSteps=2,
        device="cpu", progress=fractions.append)
    loaded = load_model(saved)
    assert loaded.name.endswith("fine-tuned on invesalius_head_ct_crop")
    assert fractions and 0 < fractions[-1] <= 1.0
    assert np.array_equal(slicer.util.arrayFromVolume(head), before)
    with pytest.raises(ValueError, match=".safetensors"):
        module.CycleINRTrainingLogic().fineTuneOnVolume(head, str(tmp_path / "tuned.pt"))


def test_train_headless_on_volume_nodes(training_module, tmp_path):
    slicer, module = training_module
    head = slicer.util.loadVolume(str(HEAD_CT))
    final = module.CycleINRTrainingLogic().trainOnVolumeNodes(
        [head], str(tmp_path / "run"), preset="tiny", steps=2, steps_per_epoch=2, batch_size=1,
        patch=16, lr_slices=4, device="cpu", name="tiny-run")
    assert final.endswith(".safetensors")
    from cycleinr.weights import read_model_info
    assert read_model_info(final).config.decoder_width == 16


def test_training_panel_fine_tunes_from_the_button(training_module, tiny_model_file, tmp_path):
    slicer, module = training_module
    from slicer.ScriptedLoadableModule import createWidget
    slicer.util.loadVolume(str(HEAD_CT))
    widget = createWidget(module.CycleINRTrainingWidget)
    assert widget.inputSelector.currentNode() is not None
    widget.baseModelEdit.text = tiny_model_file
    widget.outputModelEdit.text = str(tmp_path / "panel.safetensors")
    widget.secondsSpinBox.value = 1
    widget.runButton.click()
    assert (tmp_path / "panel.safetensors").exists()
    assert widget.runButton.text == "Fine-tune" and widget.statusLabel.text.startswith("Saved")
