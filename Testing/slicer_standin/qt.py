"""Stand-in for Slicer's ``qt`` module (PythonQt), built on real PySide6 widgets.

What PythonQt does and this reproduces, because module code relies on it:
- Qt properties read and write as attributes: ``button.text = "Cancel"``, ``bar.value``, ``box.checked``
  (PySide6 would hand back bound methods; here ``button.text()`` fails as it does in Slicer);
- ``obj.connect("clicked(bool)", slot)`` besides ``obj.clicked.connect(slot)``;
- every class in this module is the class ``slicer.util.loadUI`` instantiates for that .ui name, so
  ``type(widget) == qt.QCheckBox`` holds as it does in Slicer.
Mirrors the PythonQt bundled with Slicer 5.8 (Qt 5.15); it runs on Qt 6 through PySide6.
"""
from __future__ import annotations

import types

from PySide6 import QtCore, QtGui, QtWidgets

_property_names_cache: dict[type, frozenset] = {}
_reading: set = set()


def _qt_property_names(cls) -> frozenset:
    names = _property_names_cache.get(cls)
    if names is None:
        meta = cls.staticMetaObject
        names = frozenset(meta.property(index).name() for index in range(meta.propertyCount()))
        _property_names_cache[cls] = names
    return names


class PythonQtAccess:
    """Mixin: Qt properties as attributes and string-signature ``connect``, as PythonQt offers."""

    def __getattribute__(self, name):
        if name[:1] != "_" and name in _qt_property_names(type(self)):
            key = (id(self), name)
            # shiboken looks a virtual getter (QProgressBar::text) up by name while reading the
            # property: that inner lookup must see the C++ method, as PythonQt's would
            if key not in _reading:
                _reading.add(key)
                try:
                    return QtCore.QObject.property(self, name)
                finally:
                    _reading.discard(key)
        if name in ("connect", "disconnect"):  # shiboken would hand out QObject's static ones
            return types.MethodType(getattr(PythonQtAccess, name), self)
        return super().__getattribute__(name)

    def __setattr__(self, name, value):
        if name[:1] != "_" and name in _qt_property_names(type(self)):
            if not QtCore.QObject.setProperty(self, name, value):
                raise AttributeError(f"cannot set Qt property {name!r} to {value!r}")
            return
        super().__setattr__(name, value)

    # C++ signatures of signals declared in Python (PySide6 lists them with PyObject arguments)
    _cppSignals: dict[str, str] = {}

    @property
    def name(self):
        """PythonQt exposes objectName as ``name`` (util.childWidgetVariables reads it)."""
        return QtCore.QObject.objectName(self)

    def _signalName(self, signature):
        """The signal for a C++ signature such as ``"clicked(bool)"``; anything else raises.

        PythonQt finds a signal by its exact normalised signature and refuses an unknown one
        (``connect`` fails); here that is an error, so a misspelt signature cannot pass a test.
        """
        normalised = QtCore.QMetaObject.normalizedSignature(signature).data().decode()
        if normalised in type(self)._cppSignals:
            return type(self)._cppSignals[normalised]
        meta = QtCore.QObject.metaObject(self)
        for index in range(meta.methodCount()):
            method = meta.method(index)
            if method.methodType() == QtCore.QMetaMethod.Signal and method.methodSignature().data().decode() == normalised:
                if "PyObject" not in normalised:
                    return normalised.split("(")[0]
        raise ValueError(f"{type(self).__name__} has no signal {signature!r}")

    def connect(self, signature, slot):
        getattr(self, self._signalName(signature)).connect(slot)
        return True

    def disconnect(self, signature, slot=None):
        signal = getattr(self, self._signalName(signature))
        if slot is None:
            signal.disconnect()
        else:
            signal.disconnect(slot)
        return True


def _wrap(base):
    return type(base.__name__, (PythonQtAccess, base), {"__module__": __name__})


# Widgets and objects the CycleINR modules and their .ui files use.
QWidget = _wrap(QtWidgets.QWidget)
QFrame = _wrap(QtWidgets.QFrame)
QLabel = _wrap(QtWidgets.QLabel)
QPushButton = _wrap(QtWidgets.QPushButton)
QToolButton = _wrap(QtWidgets.QToolButton)
QCheckBox = _wrap(QtWidgets.QCheckBox)
QRadioButton = _wrap(QtWidgets.QRadioButton)
QComboBox = _wrap(QtWidgets.QComboBox)
QSpinBox = _wrap(QtWidgets.QSpinBox)
QDoubleSpinBox = _wrap(QtWidgets.QDoubleSpinBox)
QLineEdit = _wrap(QtWidgets.QLineEdit)
QTextEdit = _wrap(QtWidgets.QTextEdit)
QPlainTextEdit = _wrap(QtWidgets.QPlainTextEdit)
QProgressBar = _wrap(QtWidgets.QProgressBar)
QGroupBox = _wrap(QtWidgets.QGroupBox)
QSlider = _wrap(QtWidgets.QSlider)
QTimer = _wrap(QtCore.QTimer)
QMessageBox = _wrap(QtWidgets.QMessageBox)
QDialog = _wrap(QtWidgets.QDialog)
QFileDialog = QtWidgets.QFileDialog
QFile = QtCore.QFile

WIDGET_CLASSES = {cls.__name__: cls for cls in (
    QWidget, QFrame, QLabel, QPushButton, QToolButton, QCheckBox, QRadioButton, QComboBox,
    QSpinBox, QDoubleSpinBox, QLineEdit, QTextEdit, QPlainTextEdit, QProgressBar, QGroupBox, QSlider)}

# Plain Qt types, passed through.
Qt = QtCore.Qt
QObject = QtCore.QObject
QSettings = QtCore.QSettings
QSize = QtCore.QSize
QColor = QtGui.QColor
QPalette = QtGui.QPalette
QIcon = QtGui.QIcon
QPixmap = QtGui.QPixmap
QCursor = QtGui.QCursor
QApplication = QtWidgets.QApplication
QVBoxLayout = QtWidgets.QVBoxLayout
QHBoxLayout = QtWidgets.QHBoxLayout
QFormLayout = QtWidgets.QFormLayout
QSizePolicy = QtWidgets.QSizePolicy


class QUiLoader:
    """Slicer's PythonQt ``qt.QUiLoader``: loads a Designer file with Qt, CTK and qMRML widgets.

    As in Slicer, ``mrmlSceneChanged(vtkMRMLScene*) -> setMRMLScene(vtkMRMLScene*)`` connections
    in the file are made (a widget the file does not connect gets no scene); a widget class or a
    connection the stand-in does not have is an error, never silently dropped.
    """

    def load(self, device, parentWidget=None):
        import xml.etree.ElementTree as ElementTree

        import ctk
        from PySide6.QtUiTools import QUiLoader as PySideLoader
        from slicerapp import widgets

        classes = {**WIDGET_CLASSES, **ctk.WIDGET_CLASSES, **widgets.WIDGET_CLASSES}
        source = device.fileName() if isinstance(device, QtCore.QFile) else "the .ui data"

        class Loader(PySideLoader):
            def createWidget(self, className, parent=None, name=""):
                cls = classes.get(className)
                if cls is None:
                    raise RuntimeError(f"{source}: widget class {className} is not in the stand-in")
                widget = cls(parent)
                widget.setObjectName(name)
                return widget

        root = ElementTree.fromstring(bytes(device.readAll().data()))
        connections = root.find("connections")
        sceneLinks = []
        if connections is not None:
            for connection in connections.findall("connection"):
                signal, slot = connection.findtext("signal"), connection.findtext("slot")
                if signal == "mrmlSceneChanged(vtkMRMLScene*)" and slot == "setMRMLScene(vtkMRMLScene*)":
                    sceneLinks.append((connection.findtext("sender"), connection.findtext("receiver")))
                else:
                    raise RuntimeError(f"{source}: connection {signal} -> {slot} is not in the stand-in")
            root.remove(connections)
        buffer = QtCore.QBuffer()
        buffer.setData(ElementTree.tostring(root))
        buffer.open(QtCore.QIODevice.ReadOnly)
        widget = Loader().load(buffer, parentWidget)
        if widget is None:
            return None
        for senderName, receiverName in sceneLinks:
            sender = widget if QtCore.QObject.objectName(widget) == senderName else \
                widget.findChild(QtCore.QObject, senderName)
            receiver = widget.findChild(QtCore.QObject, receiverName)
            if sender is None or receiver is None:
                raise RuntimeError(f"{source}: connection between unknown widgets {senderName}, {receiverName}")
            sender.mrmlSceneChanged.connect(receiver.setMRMLScene)
        return widget
