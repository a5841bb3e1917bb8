"""What is left of the Slicer stand-in (the parts that need Slicer's Qt application) refuses what
real Slicer refuses, so a module test cannot pass for a call Slicer would reject; and the rest of
``slicer`` is Slicer's own code from slicer-core, not the stand-in's."""

import pathlib
from typing import Annotated

import pytest

from conftest import HEAD_CT, STANDIN


def test_slicer_namespace_is_slicer_core_with_only_the_qt_parts_from_the_stand_in(slicer_app):
    import slicer.util
    slicer = slicer_app
    assert slicer.util.__file__.endswith("site-packages/slicer/util.py")
    for name in ("vtkMRMLScene", "vtkMRMLScalarVolumeNode", "vtkMRMLSubjectHierarchyNode",
                 "vtkSlicerVolumesLogic", "vtkMRMLVolumeArchetypeStorageNode"):
        assert getattr(slicer, name).__module__.startswith("slicer_core."), name
    assert isinstance(slicer.mrmlScene, slicer.vtkMRMLScene)
    standin = str(STANDIN)
    for name in ("ScriptedLoadableModule", "parameterNodeWrapper"):
        assert getattr(slicer, name).__file__.startswith(standin)
    assert not (STANDIN / "slicer").exists()  # no home-made MRML, scene or util left
    logic = slicer.app.applicationLogic()
    for moduleName, className in (("Colors", "vtkSlicerColorLogic"), ("Volumes", "vtkSlicerVolumesLogic"),
                                  ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic")):
        assert logic.GetModuleLogic(moduleName).GetClassName() == className
    assert logic.GetColorLogic() is logic.GetModuleLogic("Colors")


def test_wrong_signal_signatures_are_refused(slicer_app):
    import ctk
    import qt
    button, slider, combo = qt.QPushButton(), ctk.ctkSliderWidget(), slicer_app.qMRMLNodeComboBox()
    calls = []
    assert button.connect("clicked(bool)", calls.append)
    assert slider.connect("valueChanged(double)", calls.append)
    assert combo.connect("currentNodeChanged(vtkMRMLNode*)", calls.append)
    for widget, signature in ((button, "clicked(int)"), (button, "click()"), (slider, "valueChanged(int)"),
                              (combo, "currentNodeChanged(PyObject)"), (combo, "nodeChanged(vtkMRMLNode*)")):
        with pytest.raises(ValueError, match="has no signal"):
            widget.connect(signature, calls.append)
    with pytest.raises(ValueError, match="no signal"):
        slicer_app.app.connect("startupDone()", calls.append)


def test_qt_properties_read_as_attributes_and_methods_do_not(slicer_app):
    import qt
    button = qt.QPushButton("Run")
    assert button.text == "Run"
    with pytest.raises(TypeError):
        button.text()  # PythonQt gives the property, not the getter
    button.enabled = False
    assert button.enabled is False and not button.isEnabled()


def test_parameter_node_wrapper_refuses_unsupported_types_and_bad_values(mrml):
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

    with pytest.raises(Exception, match="Unable to create serializer"):
        @parameterNodeWrapper
        class Unsupported:
            weights: complex

    with pytest.raises(ValueError, match="reserved name"):
        @parameterNodeWrapper
        class Reserved:
            value: int

            def connectGui(self, gui):
                pass

    @parameterNodeWrapper
    class Parameters:
        volume: mrml.vtkMRMLScalarVolumeNode
        count: Annotated[int, WithinRange(0, 10)] = 3
        mode: Annotated[str, Choice(["a", "b"])] = "a"
        path: pathlib.Path

    node = mrml.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    parameters = Parameters(node)
    assert node.GetParameter("count") == "3" and parameters.volume is None and parameters.path == pathlib.Path()
    for name, value, error in (("count", 11, ValueError), ("count", 2.0, TypeError), ("count", None, ValueError),
                               ("mode", "c", ValueError), ("path", "x", TypeError),
                               ("volume", mrml.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode"), TypeError)):
        with pytest.raises(error):
            setattr(parameters, name, value)
    head = mrml.util.loadVolume(str(HEAD_CT))
    parameters.volume = head
    assert node.GetNodeReferenceID("volume") == head.GetID()


def test_volume_reader_refuses_unknown_properties(mrml):
    with pytest.raises(ValueError, match="unknown volume reader properties"):
        mrml.util.loadVolume(str(HEAD_CT), {"nmae": "typo"})


def test_ui_loader_refuses_widgets_and_connections_it_does_not_have(slicer_app, tmp_path):
    ui = tmp_path / "x.ui"
    ui.write_text('<ui version="4.0"><widget class="qMRMLSubjectHierarchyTreeView" name="tree"/></ui>')
    with pytest.raises(RuntimeError, match="not in the stand-in"):
        slicer_app.util.loadUI(str(ui))
    with pytest.raises(RuntimeError, match="file not found"):
        slicer_app.util.loadUI(str(tmp_path / "missing.ui"))
