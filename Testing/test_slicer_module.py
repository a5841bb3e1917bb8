"""The CycleINRSR Slicer module, run for real against the Slicer 5.8 stand-in (Testing/slicer_standin).

The module's own Widget and Logic code runs unchanged: the panel is loaded from its .ui file into
real PySide6 widgets (offscreen), volumes are real VTK image data, and every job runs the real
``cycleinr.worker`` process on real CT/MR crops. The model is the UNTRAINED tiny test network
saved to a temporary file: these tests check plumbing and geometry, never image quality.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ENGINE_DIR, HEAD_CT, OBLIQUE_MR, REPO, SAMPLE_CT

STANDIN = REPO / "Testing" / "slicer_standin"
BATCH_SCRIPT = ENGINE_DIR / "Resources" / "Scripts" / "cycleinr_batch.py"


@pytest.fixture(scope="module")
def slicer_env():
    """Import the stand-in and the module as Slicer would (module folder on sys.path)."""
    for path in (str(STANDIN), str(ENGINE_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    import slicer
    from slicer.ScriptedLoadableModule import createModule

    import CycleINRSR
    if not hasattr(slicer.modules, "cycleinrsr"):
        createModule(CycleINRSR.CycleINRSR)
    return slicer, CycleINRSR


@pytest.fixture(scope="module")
def tiny_model_file(tiny_model, tmp_path_factory):
    from cycleinr import save_model
    return str(save_model(tmp_path_factory.mktemp("model") / "tiny_untrained.safetensors",
                          tiny_model.network, tiny_model.info))


@pytest.fixture
def scene(slicer_env, monkeypatch):
    slicer, module = slicer_env
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker processes share 2 cores with everyone
    slicer.mrmlScene.Clear(True)
    slicer.util.displayedMessages.clear()
    slicer.util.sliceViewerLayers.clear()
    slicer.util.pipInstalled.clear()
    slicer.util.confirmAnswer = True
    return slicer, module



def test_stand_in_removes_its_temporary_folder_at_exit(tmp_path):
    """A Python session that imported the stand-in leaves no slicer-standin-* folder behind."""
    code = "import slicer, os; print(slicer.app.temporaryPath); assert os.path.isdir(slicer.app.temporaryPath)"
    environment = dict(os.environ, PYTHONPATH=str(STANDIN), QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("slicer-standin-") and not folder.exists()

def matrix_of(node):
    import vtk
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def wait_for(widget, slicer, condition, timeout=120.0):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out waiting for the worker")
        slicer.app.processEvents()
        time.sleep(0.02)


def make_widget(slicer, module):
    from slicer.ScriptedLoadableModule import createWidget
    return createWidget(module.CycleINRSRWidget)


def volume_names(slicer):
    return sorted(n.GetName() for n in slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode"))


# --- the panel -----------------------------------------------------------------------------------
def test_panel_keeps_scale_and_spacing_in_step_and_in_the_parameter_node(scene, tiny_model_file):
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))  # 0.957 x 0.957 x 1.5 mm, 96 x 96 x 48
    widget = make_widget(slicer, module)
    ui, parameters = widget.ui, widget._parameterNode
    assert ui.inputSelector.currentNode() is head  # first volume picked for the user
    assert ui.outputSelector.currentNode() is None and ui.outputSelector.comboBox().currentText() == "Create new volume"
    assert ui.applyButton.enabled  # the bundled model is picked when none is chosen
    assert "cycleinr_ct_cpu" in ui.modelInfoLabel.text

    ui.modelPathLineEdit.currentPath = tiny_model_file
    assert parameters.modelPath == tiny_model_file
    assert ui.applyButton.enabled and "Trained range 2\u20136" in ui.trainedRangeLabel.text

    ui.scaleSliderWidget.value = 2.5
    assert parameters.scale == pytest.approx(2.5)
    assert ui.targetSpacingSpinBox.value == pytest.approx(0.6)
    ui.targetSpacingSpinBox.value = 0.5
    assert parameters.scale == pytest.approx(3.0) and ui.scaleSliderWidget.value == pytest.approx(3.0)
    assert "96 \u00d7 96 \u00d7 142 voxels" in ui.infoLabel.text  # floor((48 - 1) * 3) + 1
    assert "0.5 mm" in ui.infoLabel.text
    ui.scaleSliderWidget.value = 8.0
    assert "outside it" in ui.trainedRangeLabel.text
    ui.targetSpacingSpinBox.value = 0.05  # 30x: clamped to the slider's 10x
    assert parameters.scale == pytest.approx(10.0) and parameters.targetSpacing == pytest.approx(0.15)

    ui.deviceComboBox.currentIndex = ui.deviceComboBox.findText("cpu")
    ui.sliceAxisComboBox.currentIndex = ui.sliceAxisComboBox.findText("J")
    ui.tileSizeSpinBox.value = 32
    assert ui.keepAcquiredCheckBox.checked and parameters.keepAcquired
    ui.keepAcquiredCheckBox.checked = False
    assert parameters.keepAcquired is False
    node = parameters.parameterNode  # what is saved with the scene
    assert node.GetParameter("device") == "cpu" and node.GetParameter("sliceAxis") == "J"
    assert node.GetParameter("tileSize") == "32" and float(node.GetParameter("scale")) == pytest.approx(10.0)
    assert node.GetNodeReferenceID("inputVolume") == head.GetID()
    # a script changing the parameter node moves the widgets
    parameters.scale = 4.0
    assert ui.scaleSliderWidget.value == pytest.approx(4.0)
    assert "J)" in ui.infoLabel.text or "along J" in ui.infoLabel.text


def test_super_resolve_button_runs_worker_and_adds_oblique_output(scene, tiny_model_file):
    """Click Super-resolve on the oblique MR: responsive run, new node with the engine's geometry."""
    slicer, module = scene
    mr = slicer.util.loadVolume(str(OBLIQUE_MR))
    mr.GetDisplayNode().SetWindowLevel(321.0, 123.0)
    before = slicer.util.arrayFromVolume(mr).copy()
    matrix_before = matrix_of(mr)
    widget = make_widget(slicer, module)
    widget._parameterNode.modelPath = tiny_model_file
    widget._parameterNode.scale = 2.0
    fractions = []
    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text == "Cancel" and widget.ui.progressBar.isVisibleTo(widget.parent)
    assert not widget.ui.inputsCollapsibleButton.enabled
    job = widget._job
    job_progress = job.progressCallback
    job.progressCallback = lambda f: (fractions.append(f), job_progress(f))
    wait_for(widget, slicer, lambda: widget._job is None)

    assert job.state == "done", job.error
    assert widget.ui.applyButton.text == "Super-resolve" and not widget.ui.progressBar.isVisibleTo(widget.parent)
    assert fractions and fractions[-1] == 1.0
    output = slicer.mrmlScene.GetFirstNodeByName(mr.GetName() + "_x2")
    assert output is not None and output is job.outputVolumeNode
    # geometry: first slice centre and directions kept, slice column divided by the scale
    expected = matrix_before.copy()
    expected[:3, 2] /= 2.0
    assert np.allclose(matrix_of(output), expected, atol=1e-4)
    result = slicer.util.arrayFromVolume(output)
    assert result.shape == ((before.shape[0] - 1) * 2 + 1,) + before.shape[1:]
    assert result.dtype == before.dtype
    # the input is untouched
    assert np.array_equal(slicer.util.arrayFromVolume(mr), before)
    assert np.allclose(matrix_of(mr), matrix_before)
    # display, hierarchy, views
    display = output.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (321.0, 123.0)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemParent(sh.GetItemByDataNode(output)) == sh.GetItemParent(sh.GetItemByDataNode(mr))
    assert slicer.util.sliceViewerLayers[-1]["background"] is output
    assert "Done in" in widget.ui.statusLabel.text
    # voxel for voxel what the engine gives for the same file and model
    import SimpleITK as sitk
    from cycleinr.api import super_resolve_image
    engine_output, _ = super_resolve_image(sitk.ReadImage(str(OBLIQUE_MR)), scale=2.0, model=tiny_model_file)
    assert np.array_equal(sitk.GetArrayFromImage(engine_output), result)


def test_cancel_midway_kills_worker_and_leaves_scene_as_it_was(scene, tiny_model_file):
    slicer, module = scene
    slicer.util.loadVolume(str(SAMPLE_CT))  # 256 x 256 x 36: long enough to cancel midway
    widget = make_widget(slicer, module)
    widget._parameterNode.modelPath = tiny_model_file
    widget._parameterNode.scale = 5.0
    widget._parameterNode.tileSize = 16
    names, nodes_before = volume_names(slicer), slicer.mrmlScene.GetNumberOfNodes()
    widget.ui.applyButton.click()
    job = widget._job
    wait_for(widget, slicer, lambda: job.fraction > 0 or job.state != "running")
    assert job.state == "running", "the job ended before it could be cancelled"
    temp_dir, process = job.tempDir, job.process
    widget.ui.applyButton.click()  # Cancel
    assert job.state == "cancelled" and widget._job is None
    assert process.poll() is not None
    assert not os.path.exists(temp_dir)
    assert volume_names(slicer) == names and slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert widget.ui.applyButton.text == "Super-resolve"
    assert widget.ui.statusLabel.text.startswith("Cancelled")
    assert not slicer.util.displayedMessages  # cancelling is not an error


def test_worker_failure_is_one_line_in_a_message_box(scene, tiny_model_file):
    slicer, module = scene
    slicer.util.loadVolume(str(HEAD_CT))
    widget = make_widget(slicer, module)
    widget._parameterNode.modelPath = tiny_model_file
    widget._parameterNode.scale = 2.0
    widget._parameterNode.device = "cuda"  # this machine has no GPU: the engine refuses
    if module.CycleINRSRLogic.gpuStatus() is not None:
        pytest.skip("a GPU is present")
    names = volume_names(slicer)
    widget.ui.applyButton.click()
    wait_for(widget, slicer, lambda: widget._job is None)
    level, text = slicer.util.displayedMessages[-1]
    assert level == "ERROR" and "no CUDA GPU is available" in text
    assert "\n" not in text and "Traceback" not in text
    assert volume_names(slicer) == names
    assert widget.ui.applyButton.text == "Super-resolve"


# --- console API ---------------------------------------------------------------------------------
def test_console_super_resolve_returns_node_and_reports_progress(scene, tiny_model_file):
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))
    fractions = []
    output = module.CycleINRSRLogic().superResolve(head, targetSpacing=0.75, model=tiny_model_file,
                                                   progress=fractions.append)
    assert output.GetName() == "invesalius_head_ct_crop_x2"
    assert output.GetSpacing()[2] == pytest.approx(0.75, abs=1e-4)
    assert slicer.util.arrayFromVolume(output).shape == (95, 96, 96)
    assert fractions[-1] == 1.0
    # an existing node given as output is filled, not duplicated
    target = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    again = module.CycleINRSRLogic().superResolve(head, scale=2.0, outputVolumeNode=target, model=tiny_model_file)
    assert again is target and slicer.util.arrayFromVolume(target).shape == (95, 96, 96)
    # acquired slices come through unchanged by default; the network regenerates them when asked
    source = slicer.util.arrayFromVolume(head)
    assert np.array_equal(slicer.util.arrayFromVolume(target)[::2], source)
    regenerated = module.CycleINRSRLogic().superResolve(head, scale=2.0, model=tiny_model_file, keepAcquired=False)
    assert not np.array_equal(slicer.util.arrayFromVolume(regenerated)[::2], source)


def test_console_errors_are_one_line_and_change_nothing(scene, tiny_model_file, tmp_path):
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))
    logic = module.CycleINRSRLogic()
    names = volume_names(slicer)
    not_a_model = tmp_path / "weights.safetensors"
    not_a_model.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    cases = [(dict(scale=0.5, model=tiny_model_file), "greater than 1"),
             (dict(scale=2.0, outputVolumeNode=head, model=tiny_model_file), "must not be the input"),
             (dict(scale=2.0, model=str(not_a_model)), "not a readable safetensors weights file"),
             (dict(scale=2.0, model=str(tmp_path / "missing.safetensors")), "model file not found"),
             (dict(scale=2.0, targetSpacing=1.0, model=tiny_model_file), "exactly one")]
    for options, expected in cases:
        with pytest.raises(ValueError, match=expected) as caught:
            logic.superResolve(head, **options)
        assert "\n" not in str(caught.value)
    assert volume_names(slicer) == names


def test_dependencies_are_installed_only_after_the_user_agrees(scene, monkeypatch):
    slicer, module = scene
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "safetensors") else real_find_spec(name, *a))
    logic = module.CycleINRSRLogic()
    assert logic.missingPackages() == ["torch>=2.1", "safetensors>=0.4"]
    slicer.util.confirmAnswer = False
    with pytest.raises(RuntimeError, match="not installed: torch"):
        logic.ensureDependencies()
    assert slicer.util.pipInstalled == []
    slicer.util.confirmAnswer = True
    logic.ensureDependencies()  # no PyTorchUtils here: torch through pip_install, then the rest
    assert slicer.util.pipInstalled == ["torch>=2.1", ["safetensors>=0.4"]]


@pytest.mark.slow
def test_gpu_out_of_memory_exit_retries_with_smaller_tiles_and_says_so(scene, tiny_model_file):
    """A worker that ended with the GPU out-of-memory exit is retried (here: on this CPU)."""
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))
    logic = module.CycleINRSRLogic()
    statuses = []
    job = logic.superResolve(head, scale=2.0, model=tiny_model_file, waitForCompletion=False,
                             status=statuses.append, device="cpu")
    job.timer.stop()
    job.wait()  # the first run, completed for real; now read as if it had run out of GPU memory
    job.state = "running"
    job._errorLine = "ResourceError: GPU out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"
    job.tempDir = job.tempDir or __import__("tempfile").mkdtemp(prefix="CycleINR-")
    job.outputPath = os.path.join(job.tempDir, "output.nrrd")
    job.inputPath = os.path.join(job.tempDir, "input.nrrd")
    logic.writeVolumeFile(head, job.inputPath)
    job._finish(module.WORKER_EXIT_MEMORY)
    assert statuses == ["GPU out of memory: retrying with 48-voxel tiles"]
    assert "--tile-size" in job.command() and job.command()[job.command().index("--tile-size") + 1] == "48"
    job.wait()
    assert job.state == "done" and job.notes[-1].startswith("GPU out of memory")


# --- batch ---------------------------------------------------------------------------------------
def _run_batch(args, tmp_path):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(STANDIN), str(ENGINE_DIR)]),
                       OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(BATCH_SCRIPT), *args], capture_output=True, text=True,
                          env=environment, cwd=tmp_path, timeout=300)


def test_batch_script_writes_output_and_exits_zero(tiny_model_file, tmp_path):
    import SimpleITK as sitk
    output = tmp_path / "head_x2.nrrd"
    done = _run_batch(["--input", str(HEAD_CT), "--output", str(output), "--scale", "2",
                       "--model", tiny_model_file], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stdout
    image, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(HEAD_CT))
    assert image.GetSize() == source.GetSize()[:2] + (95,)
    assert np.allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)
    assert image.GetSpacing()[2] == pytest.approx(source.GetSpacing()[2] / 2, abs=1e-5)


def test_batch_script_fails_with_status_and_one_line(tiny_model_file, tmp_path):
    done = _run_batch(["--input", str(HEAD_CT), "--output", str(tmp_path / "x.nrrd"), "--scale", "0.5",
                       "--model", tiny_model_file], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "greater than 1" in done.stderr
    assert not (tmp_path / "x.nrrd").exists()


# --- Slicer self-test and screenshot -------------------------------------------------------------
@pytest.mark.slow
def test_module_self_test_passes_in_the_stand_in(scene, tiny_model_file, monkeypatch):
    slicer, module = scene
    monkeypatch.setenv("CYCLEINR_MODEL", tiny_model_file)
    slicer.selfTests["CycleINRSR"]()


def test_panel_renders_offscreen(scene, tiny_model_file, tmp_path):
    slicer, module = scene
    slicer.util.loadVolume(str(SAMPLE_CT), {"name": "ChestCT"})
    widget = make_widget(slicer, module)
    widget._parameterNode.modelPath = tiny_model_file
    widget.parent.resize(400, 10)
    widget.parent.adjustSize()
    slicer.app.processEvents()
    path = tmp_path / "panel.png"
    assert widget.parent.grab().save(str(path))
    from PySide6 import QtGui
    image = QtGui.QImage(str(path))
    assert image.width() >= 300 and image.height() >= 400
