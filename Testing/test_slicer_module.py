"""The CycleINRSR Slicer module on Slicer's own MRML (the slicer-core wheel).

The scene, nodes, volumes/colour/subject-hierarchy logics, storage nodes and ``slicer.util`` are
Slicer's code; volumes are loaded by Slicer's volumes logic from the repository's test volumes.
Only what needs Slicer's Qt application (panel widgets, slicer.app, the scripted-module base
classes, the parameter node wrapper) comes from Testing/slicer_standin. Every job runs the real
``cycleinr.worker`` process; the model is the UNTRAINED tiny test network (plumbing and geometry,
never image quality).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ENGINE_DIR, HEAD_CT, OBLIQUE_MR, SAMPLE_CT, SHARED_DATA, STANDIN

BATCH_SCRIPT = ENGINE_DIR / "Resources" / "Scripts" / "cycleinr_batch.py"
RUN_SCRIPT = STANDIN / "run_script.py"


@pytest.fixture
def scene(mrml):
    """The application's scene with the module created, as Slicer has it after startup."""
    import CycleINRSR
    from slicer.ScriptedLoadableModule import createModule
    if not hasattr(mrml.modules, "cycleinrsr"):
        createModule(CycleINRSR.CycleINRSR)
    return mrml, CycleINRSR


@pytest.fixture
def bare_scene(scene, monkeypatch):
    """A scene a script makes itself (vtkMRMLScene(), no colour logic): display nodes get no colour."""
    slicer, module = scene
    import slicerapp
    bare = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    logics = slicerapp.wireScene(bare, applicationLogic, colors=False)
    monkeypatch.setattr(slicer, "mrmlScene", bare)
    return slicer, module, logics["Volumes"]


def matrix_of(node):
    import vtk
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def wait_for(slicer, condition, timeout=120.0):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError("timed out waiting for the worker")
        slicer.app.processEvents()
        time.sleep(0.02)


def make_widget(module):
    from slicer.ScriptedLoadableModule import createWidget
    return createWidget(module.CycleINRSRWidget)


def volume_names(slicer):
    return sorted(n.GetName() for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"))


def add_slice_views(slicer):
    """The Red/Yellow/Green slice nodes the layout manager makes (setSliceViewerLayers uses them)."""
    logics = []
    for name in ("Red", "Yellow", "Green"):
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(slicer.mrmlScene)
        logic.AddSliceNode(name)
        logics.append(logic)
    return logics


def error_messages(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- the application as the tests see it -----------------------------------------------------------
def test_mrml_is_slicer_core_and_volumes_come_from_slicers_volumes_logic(scene):
    slicer, _ = scene
    import slicer.util
    assert slicer.util.__file__.endswith(os.path.join("site-packages", "slicer", "util.py"))
    head = slicer.util.loadVolume(str(HEAD_CT))
    assert type(head).__module__.startswith("slicer_core.")
    assert head.GetStorageNode().GetClassName() == "vtkMRMLVolumeArchetypeStorageNode"
    display = head.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey" and display.GetAutoWindowLevel()
    assert slicer.app.applicationLogic().GetSelectionNode().GetActiveVolumeID() == head.GetID()
    with pytest.raises(AttributeError):
        slicer.util.arrayFromVolume(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))


# --- the panel -----------------------------------------------------------------------------------
def test_panel_keeps_scale_and_spacing_in_step_and_in_the_parameter_node(scene, tiny_model_file):
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))  # 0.957 x 0.957 x 1.5 mm, 96 x 96 x 48
    widget = make_widget(module)
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
    node = parameters.parameterNode  # what is saved with the scene: a real vtkMRMLScriptedModuleNode
    assert node.GetClassName() == "vtkMRMLScriptedModuleNode" and node.GetSingletonTag() == "CycleINRSR"
    assert node.GetParameter("device") == "cpu" and node.GetParameter("sliceAxis") == "J"
    assert node.GetParameter("tileSize") == "32" and float(node.GetParameter("scale")) == pytest.approx(10.0)
    assert node.GetNodeReferenceID("inputVolume") == head.GetID()
    # a script changing the parameter node moves the widgets
    parameters.scale = 4.0
    assert ui.scaleSliderWidget.value == pytest.approx(4.0)
    assert "along J" in ui.infoLabel.text
    # values Slicer's parameter node wrapper refuses are refused
    with pytest.raises(TypeError):
        parameters.tileSize = 32.0
    with pytest.raises(ValueError):
        parameters.device = "tpu"


def test_leaving_and_reentering_the_module_warns_nothing_and_binds_once(scene, tiny_model_file):
    """exit() then enter() (switching modules) must not remove an observer twice (Slicer's
    VTKObservationMixin warns 'does not have observer' for that) and keeps one GUI binding."""
    slicer, module = scene
    slicer.util.loadVolume(str(HEAD_CT))
    widget = make_widget(module)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            widget.exit()
            widget.enter()
    assert [str(w.message) for w in caught] == []
    assert len(widget._parameterNode._parameterGUIs) == 1
    widget._parameterNode.scale = 3.0
    assert widget.ui.scaleSliderWidget.value == pytest.approx(3.0)


def test_super_resolve_button_runs_worker_and_adds_oblique_output(scene, tiny_model_file):
    """Click Super-resolve on the oblique MR: responsive run, new node with the engine's geometry."""
    slicer, module = scene
    views = add_slice_views(slicer)
    mr = slicer.util.loadVolume(str(OBLIQUE_MR))
    mr.GetDisplayNode().SetAutoWindowLevel(False)
    mr.GetDisplayNode().SetWindowLevel(321.0, 123.0)
    before = slicer.util.arrayFromVolume(mr).copy()
    matrix_before = matrix_of(mr)
    widget = make_widget(module)
    widget._parameterNode.modelPath = tiny_model_file
    widget._parameterNode.scale = 2.0
    fractions = []
    widget.ui.applyButton.click()
    assert widget.ui.applyButton.text == "Cancel" and widget.ui.progressBar.isVisibleTo(widget.parent)
    assert not widget.ui.inputsCollapsibleButton.enabled
    job = widget._job
    job_progress = job.progressCallback
    job.progressCallback = lambda f: (fractions.append(f), job_progress(f))
    wait_for(slicer, lambda: widget._job is None)

    assert job.state == "done", job.error
    job._reader.join(5)
    assert job.process.stdout.closed  # the worker's pipe (a ResourceWarning at every job when left open)
    assert widget.ui.applyButton.text == "Super-resolve" and not widget.ui.progressBar.isVisibleTo(widget.parent)
    assert fractions and fractions[-1] == 1.0
    output = slicer.mrmlScene.GetFirstNodeByName(mr.GetName() + "_x2")
    assert output is not None and output is job.outputVolumeNode
    expected = matrix_before.copy()
    expected[:3, 2] /= 2.0  # first slice centre and directions kept, slice column divided by the scale
    assert np.allclose(matrix_of(output), expected, atol=1e-4)
    result = slicer.util.arrayFromVolume(output)
    assert result.shape == ((before.shape[0] - 1) * 2 + 1,) + before.shape[1:]
    assert result.dtype == before.dtype
    assert np.array_equal(slicer.util.arrayFromVolume(mr), before)  # the input is untouched
    assert np.allclose(matrix_of(mr), matrix_before)
    display = output.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (321.0, 123.0) and not display.GetAutoWindowLevel()
    assert display.GetColorNodeID() == mr.GetDisplayNode().GetColorNodeID()
    assert {view.GetSliceCompositeNode().GetBackgroundVolumeID() for view in views} == {output.GetID()}
    assert "Done in" in widget.ui.statusLabel.text
    engine_output, _ = __import__("cycleinr.api", fromlist=["x"]).super_resolve_image(
        sitk.ReadImage(str(OBLIQUE_MR)), scale=2.0, model=tiny_model_file)
    assert np.array_equal(sitk.GetArrayFromImage(engine_output), result)


def test_cancel_midway_kills_worker_and_leaves_scene_as_it_was(scene, tiny_model_file, caplog):
    slicer, module = scene
    slicer.util.loadVolume(str(SAMPLE_CT))  # 256 x 256 x 36: long enough to cancel midway
    widget = make_widget(module)
    widget._parameterNode.modelPath = tiny_model_file
    widget._parameterNode.scale = 5.0
    widget._parameterNode.tileSize = 16
    names, nodes_before = volume_names(slicer), slicer.mrmlScene.GetNumberOfNodes()
    widget.ui.applyButton.click()
    job = widget._job
    wait_for(slicer, lambda: job.fraction > 0 or job.state != "running")
    assert job.state == "running", "the job ended before it could be cancelled"
    temp_dir, process = job.tempDir, job.process
    widget.ui.applyButton.click()  # Cancel
    assert job.state == "cancelled" and widget._job is None
    assert process.poll() is not None
    assert not os.path.exists(temp_dir)
    assert volume_names(slicer) == names and slicer.mrmlScene.GetNumberOfNodes() == nodes_before
    assert widget.ui.applyButton.text == "Super-resolve"
    assert widget.ui.statusLabel.text.startswith("Cancelled")
    assert error_messages(caplog) == []  # cancelling is not an error


def test_worker_failure_is_one_line_in_a_message_box(scene, tiny_model_file, caplog):
    slicer, module = scene
    slicer.util.loadVolume(str(HEAD_CT))
    widget = make_widget(module)
    widget._parameterNode.modelPath = tiny_model_file
    widget._parameterNode.scale = 2.0
    widget._parameterNode.device = "cuda"  # this machine has no GPU: the engine refuses
    if module.CycleINRSRLogic.gpuStatus() is not None:
        pytest.skip("a GPU is present")
    names = volume_names(slicer)
    widget.ui.applyButton.click()
    wait_for(slicer, lambda: widget._job is None)
    shown = [m for m in error_messages(caplog) if m.startswith("Super-resolution failed")]
    assert len(shown) == 1 and "no CUDA GPU is available" in shown[0]  # errorDisplay logs what it shows
    assert "\n" not in shown[0] and "Traceback" not in shown[0]
    assert volume_names(slicer) == names
    assert widget.ui.applyButton.text == "Super-resolve"


# --- console API (the Logic from Slicer's Python console) ----------------------------------------
def test_console_super_resolve_returns_node_and_reports_progress(scene, tiny_model_file):
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))
    logic = module.CycleINRSRLogic()
    # asking for the name uses nothing up (real MRML's GetUniqueNameByString moves on at every call)
    assert logic.outputName(head, 2.0) == logic.outputName(head, 2.0) == "invesalius_head_ct_crop_x2"
    fractions = []
    output = logic.superResolve(head, targetSpacing=0.75, model=tiny_model_file, progress=fractions.append)
    assert output.GetName() == "invesalius_head_ct_crop_x2"
    assert logic.outputName(head, 2.0) == "invesalius_head_ct_crop_x2_1"
    assert output.GetSpacing()[2] == pytest.approx(0.75, abs=1e-4)
    assert slicer.util.arrayFromVolume(output).shape == (95, 96, 96)
    assert fractions[-1] == 1.0
    # an existing node given as output is filled, not duplicated
    target = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mine")
    nodes = slicer.mrmlScene.GetNumberOfNodes()
    again = logic.superResolve(head, scale=2.0, outputVolumeNode=target, model=tiny_model_file)
    assert again is target and slicer.util.arrayFromVolume(target).shape == (95, 96, 96)
    assert target.GetName() == "mine" and slicer.mrmlScene.GetNumberOfNodes() == nodes + 1  # its display node
    # acquired slices come through unchanged by default; the network regenerates them when asked
    source = slicer.util.arrayFromVolume(head)
    assert np.array_equal(slicer.util.arrayFromVolume(target)[::2], source)
    regenerated = logic.superResolve(head, scale=2.0, model=tiny_model_file, keepAcquired=False)
    assert regenerated.GetName() == "invesalius_head_ct_crop_x2_1"
    assert not np.array_equal(slicer.util.arrayFromVolume(regenerated)[::2], source)


def test_console_adapt_minutes_reach_the_worker_and_its_phase_is_reported(scene, tiny_model_file, monkeypatch):
    """The Logic runs the worker with --adapt and reports the adaptation phase through ``status``."""
    slicer, module = scene
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    head = slicer.util.loadVolume(str(HEAD_CT))
    logic = module.CycleINRSRLogic()
    messages = []
    job = logic.superResolve(head, scale=2.0, model=tiny_model_file, adaptMinutes=0.01, sliceThickness=3.0,
                             status=messages.append, waitForCompletion=False)
    command = job.command()
    assert command[command.index("--adapt") + 1] == "0.01"
    assert command[command.index("--slice-thickness") + 1] == "3.0"
    job.wait()
    assert job.state == "done", job.error
    assert messages[0].startswith("adapting ") and "3 mm thick every 1.5 mm" in messages[0]
    assert "was used" in messages[-1] and any("adapted to this scan" in w for w in job.result["warnings"])
    plain = module.SuperResolveJob(logic, head, None, job.grid, dict(device="cpu", model=tiny_model_file))
    plain.inputPath, plain.outputPath = "in.nrrd", "out.nrrd"
    assert "--adapt" not in plain.command()


def test_console_errors_are_one_line_and_change_nothing(scene, tiny_model_file, tmp_path):
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")  # no voxels
    logic = module.CycleINRSRLogic()
    names, nodes = volume_names(slicer), slicer.mrmlScene.GetNumberOfNodes()
    not_a_model = tmp_path / "weights.safetensors"
    not_a_model.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    cases = [(head, dict(scale=0.5, model=tiny_model_file), "greater than 1"),
             (head, dict(scale=2.0, outputVolumeNode=head, model=tiny_model_file), "must not be the input"),
             (head, dict(scale=2.0, model=str(not_a_model)), "not a readable safetensors weights file"),
             (head, dict(scale=2.0, model=str(tmp_path / "missing.safetensors")), "model file not found"),
             (head, dict(scale=2.0, targetSpacing=1.0, model=tiny_model_file), "exactly one"),
             (empty, dict(scale=2.0, model=tiny_model_file), "with voxels")]
    for node, options, expected in cases:
        with pytest.raises(ValueError, match=expected) as caught:
            logic.superResolve(node, **options)
        assert "\n" not in str(caught.value)
    assert volume_names(slicer) == names and slicer.mrmlScene.GetNumberOfNodes() == nodes
    with pytest.raises(TypeError):
        logic.superResolve(head, scale=2.0, colour="red")  # an unknown keyword is refused


def test_input_without_colour_node_gives_its_output(bare_scene, tiny_model_file):
    """A bare scene (no colour logic): the input's display node has no colour node. The finished
    result must come back (real MRML refuses SetAndObserveColorNodeID(None) with TypeError)."""
    slicer, module, volumes = bare_scene
    head = volumes.AddArchetypeVolume(str(HEAD_CT), "head", 0)
    assert head.GetDisplayNode().GetColorNodeID() is None
    output = module.CycleINRSRLogic().superResolve(head, scale=2.0, model=tiny_model_file)
    assert output.GetScene() is slicer.mrmlScene and output.GetDisplayNode() is not None
    assert slicer.util.arrayFromVolume(output).shape == (95, 96, 96)


def test_failed_import_removes_the_output_and_its_display_node(scene, tiny_model_file, monkeypatch):
    """When the result cannot be placed, the new volume goes and so does its display node
    (real RemoveNode leaves display nodes behind)."""
    slicer, module = scene
    head = slicer.util.loadVolume(str(HEAD_CT))
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)  # made on first use
    classes_before = sorted(slicer.mrmlScene.GetNthNode(i).GetClassName()
                            for i in range(slicer.mrmlScene.GetNumberOfNodes()))

    def views_fail(**kwargs):
        raise RuntimeError("the slice views are gone")
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", views_fail)
    with pytest.raises(RuntimeError, match="cannot read the result back: the slice views are gone"):
        module.CycleINRSRLogic().superResolve(head, scale=2.0, model=tiny_model_file)
    classes_after = sorted(slicer.mrmlScene.GetNthNode(i).GetClassName()
                           for i in range(slicer.mrmlScene.GetNumberOfNodes()))
    assert classes_after == classes_before


def test_dependencies_are_installed_only_after_the_user_agrees(scene, monkeypatch):
    slicer, module = scene
    import importlib.util
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("torch", "safetensors") else real_find_spec(name, *a))
    installed, answers = [], []
    monkeypatch.setattr(slicer.util, "pip_install", installed.append)  # never change this environment
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, windowTitle=None, **kw: answers.pop())
    logic = module.CycleINRSRLogic()
    assert logic.missingPackages() == ["torch>=2.1", "safetensors>=0.4"]
    answers.append(False)
    with pytest.raises(RuntimeError, match="not installed: torch"):
        logic.ensureDependencies()
    assert installed == []
    answers.append(True)
    logic.ensureDependencies()  # no PyTorchUtils here: torch through pip_install, then the rest
    assert installed == ["torch>=2.1", ["safetensors>=0.4"]]


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
    job.tempDir = __import__("tempfile").mkdtemp(prefix="CycleINR-")
    job.outputPath = os.path.join(job.tempDir, "output.nrrd")
    job.inputPath = os.path.join(job.tempDir, "input.nrrd")
    logic.writeVolumeFile(head, job.inputPath)
    job._finish(module.WORKER_EXIT_MEMORY)
    assert statuses == ["GPU out of memory: retrying with 48-voxel tiles"]
    assert job.command()[job.command().index("--tile-size") + 1] == "48"
    job.wait()
    assert job.state == "done" and job.notes[-1].startswith("GPU out of memory")


# --- geometry through Slicer's own code ----------------------------------------------------------
def _flipped_volume(folder):
    """The head CT stored with negative direction cosines (flipped I and K), same anatomy."""
    image = sitk.ReadImage(str(HEAD_CT))
    array = sitk.GetArrayFromImage(image)[::-1, :, ::-1]
    flipped = sitk.GetImageFromArray(np.ascontiguousarray(array))
    size = image.GetSize()
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((size[0] - 1, 0, size[2] - 1)))
    direction = np.array(image.GetDirection()).reshape(3, 3) @ np.diag([-1.0, 1.0, -1.0])
    flipped.SetDirection(tuple(direction.ravel()))
    path = folder / "head_flipped.nrrd"
    sitk.WriteImage(flipped, str(path))
    return path


def _dicom_series_file():
    series = SHARED_DATA / "tcga_thca_ct_dicom_subset"
    files = sorted(series.glob("*")) if series.is_dir() else []
    if not files:
        pytest.skip(f"DICOM series not found at {series}")
    return files[0]


def _module_vs_cli(slicer, module, input_path, node, model, tmp_path):
    """Module output saved by Slicer's storage node vs the CLI's output for the same file."""
    from cycleinr.cli import main as cli
    output = module.CycleINRSRLogic().superResolve(node, scale=2.0, model=model, device="cpu")
    saved = tmp_path / "module.nrrd"
    assert slicer.util.saveNode(output, str(saved))
    assert output.GetStorageNode().GetClassName() == "vtkMRMLVolumeArchetypeStorageNode"
    cli_output = tmp_path / "cli.nrrd"
    assert cli(["super-resolve", str(input_path), str(cli_output), "--scale", "2", "--model", model,
                "--device", "cpu"]) == 0
    ours, theirs = sitk.ReadImage(str(saved)), sitk.ReadImage(str(cli_output))
    assert ours.GetSize() == theirs.GetSize() and ours.GetPixelID() == theirs.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs))
    # float32 geometry in the NIfTI inputs: Slicer's matrix round trip differs in the 7th digit
    assert np.allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-4)
    assert np.allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-6)
    assert np.allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)
    return output


@pytest.mark.parametrize("volume", ["axial head CT", "oblique MR", "flipped head CT"])
def test_module_output_written_by_slicer_equals_the_cli_output(scene, tiny_model_file, tmp_path, volume):
    slicer, module = scene
    path = {"axial head CT": HEAD_CT, "oblique MR": OBLIQUE_MR}.get(volume) or _flipped_volume(tmp_path)
    node = slicer.util.loadVolume(str(path))
    if volume == "flipped head CT":
        directions = matrix_of(node)[:3, :3]
        assert directions[0, 0] > 0 and directions[2, 2] < 0  # RAS: I runs right, K runs down
    _module_vs_cli(slicer, module, path, node, tiny_model_file, tmp_path)


def test_volume_under_a_parent_transform_keeps_it_and_its_voxel_grid(scene, tiny_model_file, tmp_path):
    """Under a parent transform and in a subject-hierarchy folder, the output goes to both."""
    slicer, module = scene
    import vtk
    node = slicer.util.loadVolume(str(OBLIQUE_MR))
    # Slicer's Qt plugin makes subject-hierarchy items for data nodes; slicer-core (or a script)
    # has none: the item is made here as the plugin would, the output must still join the folder
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    assert sh.GetItemByDataNode(node) == 0
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "study")
    sh.CreateItem(folder, node)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "tilt")
    matrix = vtk.vtkTransform()
    matrix.RotateX(20)
    matrix.Translate(5, -3, 12)
    transform.SetMatrixTransformToParent(matrix.GetMatrix())
    node.SetAndObserveTransformNodeID(transform.GetID())
    output = _module_vs_cli(slicer, module, OBLIQUE_MR, node, tiny_model_file, tmp_path)
    assert output.GetTransformNodeID() == transform.GetID()
    assert sh.GetItemParent(sh.GetItemByDataNode(output)) == folder
    # the same world position for the first voxel of input and output
    world_in, world_out = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(transform, None, to_world)
    to_world.TransformPoint(matrix_of(node)[:3, 3], world_in)
    to_world.TransformPoint(matrix_of(output)[:3, 3], world_out)
    assert np.allclose(world_in, world_out, atol=1e-4)


@pytest.mark.slow
def test_dicom_series_read_by_slicer_gives_the_cli_output(scene, tiny_model_file, tmp_path):
    slicer, module = scene
    first = _dicom_series_file()
    node = slicer.util.loadVolume(str(first))
    assert node.GetImageData().GetDimensions() == (512, 512, 24)
    _module_vs_cli(slicer, module, first.parent, node, tiny_model_file, tmp_path)


# --- batch ---------------------------------------------------------------------------------------
def _run(args, tmp_path, runner=True):
    environment = dict(os.environ, PYTHONPATH=str(ENGINE_DIR), OMP_NUM_THREADS="1", QT_QPA_PLATFORM="offscreen")
    command = [sys.executable] + ([str(RUN_SCRIPT)] if runner else []) + [str(BATCH_SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300)


def test_batch_script_writes_output_and_exits_zero(tiny_model_file, tmp_path):
    output = tmp_path / "head_x2.nrrd"
    done = _run(["--input", str(HEAD_CT), "--output", str(output), "--scale", "2", "--model", tiny_model_file,
                 "--device", "cpu"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stdout
    image, source = sitk.ReadImage(str(output)), sitk.ReadImage(str(HEAD_CT))
    assert image.GetSize() == source.GetSize()[:2] + (95,)
    assert np.allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-4)
    assert np.allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)
    assert image.GetSpacing()[2] == pytest.approx(source.GetSpacing()[2] / 2, abs=1e-5)


def test_batch_script_fails_with_status_and_one_line(tiny_model_file, tmp_path):
    done = _run(["--input", str(HEAD_CT), "--output", str(tmp_path / "x.nrrd"), "--scale", "0.5",
                 "--model", tiny_model_file], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "greater than 1" in done.stderr
    assert not (tmp_path / "x.nrrd").exists()


def test_batch_script_exits_2_where_slicer_util_exit_itself_fails(tmp_path):
    """Run with slicer-core but no application (no slicer.app): the run fails, and so does
    slicer.util.exit; the caller still gets exit code 2 and one line, not a traceback."""
    done = _run(["--input", str(HEAD_CT), "--output", str(tmp_path / "x.nrrd"), "--scale", "2"], tmp_path,
                runner=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cycleinr_batch: error:") and "Traceback" not in done.stderr


# --- Slicer self-test and screenshot -------------------------------------------------------------
@pytest.mark.slow
def test_module_self_test_passes(scene, tiny_model_file, monkeypatch):
    slicer, module = scene
    monkeypatch.setenv("CYCLEINR_MODEL", tiny_model_file)
    slicer.selfTests["CycleINRSR"]()


def test_panel_renders_offscreen(scene, tiny_model_file, tmp_path):
    slicer, module = scene
    slicer.util.loadVolume(str(SAMPLE_CT), {"name": "ChestCT"})
    widget = make_widget(module)
    widget._parameterNode.modelPath = tiny_model_file
    widget.parent.resize(400, 10)
    widget.parent.adjustSize()
    slicer.app.processEvents()
    path = tmp_path / "panel.png"
    assert widget.parent.grab().save(str(path))
    from PySide6 import QtGui
    image = QtGui.QImage(str(path))
    assert image.width() >= 300 and image.height() >= 400


def test_stand_in_removes_its_temporary_folder_at_exit(tmp_path):
    """A Python session that started the stand-in application leaves no slicer-standin-* folder."""
    code = ("import slicerapp, os; slicer = slicerapp.start(); print(slicer.app.temporaryPath); "
            "assert os.path.isdir(slicer.app.temporaryPath)")
    environment = dict(os.environ, PYTHONPATH=str(STANDIN), QT_QPA_PLATFORM="offscreen")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    folder = done.stdout.strip().splitlines()[-1]
    assert os.path.basename(folder).startswith("slicer-standin-") and not os.path.exists(folder)
