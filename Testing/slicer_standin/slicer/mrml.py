"""MRML nodes and scene for the stand-in, on real VTK objects.

Nodes are Python subclasses of ``vtk.vtkObject``: observers, ``Modified`` and ``ModifiedEvent`` are
VTK's own. A volume node holds a real ``vtkImageData`` (origin 0, spacing 1, as in Slicer: the
geometry lives in the node) and builds its IJKToRAS ``vtkMatrix4x4`` from origin, spacing and
direction cosines, like vtkMRMLVolumeNode in Slicer 5.8. Method names and argument orders follow
Slicer's; event ids are this stand-in's own (code must use the names, e.g. scene.NodeAddedEvent).
"""
from __future__ import annotations

import itertools

import numpy as np
import vtk


class vtkMRMLNode(vtk.vtkObject):
    """Name, ID, attributes, node references and batched Modified events."""

    _class_name = "vtkMRMLNode"
    _id_tag = "vtkMRMLNode"

    def __init__(self):
        super().__init__()
        self._name = ""
        self._id = None
        self._scene = None
        self._attributes = {}
        self._references = {}
        self._modify_depth = 0
        self._modified_pending = False
        self._hide_from_editors = False
        self._singleton_tag = None

    # identity -------------------------------------------------------------------------------
    def GetClassName(self):
        return self._class_name

    def IsA(self, class_name):
        return any(getattr(base, "_class_name", None) == class_name for base in type(self).__mro__)

    def GetID(self):
        return self._id

    def GetName(self):
        return self._name

    def SetName(self, name):
        if name != self._name:
            self._name = name
            self.Modified()

    def GetScene(self):
        return self._scene

    def GetHideFromEditors(self):
        return self._hide_from_editors

    def SetHideFromEditors(self, hide):
        self._hide_from_editors = bool(hide)

    def GetSingletonTag(self):
        return self._singleton_tag

    def SetSingletonTag(self, tag):
        self._singleton_tag = tag

    def GetAttribute(self, name):
        return self._attributes.get(name)

    def SetAttribute(self, name, value):
        self._attributes[name] = value
        self.Modified()

    def GetAttributeNames(self):
        return list(self._attributes)

    # modified batching (vtkMRMLNode::StartModify / EndModify) -------------------------------
    def Modified(self):
        if self._modify_depth > 0:
            self._modified_pending = True
            return
        super().Modified()

    def StartModify(self):
        previous = self._modify_depth
        self._modify_depth += 1
        return previous

    def EndModify(self, previous):
        self._modify_depth = previous
        if previous == 0 and self._modified_pending:
            self._modified_pending = False
            self.Modified()
        return previous

    # node references --------------------------------------------------------------------------
    def SetNodeReferenceID(self, role, node_id):
        if node_id:
            self._references[role] = node_id
        else:
            self._references.pop(role, None)
        self.Modified()

    def SetAndObserveNodeReferenceID(self, role, node_id):
        self.SetNodeReferenceID(role, node_id)

    def GetNodeReferenceID(self, role):
        return self._references.get(role)

    def GetNodeReference(self, role):
        node_id = self._references.get(role)
        return self._scene.GetNodeByID(node_id) if (node_id and self._scene) else None

    def RemoveNodeReferenceIDs(self, role):
        self.SetNodeReferenceID(role, None)


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """Parameter node: string parameters plus node references."""

    _class_name = "vtkMRMLScriptedModuleNode"

    def __init__(self):
        super().__init__()
        self._parameters = {}

    def SetParameter(self, name, value):
        value = str(value)
        if self._parameters.get(name) != value:
            self._parameters[name] = value
            self.Modified()

    def GetParameter(self, name):
        return self._parameters.get(name, "")

    def UnsetParameter(self, name):
        if self._parameters.pop(name, None) is not None:
            self.Modified()

    def GetParameterNames(self):
        return list(self._parameters)


class vtkMRMLColorTableNode(vtkMRMLNode):
    _class_name = "vtkMRMLColorTableNode"


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLNode):
    _class_name = "vtkMRMLScalarVolumeDisplayNode"

    def __init__(self):
        super().__init__()
        self._window, self._level = 256.0, 128.0
        self._auto_window_level = True
        self._interpolate = True
        self._color_node_id = "vtkMRMLColorTableNodeGrey"

    def GetWindow(self):
        return self._window

    def GetLevel(self):
        return self._level

    def SetWindowLevel(self, window, level):
        self._window, self._level = float(window), float(level)
        self.Modified()

    def GetAutoWindowLevel(self):
        return self._auto_window_level

    def SetAutoWindowLevel(self, flag):
        self._auto_window_level = bool(flag)
        self.Modified()

    def GetInterpolate(self):
        return self._interpolate

    def SetInterpolate(self, flag):
        self._interpolate = bool(flag)
        self.Modified()

    def GetColorNodeID(self):
        return self._color_node_id

    def SetAndObserveColorNodeID(self, node_id):
        self._color_node_id = node_id
        self.Modified()

    def SetDefaultColorMap(self):
        self.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")


class vtkMRMLVolumeNode(vtkMRMLNode):
    """Geometry (origin, spacing, IJK-to-RAS directions) plus a vtkImageData."""

    _class_name = "vtkMRMLVolumeNode"

    def __init__(self):
        super().__init__()
        self._origin = [0.0, 0.0, 0.0]
        self._spacing = [1.0, 1.0, 1.0]
        self._directions = np.eye(3)  # columns: RAS direction of I, J, K
        self._image_data = None

    def GetImageData(self):
        return self._image_data

    def SetAndObserveImageData(self, image_data):
        self._image_data = image_data
        self.Modified()

    def GetOrigin(self):
        return tuple(self._origin)

    def SetOrigin(self, *origin):
        self._origin = [float(v) for v in (origin[0] if len(origin) == 1 else origin)]
        self.Modified()

    def GetSpacing(self):
        return tuple(self._spacing)

    def SetSpacing(self, *spacing):
        self._spacing = [float(v) for v in (spacing[0] if len(spacing) == 1 else spacing)]
        self.Modified()

    def GetIJKToRASDirectionMatrix(self, matrix):
        matrix.Identity()
        for row in range(3):
            for column in range(3):
                matrix.SetElement(row, column, self._directions[row, column])

    def SetIJKToRASDirectionMatrix(self, matrix):
        self._directions = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
        self.Modified()

    def GetIJKToRASMatrix(self, matrix):
        matrix.Identity()
        for row in range(3):
            for column in range(3):
                matrix.SetElement(row, column, self._directions[row, column] * self._spacing[column])
            matrix.SetElement(row, 3, self._origin[row])

    def SetIJKToRASMatrix(self, matrix):
        columns = np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])
        spacing = np.linalg.norm(columns, axis=0)
        self._spacing = [float(s) for s in spacing]
        self._directions = columns / spacing
        self._origin = [matrix.GetElement(r, 3) for r in range(3)]
        self.Modified()

    def GetRASToIJKMatrix(self, matrix):
        self.GetIJKToRASMatrix(matrix)
        matrix.Invert()

    def CopyOrientation(self, node):
        self._origin = list(node.GetOrigin())
        self._spacing = list(node.GetSpacing())
        direction = vtk.vtkMatrix4x4()
        node.GetIJKToRASDirectionMatrix(direction)
        self.SetIJKToRASDirectionMatrix(direction)

    def GetDisplayNode(self):
        return self.GetNodeReference("display")

    def GetTransformNodeID(self):
        return self.GetNodeReferenceID("transform")

    def SetAndObserveTransformNodeID(self, node_id):
        self.SetNodeReferenceID("transform", node_id)

    def GetStorageNode(self):
        return None

    def CreateDefaultDisplayNodes(self):
        if self.GetDisplayNode() is None and self._scene is not None:
            display = self._scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
            self.SetNodeReferenceID("display", display.GetID())


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    _class_name = "vtkMRMLScalarVolumeNode"

    def GetScalarVolumeDisplayNode(self):
        return self.GetDisplayNode()


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    _class_name = "vtkMRMLLabelMapVolumeNode"


class vtkMRMLSubjectHierarchyNode(vtkMRMLNode):
    """Items (id -> data node, parent, name); every data node gets an item under the scene."""

    _class_name = "vtkMRMLSubjectHierarchyNode"
    _INVALID = 0
    _SCENE = 1

    def __init__(self):
        super().__init__()
        self._items = {self._SCENE: {"node": None, "parent": self._INVALID, "name": "Scene"}}
        self._next_item = itertools.count(2)

    @staticmethod
    def GetSubjectHierarchyNode(scene):
        return scene._subject_hierarchy

    def GetInvalidItemID(self):
        return self._INVALID

    def GetSceneItemID(self):
        return self._SCENE

    def CreateFolderItem(self, parent, name):
        item = next(self._next_item)
        self._items[item] = {"node": None, "parent": parent, "name": name}
        return item

    def _add_data_node(self, node):
        item = next(self._next_item)
        self._items[item] = {"node": node, "parent": self._SCENE, "name": node.GetName()}
        return item

    def _remove_data_node(self, node):
        for item, entry in list(self._items.items()):
            if entry["node"] is node:
                del self._items[item]

    def GetItemByDataNode(self, node):
        for item, entry in self._items.items():
            if entry["node"] is node:
                return item
        return self._INVALID

    def GetItemDataNode(self, item):
        return self._items.get(item, {}).get("node")

    def GetItemParent(self, item):
        return self._items.get(item, {}).get("parent", self._INVALID)

    def SetItemParent(self, item, parent):
        if item in self._items and parent in self._items:
            self._items[item]["parent"] = parent
            self.Modified()

    def GetItemName(self, item):
        entry = self._items.get(item)
        if entry is None:
            return ""
        return entry["node"].GetName() if entry["node"] is not None else entry["name"]


NODE_CLASSES = {cls._class_name: cls for cls in (
    vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeDisplayNode, vtkMRMLColorTableNode)}


class _NodeCollection(list):
    """The vtkCollection interface that scene queries return."""

    def GetNumberOfItems(self):
        return len(self)

    def GetItemAsObject(self, index):
        return self[index]


class vtkMRMLScene(vtk.vtkObject):
    """Nodes by ID, unique names, and the add/remove/close events widgets observe."""

    NodeAddedEvent = vtk.vtkCommand.UserEvent + 8193
    NodeRemovedEvent = vtk.vtkCommand.UserEvent + 8195
    StartCloseEvent = vtk.vtkCommand.UserEvent + 0xF002
    EndCloseEvent = vtk.vtkCommand.UserEvent + 0xF003

    def __init__(self):
        super().__init__()
        self._nodes = {}
        self._counters = {}
        self._subject_hierarchy = vtkMRMLSubjectHierarchyNode()

    def GetClassName(self):
        return "vtkMRMLScene"

    def CreateNodeByClass(self, class_name):
        try:
            return NODE_CLASSES[class_name]()
        except KeyError:
            raise ValueError(f"stand-in scene cannot create {class_name}") from None

    def AddNode(self, node):
        if node.GetSingletonTag():
            for existing in self._nodes.values():
                if (existing.GetSingletonTag() == node.GetSingletonTag()
                        and existing.GetClassName() == node.GetClassName()):
                    return existing
        tag = node.GetClassName()
        number = self._counters.get(tag, 0) + 1
        self._counters[tag] = number
        node._id = f"{tag}{number}"
        node._scene = self
        if not node.GetName():
            node._name = self.GetUniqueNameByString(tag.replace("vtkMRML", "").replace("Node", ""))
        self._nodes[node._id] = node
        if not node.IsA("vtkMRMLDisplayNode") and not node.IsA("vtkMRMLScriptedModuleNode"):
            self._subject_hierarchy._add_data_node(node)
        self.InvokeEvent(self.NodeAddedEvent)
        return node

    def AddNewNodeByClass(self, class_name, name=""):
        node = self.CreateNodeByClass(class_name)
        if name:
            node.SetName(name)
        return self.AddNode(node)

    def RemoveNode(self, node):
        if node is None or node.GetID() not in self._nodes:
            return
        display = node.GetNodeReference("display") if hasattr(node, "GetNodeReference") else None
        del self._nodes[node.GetID()]
        self._subject_hierarchy._remove_data_node(node)
        node._scene = None
        self.InvokeEvent(self.NodeRemovedEvent)
        if display is not None:
            self.RemoveNode(display)

    def GetNodeByID(self, node_id):
        return self._nodes.get(node_id)

    def GetNodes(self):
        return _NodeCollection(self._nodes.values())

    def GetNumberOfNodes(self):
        return len(self._nodes)

    def GetNodesByClass(self, class_name):
        return _NodeCollection(n for n in self._nodes.values() if n.IsA(class_name))

    def GetFirstNodeByClass(self, class_name):
        nodes = self.GetNodesByClass(class_name)
        return nodes[0] if nodes else None

    def GetFirstNodeByName(self, name):
        return next((n for n in self._nodes.values() if n.GetName() == name), None)

    def GetNodesByName(self, name):
        return _NodeCollection(n for n in self._nodes.values() if n.GetName() == name)

    def GetSingletonNode(self, tag, class_name):
        return next((n for n in self._nodes.values()
                     if n.GetSingletonTag() == tag and n.IsA(class_name)), None)

    def GetUniqueNameByString(self, base):
        names = {n.GetName() for n in self._nodes.values()}
        if base not in names:
            return base
        for index in itertools.count(1):
            candidate = f"{base}_{index}"
            if candidate not in names:
                return candidate

    def Clear(self, remove_singletons=False):
        self.InvokeEvent(self.StartCloseEvent)
        for node in list(self._nodes.values()):
            if remove_singletons or not node.GetSingletonTag():
                self.RemoveNode(node)
        self.InvokeEvent(self.EndCloseEvent)
