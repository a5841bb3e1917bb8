"""Stand-in for Slicer's ``ctk`` module: the CTK widgets the CycleINR panels use, on PySide6.

Each keeps the CTK class name, Qt properties and signals that Slicer 5.8 exposes through PythonQt
(ctkCollapsibleButton: text, collapsed, contentsChanged; ctkSliderWidget: minimum, maximum, value,
singleStep, pageStep, decimals, suffix, valueChanged(double); ctkPathLineEdit: currentPath,
nameFilters, currentPathChanged(QString)). Drawing is simplified; behaviour is what tests check.
"""
from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from qt import PythonQtAccess


class ctkCollapsibleButton(PythonQtAccess, QtWidgets.QGroupBox):
    """A titled box whose contents hide when collapsed (clicking the title toggles it)."""

    contentsCollapsed = QtCore.Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._text = ""
        self._collapsed = False
        self._update_title()

    def _update_title(self):
        arrow = "\u25b8" if self._collapsed else "\u25be"
        QtWidgets.QGroupBox.setTitle(self, f"{arrow} {self._text}")

    def _apply_collapsed(self):
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)

    def showEvent(self, event):
        self._apply_collapsed()
        super().showEvent(event)

    def mousePressEvent(self, event):
        if event.position().y() < QtWidgets.QWidget.fontMetrics(self).height() + 6:
            self._set_collapsed(not self._collapsed)
        super().mousePressEvent(event)

    def _set_text(self, text):
        self._text = text
        self._update_title()

    def _set_collapsed(self, collapsed):
        collapsed = bool(collapsed)
        if collapsed == self._collapsed:
            return
        self._collapsed = collapsed
        self._update_title()
        self._apply_collapsed()
        # a .ui file sets the property before it adds the children: apply it again once they exist
        QtCore.QTimer.singleShot(0, self._apply_collapsed)
        self.contentsCollapsed.emit(collapsed)

    text = QtCore.Property(str, lambda self: self._text, _set_text)
    collapsed = QtCore.Property(bool, lambda self: self._collapsed, _set_collapsed)


class ctkSliderWidget(PythonQtAccess, QtWidgets.QWidget):
    """A slider and a spin box holding one double value."""

    valueChanged = QtCore.Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._steps_per_unit = 100
        self._slider = QtWidgets.QSlider(QtCore.Qt.Horizontal, self)
        self._spin = QtWidgets.QDoubleSpinBox(self)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._slider, 1)
        layout.addWidget(self._spin)
        self._spin.valueChanged.connect(self._from_spin)
        self._slider.valueChanged.connect(self._from_slider)
        self._set_range(0.0, 99.0)

    def _set_range(self, minimum, maximum):
        self._spin.setRange(minimum, maximum)
        self._slider.blockSignals(True)
        self._slider.setRange(round(minimum * self._steps_per_unit), round(maximum * self._steps_per_unit))
        self._slider.setValue(round(self._spin.value() * self._steps_per_unit))
        self._slider.blockSignals(False)

    def _from_spin(self, value):
        self._slider.blockSignals(True)
        self._slider.setValue(round(value * self._steps_per_unit))
        self._slider.blockSignals(False)
        self.valueChanged.emit(value)

    def _from_slider(self, position):
        self._spin.setValue(position / self._steps_per_unit)

    def setValue(self, value):
        self._spin.setValue(value)

    def setRange(self, minimum, maximum):
        self._set_range(minimum, maximum)

    def slider(self):
        return self._slider

    def spinBox(self):
        return self._spin

    minimum = QtCore.Property(float, lambda self: self._spin.minimum(),
                              lambda self, v: self._set_range(v, max(v, self._spin.maximum())))
    maximum = QtCore.Property(float, lambda self: self._spin.maximum(),
                              lambda self, v: self._set_range(min(v, self._spin.minimum()), v))
    value = QtCore.Property(float, lambda self: self._spin.value(), lambda self, v: self._spin.setValue(v))
    singleStep = QtCore.Property(float, lambda self: self._spin.singleStep(),
                                 lambda self, v: (self._spin.setSingleStep(v), self._slider.setSingleStep(
                                     max(1, round(v * self._steps_per_unit)))))
    pageStep = QtCore.Property(float, lambda self: self._slider.pageStep() / self._steps_per_unit,
                               lambda self, v: self._slider.setPageStep(max(1, round(v * self._steps_per_unit))))
    decimals = QtCore.Property(int, lambda self: self._spin.decimals(), lambda self, v: self._spin.setDecimals(v))
    suffix = QtCore.Property(str, lambda self: self._spin.suffix(), lambda self, v: self._spin.setSuffix(v))


class ctkPathLineEdit(PythonQtAccess, QtWidgets.QWidget):
    """A line edit with a browse button holding a file path."""

    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._edit = QtWidgets.QLineEdit(self)
        self._button = QtWidgets.QToolButton(self)
        self._button.setText("...")
        self._filters = []
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._edit, 1)
        layout.addWidget(self._button)
        self._edit.textChanged.connect(self.currentPathChanged.emit)

    def lineEdit(self):
        return self._edit

    def setCurrentPath(self, path):
        self._edit.setText(path)

    def _set_placeholder(self, text):
        self._edit.setPlaceholderText(text)

    currentPath = QtCore.Property(str, lambda self: self._edit.text(), lambda self, v: self._edit.setText(v))
    nameFilters = QtCore.Property("QStringList", lambda self: self._filters,
                                  lambda self, v: setattr(self, "_filters", list(v)))
    placeholderText = QtCore.Property(str, lambda self: self._edit.placeholderText(), _set_placeholder)


WIDGET_CLASSES = {cls.__name__: cls for cls in (ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit)}
