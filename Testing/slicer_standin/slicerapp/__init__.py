"""What 3D Slicer's Qt application adds to the ``slicer`` namespace, for tests on slicer-core.

Everything MRML is Slicer's own code from the ``slicer-core`` wheel: the scene, the nodes, the
application logic, the Colors, Volumes and Subject Hierarchy logics, the storage nodes, and the
real ``slicer/util.py``. ``start()`` wires them as qSlicerCoreApplication does (one application
logic, each module logic given it and the scene, registered under its module name; the colour
logic made the application's) and then adds only what needs Slicer's Qt application, which
slicer-core does not have:

- ``slicer.app``: the parts of qSlicerApplication that util.py and the modules call, with the
  core IO manager's volume reader/writer (qSlicerVolumesReader, qSlicerNodeWriter) done by the same
  volumes logic and storage nodes those C++ classes call;
- ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` (Slicer's pure-Python ones
  need PythonQt), and the qMRML widgets (``slicer.qMRMLWidget``, ``slicer.qMRMLNodeComboBox``);
- ``slicer.modules``, ``slicer.moduleNames``, ``slicer.selfTests``.

``wireScene(scene, appLogic, colors=False)`` leaves the colour logic out: a bare scene, as a
script that makes its own vtkMRMLScene has. Put Testing/slicer_standin first on sys.path (for ``qt``, ``ctk``, ``SampleData``).
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

SLICER_VERSION = "5.8.1"  # the version the modules target; the MRML below is slicer-core's own
_started = {}


class CommandOptions:
    """qSlicerCoreCommandOptions, as with ``--no-main-window --testing``."""

    __slots__ = ("noMainWindow", "runPythonAndExit", "testingEnabled")

    def __init__(self):
        self.noMainWindow = True
        self.runPythonAndExit = True
        self.testingEnabled = True


class CoreIOManager:
    """qSlicerCoreIOManager with the Volumes module's reader and writer registered.

    ``loadNodes("VolumeFile", ...)`` does what qSlicerVolumesReader::load does (volumes logic
    AddArchetypeVolume with the property flags, colour node, active volume); ``saveNodes`` what
    qSlicerNodeWriter::write does (the node's storage node, a default one if it has none,
    writes the file). Other file types are refused, as Slicer refuses a type with no reader.
    """

    _VOLUME_EXTENSIONS = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm", ".ima", ".hdr",
                          ".img", ".img.gz", ".vtk", ".mgz", ".tif", ".tiff", ".png")
    _VOLUME_OPTIONS = {"labelmap": 0x1, "center": 0x2, "singleFile": 0x4, "autoWindowLevel": 0x8,
                       "discardOrientation": 0x10}

    def __init__(self, application):
        self._application = application

    def fileType(self, fileName):
        name = str(fileName).lower()
        if os.path.isdir(name) or name.endswith(self._VOLUME_EXTENSIONS):
            return "VolumeFile"
        return "NoFile"

    def fileWriterFileType(self, node):
        return "VolumeFile" if node.IsA("vtkMRMLVolumeNode") else "NoFile"

    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None):
        import slicer
        if fileType != "VolumeFile":
            raise ValueError(f"the stand-in's IO manager reads only VolumeFile, not {fileType!r}")
        unknown = set(properties) - {"fileName", "fileNames", "name", "colorNodeID", "show"} - set(self._VOLUME_OPTIONS)
        if unknown:
            raise ValueError(f"unknown volume reader properties: {sorted(unknown)}")
        fileName = str(properties["fileName"])
        name = properties.get("name") or os.path.basename(fileName).split(".")[0]  # QFileInfo::baseName
        options = 0
        for key, flag in self._VOLUME_OPTIONS.items():
            if properties.get(key):
                options |= flag
        fileList = None
        if properties.get("fileNames"):
            import vtk
            fileList = vtk.vtkStringArray()
            for path in properties["fileNames"]:
                fileList.InsertNextValue(str(path))
        volumesLogic = self._application.applicationLogic().GetModuleLogic("Volumes")
        node = volumesLogic.AddArchetypeVolume(fileName, name, options, fileList)
        if node is None:
            if userMessages is not None:
                userMessages.AddMessage(slicer.vtkCommand.ErrorEvent, f"cannot read volume from {fileName}")
            return False
        if properties.get("colorNodeID") and node.GetDisplayNode():
            node.GetDisplayNode().SetAndObserveColorNodeID(properties["colorNodeID"])
        selection = self._application.applicationLogic().GetSelectionNode()
        if selection is not None:
            selection.SetReferenceActiveVolumeID(node.GetID())
        if loadedNodes is not None:
            loadedNodes.AddItem(node)
        return True

    def saveNodes(self, fileType, properties, userMessages=None):
        import slicer
        if fileType != "VolumeFile":
            raise ValueError(f"the stand-in's IO manager writes only VolumeFile, not {fileType!r}")
        node = slicer.mrmlScene.GetNodeByID(properties["nodeID"])
        storage = node.GetStorageNode()
        if storage is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
        storage.SetFileName(str(properties["fileName"]))
        if "useCompression" in properties:
            storage.SetUseCompression(int(bool(properties["useCompression"])))
        if not storage.WriteData(node):
            if userMessages is not None:
                userMessages.AddMessage(slicer.vtkCommand.ErrorEvent, f"cannot write {properties['fileName']}")
            return False
        return True


class Application:
    """qSlicerApplication: only the members util.py and the CycleINR modules use (others raise)."""

    def __init__(self, applicationLogic, scene):
        from PySide6 import QtWidgets
        self._qt = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["SlicerStandIn"])
        self._applicationLogic, self._scene = applicationLogic, scene
        self._commandOptions = CommandOptions()
        self._ioManager = CoreIOManager(self)
        self.exitCode = None
        self.temporaryPath = applicationLogic.GetTemporaryPath()
        self.slicerHome = os.path.dirname(os.path.abspath(__file__))
        self.applicationName = "Slicer"
        self.applicationVersion = SLICER_VERSION
        self.majorVersion, self.minorVersion = (int(v) for v in SLICER_VERSION.split(".")[:2])

    def applicationLogic(self):
        return self._applicationLogic

    def mrmlScene(self):
        return self._scene

    def coreIOManager(self):
        return self._ioManager

    ioManager = coreIOManager

    def commandOptions(self):
        return self._commandOptions

    def testingEnabled(self):
        return self._commandOptions.testingEnabled

    def layoutManager(self):
        return None  # --no-main-window: no views

    def topLevelWidgets(self):
        return self._qt.topLevelWidgets()

    def processEvents(self, flags=None):
        self._qt.processEvents()

    def startupEnvironment(self):
        from PySide6 import QtCore
        return QtCore.QProcessEnvironment.systemEnvironment()

    def setOverrideCursor(self, cursor):
        self._qt.setOverrideCursor(cursor)

    def restoreOverrideCursor(self):
        self._qt.restoreOverrideCursor()

    def pauseRender(self):
        pass

    def resumeRender(self):
        pass

    def exit(self, status=0):
        """QCoreApplication::exit: the event loop ends with ``status`` once the script returns."""
        self.exitCode = int(status)

    def connect(self, signal, slot):
        """Only ``startupCompleted()`` is known; startup is complete here, so it fires next."""
        from PySide6 import QtCore
        if signal != "startupCompleted()":
            raise ValueError(f"qSlicerApplication has no signal {signal!r} in the stand-in")
        QtCore.QTimer.singleShot(0, slot)


class Modules:
    """``slicer.modules``: each created module under its lower-case name."""


def wireScene(scene, applicationLogic, colors=True):
    """Module logics on ``scene`` as qSlicerAbstractCoreModule::initialize sets them up."""
    import slicer
    applicationLogic.SetMRMLScene(scene)
    logics = {}
    classes = ([("Colors", slicer.vtkSlicerColorLogic)] if colors else []) + [
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic), ("Volumes", slicer.vtkSlicerVolumesLogic)]
    for moduleName, logicClass in classes:
        logic = logicClass()
        logic.SetMRMLApplicationLogic(applicationLogic)
        logic.SetMRMLScene(scene)
        applicationLogic.SetModuleLogic(moduleName, logic)
        logics[moduleName] = logic
    if colors:
        applicationLogic.SetColorLogic(logics["Colors"])  # qSlicerColorsModule::setup
    return logics


def start():
    """Build the application once per process; returns the ``slicer`` module."""
    if _started:
        return _started["slicer"]
    import slicer
    import slicer.util  # noqa: F401 - Slicer's own util.py, from slicer-core

    from . import ScriptedLoadableModule, parameterNodeWrapper, widgets
    temporaryPath = tempfile.mkdtemp(prefix="slicer-standin-")
    atexit.register(shutil.rmtree, temporaryPath, ignore_errors=True)  # a test run leaves nothing
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetTemporaryPath(temporaryPath)
    # the home of an application without extra colour files: the colour logic looks there
    os.makedirs(os.path.join(temporaryPath, "share", "ColorFiles"))
    applicationLogic.SetHomeDirectory(temporaryPath)
    applicationLogic.SetShareDirectory("share")
    scene = slicer.vtkMRMLScene()
    logics = wireScene(scene, applicationLogic)
    slicer.app = Application(applicationLogic, scene)
    slicer.mrmlScene = scene
    slicer.modules = Modules()
    slicer.moduleNames = []
    slicer.selfTests = {}
    slicer.qMRMLWidget, slicer.qMRMLNodeComboBox = widgets.qMRMLWidget, widgets.qMRMLNodeComboBox
    for name, module in (("ScriptedLoadableModule", ScriptedLoadableModule),
                         ("parameterNodeWrapper", parameterNodeWrapper)):
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
    _started.update(slicer=slicer, logics=logics)
    return slicer
