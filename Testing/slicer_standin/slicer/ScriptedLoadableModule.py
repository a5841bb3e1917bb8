"""``slicer.ScriptedLoadableModule`` for the stand-in (Slicer 5.8 base classes, trimmed).

The module object gets a ``parent`` carrying title, categories, contributors, help text ...;
the widget builds itself into a qMRMLWidget with a QVBoxLayout (as Slicer does when the module
is shown without a host panel); the logic finds or creates its singleton parameter node.
"""
from __future__ import annotations

import logging
import os
import sys
import unittest

import qt
import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


class _ModuleParent:
    """What qSlicerScriptedLoadableModule exposes to Python as ``self.parent``."""

    def __init__(self):
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.hidden = False
        self.icon = None


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = ["Andras Lasso (PerkLab, Queen's University), Steve Pieper (Isomics)"]
        slicer.selfTests[self.moduleName] = self.runTest

    def getDefaultModuleDocumentationLink(self, docPage=None):
        return f'<p>See <a href="https://github.com/">online documentation</a>.</p>'

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(sys.modules[type(self).__module__].__file__), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        module = sys.modules[type(self).__module__]
        testCase = getattr(module, self.moduleName + "Test")()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


def createModule(moduleClass):
    """Instantiate a module as Slicer's module factory does (tests call this)."""
    parent = _ModuleParent()
    module = moduleClass(parent)
    setattr(slicer.modules, module.moduleName.lower(), module)
    slicer.moduleNames.append(module.moduleName)
    return module


def createWidget(widgetClass):
    """Build a module panel as Slicer's qSlicerScriptedLoadableModuleWidget does: a parent
    widget with a vertical layout and the scene, then ``setup()``, then ``enter()``."""
    parent = slicer.qMRMLWidget()
    parent.setLayout(qt.QVBoxLayout())
    parent.setMRMLScene(slicer.mrmlScene)
    widget = widgetClass(parent)
    widget.setup()
    parent.isEntered = True
    widget.enter()
    return widget


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = False
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        if not hasattr(self.parent, "isEntered"):
            self.parent.isEntered = False
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(sys.modules[type(self).__module__].__file__), "Resources", filename)

    def cleanup(self):
        pass

    def enter(self):
        pass

    def exit(self):
        pass

    def setup(self):
        """Developer-mode reload/test buttons are not part of the stand-in."""


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        node = self._findParameterNodeInScene()
        if not node:
            node = self.createParameterNode()
            if self.isSingletonParameterNode:
                node.SetSingletonTag(self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node

    def _findParameterNodeInScene(self):
        for node in slicer.mrmlScene.GetNodesByClass("vtkMRMLScriptedModuleNode"):
            if node.GetAttribute("ModuleName") == self.moduleName:
                return node
        return None

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.SetName(slicer.mrmlScene.GetUniqueNameByString(self.moduleName))
        node.SetAttribute("ModuleName", self.moduleName)
        return node

    def getAllParameterNodes(self):
        return [n for n in slicer.mrmlScene.GetNodesByClass("vtkMRMLScriptedModuleNode")
                if n.GetAttribute("ModuleName") == self.moduleName]


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.messageDelay = 50

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)
