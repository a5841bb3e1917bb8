"""A small, faithful stand-in for 3D Slicer's Python API, for tests where Slicer cannot run.

It mirrors the signatures of Slicer 5.8 (Python 3.12 from 5.10 on uses the same ones) for the
parts the CycleINR modules touch: ``slicer.mrmlScene`` and MRML nodes on real VTK
(vtkImageData, vtkMatrix4x4, KJI numpy views as arrayFromVolume gives them), ``slicer.app``,
``slicer.util``, ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, and the
``qt``/``ctk`` modules on real PySide6 widgets with PythonQt's attribute-style properties.
Put this folder first on sys.path; the Qt application is created offscreen on first use.
Nothing here reimplements CycleINR: module code runs as it would inside Slicer.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import QtCore, QtWidgets  # noqa: E402

from .mrml import (  # noqa: E402,F401
    vtkMRMLColorTableNode, vtkMRMLLabelMapVolumeNode, vtkMRMLNode, vtkMRMLScalarVolumeDisplayNode,
    vtkMRMLScalarVolumeNode, vtkMRMLScene, vtkMRMLScriptedModuleNode, vtkMRMLSubjectHierarchyNode,
    vtkMRMLVolumeNode)
from .widgets import qMRMLNodeComboBox, qMRMLWidget  # noqa: E402,F401

SLICER_VERSION = "5.8.1"


class _CommandOptions:
    noMainWindow = True
    runPythonAndExit = True


class _Application:
    """The parts of qSlicerApplication the modules use."""

    def __init__(self):
        self._qt = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["SlicerStandIn"])
        self.temporaryPath = tempfile.mkdtemp(prefix="slicer-standin-")
        atexit.register(shutil.rmtree, self.temporaryPath, ignore_errors=True)  # a test run leaves nothing
        self.slicerHome = os.path.dirname(os.path.abspath(__file__))
        self.majorVersion, self.minorVersion = (int(v) for v in SLICER_VERSION.split(".")[:2])
        self.applicationVersion = SLICER_VERSION
        self.testing = True
        self.overrideCursorDepth = 0

    def processEvents(self, flags=None):
        self._qt.processEvents()

    def commandOptions(self):
        return _CommandOptions()

    def testingEnabled(self):
        return self.testing

    def setOverrideCursor(self, cursor):
        self.overrideCursorDepth += 1

    def restoreOverrideCursor(self):
        self.overrideCursorDepth -= 1

    def connect(self, signal, slot):
        """Slicer emits startupCompleted() once; here startup is already complete."""
        if signal.startswith("startupCompleted"):
            QtCore.QTimer.singleShot(0, slot)


class _Modules:
    """``slicer.modules``: lower-case module names registered by the tests."""


app = _Application()
mrmlScene = vtkMRMLScene()
modules = _Modules()
moduleNames = []
selfTests = {}

from . import util  # noqa: E402,F401
