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

    def connect(self, signature, slot):
        getattr(self, signature.split("(")[0]).connect(slot)

    def disconnect(self, signature, slot=None):
        signal = getattr(self, signature.split("(")[0])
        if slot is None:
            signal.disconnect()
        else:
            signal.disconnect(slot)


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
QFileDialog = QtWidgets.QFileDialog

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
