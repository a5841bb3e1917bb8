"""qMRMLWidget and qMRMLNodeComboBox for the stand-in, on PySide6.

qMRMLNodeComboBox lists the scene's nodes of ``nodeTypes``, follows NodeAdded/NodeRemoved events
and offers the "None" entry (``noneEnabled`` with ``noneDisplay``), with the properties and the
``currentNodeChanged(vtkMRMLNode*)`` signal of Slicer 5.8.
"""
from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from qt import PythonQtAccess


class qMRMLWidget(PythonQtAccess, QtWidgets.QWidget):
    mrmlSceneChanged = QtCore.Signal(object)
    _cppSignals = {"mrmlSceneChanged(vtkMRMLScene*)": "mrmlSceneChanged"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(PythonQtAccess, QtWidgets.QWidget):
    currentNodeChanged = QtCore.Signal(object)
    nodeAdded = QtCore.Signal(object)
    _cppSignals = {"currentNodeChanged(vtkMRMLNode*)": "currentNodeChanged",
                   "nodeAdded(vtkMRMLNode*)": "nodeAdded"}

    def __init__(self, parent=None):
        super().__init__(parent)
        self._combo = QtWidgets.QComboBox(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._combo)
        self._scene = None
        self._observer_tags = []
        self._node_types = []
        self._none_enabled = False
        self._none_display = "None"
        self._flags = {"addEnabled": True, "removeEnabled": True, "renameEnabled": False,
                       "editEnabled": False, "showHidden": False, "showChildNodeTypes": True,
                       "selectNodeUponCreation": True}
        self._base_name = ""
        self._current_id = None
        self._combo.currentIndexChanged.connect(self._on_index_changed)

    # scene ------------------------------------------------------------------------------------
    def setMRMLScene(self, scene):
        if self._scene is not None:
            for tag in self._observer_tags:
                self._scene.RemoveObserver(tag)
        self._scene = scene
        self._observer_tags = []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent):
                self._observer_tags.append(scene.AddObserver(event, lambda caller, event: self._refresh()))
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def _nodes(self):
        if self._scene is None:
            return []
        nodes = []
        collection = self._scene.GetNodes()
        for node in (collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())):
            if not any(node.IsA(t) for t in self._node_types):
                continue
            if not self._flags["showChildNodeTypes"] and node.GetClassName() not in self._node_types:
                continue
            if node.GetHideFromEditors() and not self._flags["showHidden"]:
                continue
            nodes.append(node)
        return nodes

    def _refresh(self):
        nodes = self._nodes()
        ids = [n.GetID() for n in nodes]
        previous = self._current_id
        self._combo.blockSignals(True)
        self._combo.clear()
        if self._none_enabled:
            self._combo.addItem(self._none_display, None)
        for node in nodes:
            self._combo.addItem(node.GetName(), node.GetID())
        if previous in ids:
            self._combo.setCurrentIndex(self._combo.findData(previous))
        elif nodes and not self._none_enabled:
            self._combo.setCurrentIndex(self._combo.findData(ids[0]))
        else:
            self._combo.setCurrentIndex(0 if self._combo.count() else -1)
        self._combo.blockSignals(False)
        self._on_index_changed(self._combo.currentIndex())

    def _on_index_changed(self, index):
        node_id = self._combo.itemData(index) if index >= 0 else None
        if node_id != self._current_id:
            self._current_id = node_id
            self.currentNodeChanged.emit(self.currentNode())

    # selection --------------------------------------------------------------------------------
    def currentNode(self):
        return self._scene.GetNodeByID(self._current_id) if (self._scene and self._current_id) else None

    def setCurrentNode(self, node):
        self.setCurrentNodeID(node.GetID() if node is not None else None)

    def setCurrentNodeID(self, node_id):
        index = self._combo.findData(node_id) if node_id else (0 if self._none_enabled else -1)
        if node_id and index < 0:
            return
        self._combo.setCurrentIndex(index)
        self._on_index_changed(index)

    def nodeCount(self):
        return len(self._nodes())

    def nodeFromIndex(self, index):
        nodes = self._nodes()
        return nodes[index] if 0 <= index < len(nodes) else None

    def comboBox(self):
        return self._combo

    def _set_node_types(self, types):
        self._node_types = list(types)
        self._refresh()

    def _set_none_enabled(self, enabled):
        self._none_enabled = bool(enabled)
        self._refresh()

    def _set_none_display(self, text):
        self._none_display = text
        if self._none_enabled:
            self._combo.setItemText(0, text)

    def _flag(name):
        return QtCore.Property(bool, lambda self: self._flags[name],
                               lambda self, value: self._flags.__setitem__(name, bool(value)))

    nodeTypes = QtCore.Property("QStringList", lambda self: self._node_types, _set_node_types)
    noneEnabled = QtCore.Property(bool, lambda self: self._none_enabled, _set_none_enabled)
    noneDisplay = QtCore.Property(str, lambda self: self._none_display, _set_none_display)
    baseName = QtCore.Property(str, lambda self: self._base_name, lambda self, v: setattr(self, "_base_name", v))
    currentNodeID = QtCore.Property(str, lambda self: self._current_id or "", setCurrentNodeID)
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    editEnabled = _flag("editEnabled")
    showHidden = _flag("showHidden")
    showChildNodeTypes = _flag("showChildNodeTypes")
    selectNodeUponCreation = _flag("selectNodeUponCreation")
    del _flag


WIDGET_CLASSES = {cls.__name__: cls for cls in (qMRMLWidget, qMRMLNodeComboBox)}
