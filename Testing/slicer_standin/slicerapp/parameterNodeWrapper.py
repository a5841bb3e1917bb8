"""``slicer.parameterNodeWrapper`` for the stand-in: typed parameters stored in a
vtkMRMLScriptedModuleNode and bound to widgets by their ``SlicerParameterName`` property.

Follows Slicer 5.8 Base/Python/slicer/parameterNodeWrapper (wrapper.py, serializers.py,
validators.py, guiConnectors.py) for the types and widgets used here: bool, int, float, str,
pathlib.Path and MRML nodes; WithinRange, Minimum, Maximum, Choice and Default annotations;
QCheckBox, QSpinBox, QSlider, QDoubleSpinBox, ctkSliderWidget, QComboBox (with Choice),
QLineEdit, ctkPathLineEdit and qMRMLNodeComboBox. As in Slicer, a value outside its validators is
refused with ValueError, and every GUI change writes the parameter node (ModifiedEvent).
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import typing

import vtk

import ctk
import qt
import slicer

__all__ = ["parameterNodeWrapper", "WithinRange", "Minimum", "Maximum", "Choice", "Default",
           "SlicerParameterNamePropertyName", "isParameterNodeWrapper"]

SlicerParameterNamePropertyName = "SlicerParameterName"


# --- annotations ------------------------------------------------------------------------------
@dataclasses.dataclass
class WithinRange:
    minimum: float
    maximum: float

    def validate(self, value):
        if not (self.minimum <= value <= self.maximum):
            raise ValueError(f"Value must be within range [{self.minimum}, {self.maximum}], is {value}")


@dataclasses.dataclass
class Minimum:
    minimum: float

    def validate(self, value):
        if value < self.minimum:
            raise ValueError(f"Value must be greater than or equal to {self.minimum}, is {value}")


@dataclasses.dataclass
class Maximum:
    maximum: float

    def validate(self, value):
        if value > self.maximum:
            raise ValueError(f"Value must be less than or equal to {self.maximum}, is {value}")


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"Value '{value}' is not within the set of valid choices {self.choices}")


@dataclasses.dataclass
class Default:
    value: typing.Any


def _split(annotated):
    if typing.get_origin(annotated) is typing.Annotated:
        base, *annotations = typing.get_args(annotated)
        return base, list(annotations)
    return annotated, []


def _node_class(datatype):
    """The MRML class of a node type or Optional[node type], else None."""
    if typing.get_origin(datatype) is typing.Union:
        args = [a for a in typing.get_args(datatype) if a is not type(None)]
        datatype = args[0] if len(args) == 1 else None
    if isinstance(datatype, type) and issubclass(datatype, slicer.vtkMRMLNode):
        return datatype
    return None


class NotNone:
    def validate(self, value):
        if value is None:
            raise ValueError("Value must not be None")


class IsInstance:
    def __init__(self, classtype):
        self.classtype = classtype

    def validate(self, value):
        if value is not None and not isinstance(value, self.classtype):
            raise TypeError(f"Value must be of type '{self.classtype}', is type '{type(value)}' value '{value}'")


# --- serializers: value <-> parameter node (serializers.py: Number, String, Path, Bool, Node) ---
class _Serializer:
    """bool, int, float, str, pathlib.Path: a parameter string, validated before it is written."""

    _DEFAULTS = {bool: False, int: 0, float: 0, str: "", pathlib.Path: pathlib.Path()}

    def __init__(self, datatype, validators):
        self.datatype = datatype
        accepted = (int, float) if datatype is float else datatype
        self.validators = [NotNone(), IsInstance(accepted)] + validators

    def default(self):
        return self._DEFAULTS[self.datatype]

    def isIn(self, node, name):
        return node.HasParameter(name)

    def write(self, node, name, value):
        for validator in self.validators:
            validator.validate(value)
        if self.datatype is bool:
            node.SetParameter(name, "True" if value else "False")
        else:
            node.SetParameter(name, str(value))

    def read(self, node, name):
        text = node.GetParameter(name)
        if self.datatype is bool:
            return text == "True"
        return self.datatype(text)


class _NodeSerializer:
    def __init__(self, node_class, validators):
        self.node_class = node_class
        self.validators = [IsInstance(node_class)] + validators

    def default(self):
        return None

    def isIn(self, node, name):
        return node.HasParameter(name)

    def write(self, node, name, value):
        for validator in self.validators:
            validator.validate(value)
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)

    def read(self, node, name):
        return node.GetNodeReference(name)


def _serializer(datatype):
    """Only the types the stand-in implements; Slicer also has list, tuple, dict, enum, Union,
    parameterPack ...: those are refused here (a test then fails rather than passes wrongly)."""
    base, annotations = _split(datatype)
    validators = [a for a in annotations if hasattr(a, "validate")]
    default = next((a.value for a in annotations if isinstance(a, Default)), None)
    unused = [a for a in annotations if not hasattr(a, "validate") and not isinstance(a, Default)]
    if unused:
        logging.warning(f"Unused annotations: {unused}")  # as wrapper.py does
    node_class = _node_class(base)
    if node_class is not None:
        return _NodeSerializer(node_class, validators), default
    if base in (bool, int, float, str, pathlib.Path):
        return _Serializer(base, validators), default
    raise Exception(f"Unable to create serializer for type: {datatype}")


# --- GUI connectors: widget <-> value ---------------------------------------------------------
class _Connector:
    def __init__(self, widget, signal, read, write):
        self.widget, self._signal, self.read, self.write = widget, signal, read, write
        self._callback = None

    def onChanged(self, callback):
        if self._callback is not None:
            self._signal.disconnect(self._changed)
        self._callback = callback
        if callback is not None:
            self._signal.connect(self._changed)

    def _changed(self, *args):
        if self._callback:
            self._callback()


def _set_range(widget, annotations):
    within = next((a for a in annotations if isinstance(a, WithinRange)), None)
    if within is not None:
        widget.minimum, widget.maximum = within.minimum, within.maximum


def _connector(widget, datatype):
    base, annotations = _split(datatype)
    kind = type(widget)
    if base is bool and kind is qt.QCheckBox:
        return _Connector(widget, widget.stateChanged, lambda: widget.checked,
                          lambda v: setattr(widget, "checked", v))
    if base is int and kind in (qt.QSpinBox, qt.QSlider):
        _set_range(widget, annotations)
        return _Connector(widget, widget.valueChanged, lambda: widget.value,
                          lambda v: setattr(widget, "value", v))
    if base is float and kind in (qt.QDoubleSpinBox, ctk.ctkSliderWidget):
        _set_range(widget, annotations)
        return _Connector(widget, widget.valueChanged, lambda: widget.value,
                          lambda v: setattr(widget, "value", v))
    if kind is qt.QComboBox and base in (int, float, str, bool):
        choice = next((a for a in annotations if isinstance(a, Choice)), None)
        if choice is None:
            raise RuntimeError("ComboBoxToStringableConnector requires the Choice annotation to be used.")
        widget.clear()
        for item in choice.choices:
            widget.addItem(str(item))

        def write(value):
            if value not in choice.choices:
                raise ValueError(f"Unable to find value {value} in choices {choice.choices}")
            widget.currentIndex = choice.choices.index(value)
        return _Connector(widget, widget.currentIndexChanged,
                          lambda: choice.choices[widget.currentIndex], write)
    if base is str and kind is qt.QLineEdit:
        return _Connector(widget, widget.textChanged, lambda: widget.text,
                          lambda v: setattr(widget, "text", v))
    if base is pathlib.Path and kind is ctk.ctkPathLineEdit:
        return _Connector(widget, widget.currentPathChanged, lambda: pathlib.Path(widget.currentPath),
                          lambda v: setattr(widget, "currentPath", str(v)))
    if _node_class(base) is not None and kind is slicer.qMRMLNodeComboBox:
        widget.nodeTypes = [_node_class(base).__name__]
        return _Connector(widget, widget.currentNodeChanged, widget.currentNode, widget.setCurrentNode)
    raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{kind}'")


# --- the wrapper ------------------------------------------------------------------------------
def _process(classtype):
    hints = typing.get_type_hints(classtype, include_extras=True)
    parameters = {}
    for name, datatype in hints.items():
        serializer, annotated_default = _serializer(datatype)
        if name in classtype.__dict__:
            default = classtype.__dict__[name]
        elif annotated_default is not None:
            default = annotated_default
        else:
            default = serializer.default()
        parameters[name] = (serializer, default, datatype)
        setattr(classtype, name, property(
            lambda self, n=name: self.getValue(n),
            lambda self, value, n=name: self.setValue(n, value)))

    def __init__(self, parameterNode, prefix=None):
        self.parameterNode = parameterNode
        self._parameterGUIs = {}
        self._nextParameterGUIsTag = 0
        self._updatingGUIFromParameterNode = False
        for name, (serializer, default, _datatype) in parameters.items():
            if not serializer.isIn(parameterNode, name):
                serializer.write(parameterNode, name, default)

    def getValue(self, name):
        return parameters[name][0].read(self.parameterNode, name)

    def setValue(self, name, value):
        parameters[name][0].write(self.parameterNode, name, value)

    def _updateGUI(self):
        if self._updatingGUIFromParameterNode:
            return
        try:
            self._updatingGUIFromParameterNode = True
            for mapping in list(self._parameterGUIs.values()):
                for name, connector in mapping.items():
                    connector.write(self.getValue(name))
        finally:
            self._updatingGUIFromParameterNode = False

    def connectParametersToGui(self, mapping):
        for name in mapping:
            if name not in parameters:
                raise ValueError(f"Cannot find a param with the given name: {name}")
        connectors = {name: _connector(widget, parameters[name][2]) for name, widget in mapping.items()}
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = connectors
        for name, connector in connectors.items():
            connector.write(self.getValue(name))

            def callback(name=name, connector=connector):
                if not self._updatingGUIFromParameterNode:
                    with slicer.util.NodeModify(self.parameterNode):
                        self.setValue(name, connector.read())
            connector.onChanged(callback)
        self.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: _updateGUI(self))
        return tag

    def connectGui(self, gui):
        from PySide6 import QtWidgets
        widgets = (gui.findChildren(QtWidgets.QWidget) if hasattr(gui, "isWidgetType")
                   else list(vars(gui).values()))
        mapping = {}
        for widget in widgets:
            name = widget.property(SlicerParameterNamePropertyName) if hasattr(widget, "property") else None
            if name:
                mapping[name] = widget
        return connectParametersToGui(self, mapping)

    def disconnectGui(self, tag):
        for connector in self._parameterGUIs.pop(tag, {}).values():
            connector.onChanged(None)

    members = dict(
        __init__=__init__, allParameters=parameters, _is_parameter_node_wrapper=True,
        getValue=getValue, setValue=setValue, connectGui=connectGui,
        connectParametersToGui=connectParametersToGui, disconnectGui=disconnectGui,
        default=lambda self, name: parameters[name][1],
        StartModify=lambda self: self.parameterNode.StartModify(),
        EndModify=lambda self, was: self.parameterNode.EndModify(was),
        AddObserver=lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority),
        RemoveObserver=lambda self, tag: self.parameterNode.RemoveObserver(tag),
        Modified=lambda self: self.parameterNode.Modified())
    for key, value in members.items():
        if key != "__init__" and key in classtype.__dict__:
            raise ValueError(f"Cannot use reserved name '{key}' in a parameterNodeWrapper")
        setattr(classtype, key, value)
    return classtype


def parameterNodeWrapper(classtype=None):
    if classtype is None:
        return _process
    return _process(classtype)


def isParameterNodeWrapper(classOrObj):
    return getattr(classOrObj, "_is_parameter_node_wrapper", False)
