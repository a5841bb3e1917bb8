"""``slicer.util`` for the stand-in: the Slicer 5.8 functions the CycleINR modules call.

Signatures follow Base/Python/slicer/util.py. Dialogs do not block: they log (as Slicer does with
--no-main-window or --testing) and are recorded in ``displayedMessages`` so tests can read them;
``confirmAnswer`` is what confirmation dialogs answer.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from contextlib import contextmanager

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

EXIT_SUCCESS = 0
EXIT_FAILURE = 1

displayedMessages: list[tuple[str, str]] = []
confirmAnswer = True
pipInstalled: list = []
sliceViewerLayers: list[dict] = []


# --- UI -----------------------------------------------------------------------------------------
def _widget_classes():
    import ctk
    import qt
    from slicer import widgets
    return {**qt.WIDGET_CLASSES, **ctk.WIDGET_CLASSES, **widgets.WIDGET_CLASSES}


def loadUI(path):
    """Load a Qt Designer file with the CTK/MRML widgets, as Slicer's qSlicerUiLoader does.

    ``mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*)`` connections in the file are
    made as Slicer makes them, so a widget the .ui does not connect gets no scene, as in Slicer.
    """
    from PySide6 import QtCore
    from PySide6.QtUiTools import QUiLoader

    classes = _widget_classes()

    class Loader(QUiLoader):
        def createWidget(self, class_name, parent=None, name=""):
            cls = classes.get(class_name)
            if cls is None:
                raise RuntimeError(f"{os.path.basename(path)}: widget class {class_name} is not "
                                   "available in the stand-in")
            widget = cls(parent)
            widget.setObjectName(name)
            return widget

    tree = ElementTree.parse(path)
    root = tree.getroot()
    connections = root.find("connections")
    scene_links = []
    if connections is not None:
        for connection in connections.findall("connection"):
            signal, slot = connection.findtext("signal"), connection.findtext("slot")
            if signal.startswith("mrmlSceneChanged") and slot.startswith("setMRMLScene"):
                scene_links.append((connection.findtext("sender"), connection.findtext("receiver")))
            else:
                raise RuntimeError(f"{os.path.basename(path)}: connection {signal} -> {slot} is not "
                                   "supported by the stand-in")
        root.remove(connections)
    buffer = QtCore.QBuffer()
    buffer.setData(ElementTree.tostring(root))
    buffer.open(QtCore.QIODevice.ReadOnly)
    widget = Loader().load(buffer)
    if widget is None:
        raise RuntimeError(f"cannot load {path}")
    for sender_name, receiver_name in scene_links:
        sender = widget if QtCore.QObject.objectName(widget) == sender_name else findChild(widget, sender_name)
        receiver = findChild(widget, receiver_name)
        sender.mrmlSceneChanged.connect(receiver.setMRMLScene)
    return widget


def findChild(widget, name):
    from PySide6 import QtCore
    child = widget.findChild(QtCore.QObject, name)
    if child is None:
        raise RuntimeError(f"child not found by name: {name}")
    return child


def childWidgetVariables(widget):
    """An object whose attributes are the named children of ``widget`` (as in Slicer)."""
    from PySide6 import QtCore

    class Namespace:
        pass

    namespace = Namespace()
    for child in widget.findChildren(QtCore.QObject):
        name = QtCore.QObject.objectName(child)
        if name and not name.startswith("qt_"):
            setattr(namespace, name, child)
    return namespace


def mainWindow(verbose=True):
    return None


# --- messages -----------------------------------------------------------------------------------
def _display(level, text, windowTitle=None):
    displayedMessages.append((logging.getLevelName(level), text))
    logging.log(level, text)


def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _display(logging.ERROR, text, windowTitle)


def warningDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _display(logging.WARNING, text, windowTitle)


def infoDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs):
    _display(logging.INFO, text, windowTitle)


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs):
    _display(logging.INFO, text, windowTitle)
    return confirmAnswer


def confirmYesNoDisplay(text, windowTitle=None, parent=None, **kwargs):
    _display(logging.INFO, text, windowTitle)
    return confirmAnswer


def delayDisplay(message, autoCloseMsec=1000, parent=None, **kwargs):
    logging.info(message)


# --- MRML helpers -------------------------------------------------------------------------------
@contextmanager
def NodeModify(node):
    wasModifying = node.StartModify()
    try:
        yield
    finally:
        node.EndModify(wasModifying)


def getNode(pattern="*", index=0, scene=None):
    scene = scene or slicer.mrmlScene
    node = scene.GetNodeByID(pattern) or scene.GetFirstNodeByName(pattern)
    if node is None:
        raise slicer.util.MRMLNodeNotFoundException(f"could not find nodes in the scene by name or id '{pattern}'")
    return node


class MRMLNodeNotFoundException(Exception):
    pass


def arrayFromVolume(volumeNode):
    """A numpy view (KJI order) of the node's voxels: writing to it changes the volume."""
    image = volumeNode.GetImageData()
    if image is None or image.GetPointData().GetScalars() is None:
        return None
    shape = tuple(reversed(image.GetDimensions()))
    components = image.GetNumberOfScalarComponents()
    if components > 1:
        shape = shape + (components,)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def arrayFromVolumeModified(volumeNode):
    image = volumeNode.GetImageData()
    if image is not None:
        image.GetPointData().GetScalars().Modified()
        image.Modified()
    volumeNode.Modified()


def updateVolumeFromArray(volumeNode, narray):
    """Replace the node's voxels with a copy of ``narray`` (KJI); geometry is left as it is."""
    shape = tuple(reversed(narray.shape))
    if len(shape) != 3:
        raise RuntimeError(f"Unsupported numpy array shape: {narray.shape}")
    image = volumeNode.GetImageData()
    if image is None:
        image = vtk.vtkImageData()
        volumeNode.SetAndObserveImageData(image)
    image.SetDimensions(shape)
    image.AllocateScalars(numpy_support.get_vtk_array_type(narray.dtype), 1)
    target = arrayFromVolume(volumeNode)
    target[:] = narray
    if volumeNode.GetDisplayNode() is None:
        volumeNode.CreateDefaultDisplayNodes()
    arrayFromVolumeModified(volumeNode)


def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    node = slicer.mrmlScene.AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
    if ijkToRAS is not None:
        matrix = vtk.vtkMatrix4x4()
        for row in range(4):
            for column in range(4):
                matrix.SetElement(row, column, float(ijkToRAS[row][column]))
        node.SetIJKToRASMatrix(matrix)
    updateVolumeFromArray(node, narray)
    return node


def setSliceViewerLayers(background="keep-current", foreground="keep-current", label="keep-current",
                         foregroundOpacity=None, labelOpacity=None, fit=False, rotateToVolumePlane=False):
    sliceViewerLayers.append(dict(background=background, foreground=foreground, label=label, fit=fit))


# --- files (Slicer's NRRD/NIfTI IO, here through SimpleITK with the LPS <-> RAS flip) -----------
_LPS = np.diag([-1.0, -1.0, 1.0])


def loadVolume(filename, properties=None, returnNode=False):
    import SimpleITK as sitk
    image = sitk.ReadImage(str(filename))
    name = (properties or {}).get("name") or os.path.basename(str(filename)).split(".")[0]
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    direction = _LPS @ np.array(image.GetDirection()).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, direction[row, column] * image.GetSpacing()[column])
        matrix.SetElement(row, 3, (_LPS @ np.array(image.GetOrigin()))[row])
    node.SetIJKToRASMatrix(matrix)
    updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    display = node.GetDisplayNode()
    array = arrayFromVolume(node)
    low, high = float(array.min()), float(array.max())
    display.SetWindowLevel(max(high - low, 1.0), (high + low) / 2)
    return (True, node) if returnNode else node


def saveNode(node, filename, properties=None):
    import SimpleITK as sitk
    image = sitk.GetImageFromArray(arrayFromVolume(node))
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(matrix)
    direction = _LPS @ np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
    image.SetSpacing(node.GetSpacing())
    image.SetOrigin(tuple(_LPS @ np.array(node.GetOrigin())))
    image.SetDirection(tuple(direction.ravel()))
    try:
        sitk.WriteImage(image, str(filename), True)
    except RuntimeError as error:
        logging.error(f"Failed to save {node.GetName()} to {filename}: {error}")
        return False
    return True


# --- processes and packages ---------------------------------------------------------------------
def startupEnvironment():
    return dict(os.environ)


def launchConsoleProcess(args, useStartupEnvironment=True, updateEnvironment=None, cwd=None):
    environment = startupEnvironment() if useStartupEnvironment else dict(os.environ)
    if updateEnvironment:
        environment.update(updateEnvironment)
    return subprocess.Popen(args, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, cwd=cwd)


def logProcessOutput(proc):
    output = proc.stdout.read() if proc.stdout else ""
    for line in output.splitlines():
        logging.info(line)
    returnCode = proc.wait()
    if returnCode != 0:
        raise subprocess.CalledProcessError(returnCode, proc.args, output=output)


def pip_install(requirements):
    """Recorded, never run: tests must not change the environment."""
    pipInstalled.append(requirements)


def exit(status=EXIT_SUCCESS):
    sys.exit(status)


# --- VTK observations (slicer.util.VTKObservationMixin) -----------------------------------------
class VTKObservationMixin:
    def __init__(self):
        super().__init__()
        self.Observations = []

    def removeObservers(self, method=None):
        for observation in list(self.Observations):
            obj, event, observed, group, tag, priority = observation
            if method is None or observed == method:
                obj.RemoveObserver(tag)
                self.Observations.remove(observation)

    def addObserver(self, obj, event, method, group="none", priority=0.0):
        if self.hasObserver(obj, event, method):
            return
        tag = obj.AddObserver(event, method, priority)
        self.Observations.append([obj, event, method, group, tag, priority])

    def removeObserver(self, obj, event, method):
        for observation in list(self.Observations):
            if observation[0] is obj and observation[1] == event and observation[2] == method:
                obj.RemoveObserver(observation[4])
                self.Observations.remove(observation)

    def hasObserver(self, obj, event, method):
        return any(o[0] is obj and o[1] == event and o[2] == method for o in self.Observations)
