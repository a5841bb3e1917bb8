"""``slicer.ScriptedLoadableModule``: the four base classes, as in Slicer's
Base/Python/slicer/ScriptedLoadableModule.py, less the developer section (reload/test buttons).

Slicer's own file cannot be imported here: it needs PythonQt and the module manager. This keeps
the same constructors, attributes and parameter-node lookup (singleton node found with
``GetSingletonNode``, created with ``GenerateUniqueName``, ``ModuleName`` attribute), so module
code runs against them unchanged; ``createModule`` and ``createWidget`` do what the module
factory and the module panel do in the application.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import unittest

import qt
import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


class ModuleParent:
    """What qSlicerScriptedLoadableModule gives Python as ``self.parent`` (and slicer.modules.<name>)."""

    __slots__ = ("title", "categories", "dependencies", "contributors", "helpText", "acknowledgementText",
                 "hidden", "icon", "path")

    def __init__(self, path):
        self.path = path
        self.hidden, self.icon = False, None


class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = ["Andras Lasso (PerkLab, Queen's University), Steve Pieper (Isomics)"]
        parent.helpText = "This module was created from a template and the help section has not yet been updated."
        parent.acknowledgementText = "This work is supported by NA-MIC, NAC, BIRN, NCIGT, and the Slicer Community."
        moduleDir = os.path.dirname(self.parent.path)
        for iconExtension in (".svg", ".png"):
            iconPath = os.path.join(moduleDir, "Resources/Icons", self.moduleName + iconExtension)
            if os.path.isfile(iconPath):
                parent.icon = qt.QIcon(iconPath)
                break
        slicer.selfTests[self.moduleName] = self.runTest

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        module = importlib.import_module(self.__module__)
        className = self.moduleName + "Test"
        try:
            TestCaseClass = getattr(module, className)
        except AttributeError:
            raise AssertionError(f"Test case class not found: {self.__module__}.{className} ")
        testCase = TestCaseClass()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


def createModule(moduleClass):
    """Instantiate a scripted module as Slicer's module factory does; register it in slicer.modules."""
    parent = ModuleParent(os.path.abspath(sys.modules[moduleClass.__module__].__file__))
    module = moduleClass(parent)
    setattr(slicer.modules, module.moduleName.lower(), parent)
    slicer.moduleNames.append(module.moduleName)
    return module


def createWidget(widgetClass):
    """Build a module panel as qSlicerScriptedLoadableModuleWidget does: a qMRMLWidget with a
    vertical layout and the scene, then ``setup()``, then ``enter()`` if the class has one."""
    parent = slicer.qMRMLWidget()
    parent.setLayout(qt.QVBoxLayout())
    parent.setMRMLScene(slicer.mrmlScene)
    widget = widgetClass(parent)
    widget.setup()
    parent.isEntered = True
    if hasattr(widget, "enter"):  # qSlicerScriptedLoadableModuleWidget calls it only where defined
        widget.enter()
    return widget


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Widget"):
            self.moduleName = self.moduleName[:-6]
        self.developerMode = slicer.util.settingsValue("Developer/DeveloperMode", False, converter=slicer.util.toBool)
        if not parent:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if not parent:
            self.setup()
            self.parent.show()

    def resourcePath(self, filename):
        return os.path.join(os.path.dirname(slicer.util.modulePath(self.moduleName)), "Resources", filename)

    def cleanup(self):
        pass

    def setupDeveloperSection(self):
        """The reload/test buttons need the module manager: not in the stand-in."""

    def setup(self):
        self.setupDeveloperSection()


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = self.__class__.__name__
        if self.moduleName.endswith("Logic"):
            self.moduleName = self.moduleName[:-5]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        if self.isSingletonParameterNode:
            parameterNode = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if parameterNode:
                if parameterNode.GetAttribute("ModuleName") != self.moduleName:
                    parameterNode.SetAttribute("ModuleName", self.moduleName)
                return parameterNode
        else:
            for parameterNode in self.getAllParameterNodes():
                return parameterNode
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def getAllParameterNodes(self):
        found = []
        for index in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode")):
            parameterNode = slicer.mrmlScene.GetNthNodeByClass(index, "vtkMRMLScriptedModuleNode")
            if parameterNode.GetAttribute("ModuleName") == self.moduleName:
                found.append(parameterNode)
        return found

    def createParameterNode(self):
        if slicer.mrmlScene is None:
            return
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)  # owned by the Python variable now, as in Slicer
        if self.isSingletonParameterNode:
            node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.enableScreenshots = False
        self.screenshotScaleFactor = 1.0

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        if hasattr(self, "messageDelay"):
            msec = self.messageDelay
        if msec is None:
            msec = requestedDelay
        if msec is None:
            msec = 100
        slicer.util.delayDisplay(message, msec)

    def runTest(self):
        logging.warning("No test is defined in " + self.__class__.__name__)
