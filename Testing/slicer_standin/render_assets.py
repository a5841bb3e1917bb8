"""Render the extension's icons and panel screenshots offscreen (run from the repository root):

    .venv/bin/python Testing/slicer_standin/render_assets.py

Screenshots are the real CycleINRSR panel (its .ui and Widget code) on slicer-core's MRML with
the Qt stand-in, on the committed chest CT crop, with the bundled CPU-sized CT model.
"""
import os
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path[:0] = [os.path.join(REPO, "Testing", "slicer_standin"), os.path.join(REPO, "CycleINRSR")]

import slicerapp  # noqa: E402
from PySide6 import QtCore, QtGui  # noqa: E402

slicer = slicerapp.start()


def draw_icon(path, size=128, accent="#2a7fd4"):
    """Thick slices on the left become thin slices on the right."""
    image = QtGui.QImage(size, size, QtGui.QImage.Format_ARGB32)
    image.fill(QtCore.Qt.transparent)
    painter = QtGui.QPainter(image)
    painter.setRenderHint(QtGui.QPainter.Antialiasing)
    unit = size / 128
    painter.setPen(QtCore.Qt.NoPen)
    painter.setBrush(QtGui.QColor("#4a4a4a"))
    for index in range(3):
        painter.drawRoundedRect(QtCore.QRectF(8 * unit, (14 + 36 * index) * unit, 40 * unit, 26 * unit), 4 * unit, 4 * unit)
    painter.setBrush(QtGui.QColor(accent))
    arrow = QtGui.QPolygonF([QtCore.QPointF(54 * unit, 54 * unit), QtCore.QPointF(66 * unit, 54 * unit),
                             QtCore.QPointF(66 * unit, 46 * unit), QtCore.QPointF(78 * unit, 64 * unit),
                             QtCore.QPointF(66 * unit, 82 * unit), QtCore.QPointF(66 * unit, 74 * unit),
                             QtCore.QPointF(54 * unit, 74 * unit)])
    painter.drawPolygon(arrow)
    for index in range(11):
        shade = QtGui.QColor(accent if index % 5 else "#4a4a4a")
        painter.setBrush(shade)
        painter.drawRoundedRect(QtCore.QRectF(84 * unit, (14 + 9.8 * index) * unit, 36 * unit, 6 * unit), 2 * unit, 2 * unit)
    painter.end()
    image.save(path)


def render_panel(model_path, idle_path, running_path):
    from slicer.ScriptedLoadableModule import createModule, createWidget

    import CycleINRSR
    createModule(CycleINRSR.CycleINRSR)
    slicer.util.loadVolume(os.path.join(REPO, "CycleINRSR", "cycleinr", "sample", "tcga_thca_ct_chest_crop.nii.gz"),
                           {"name": "ChestCT"})
    widget = createWidget(CycleINRSR.CycleINRSRWidget)
    widget._parameterNode.modelPath = model_path
    widget.ui.targetSpacingSpinBox.value = 0.5
    widget.ui.advancedCollapsibleButton.collapsed = False
    panel = widget.parent
    # wrapped labels need their height-for-width: give the panel a module-panel-like size
    panel.resize(420, 780)
    slicer.app.processEvents()
    panel.grab().save(idle_path)
    os.environ["OMP_NUM_THREADS"] = "1"
    widget._parameterNode.tileSize = 24
    widget.ui.applyButton.click()
    job = widget._job
    start = time.monotonic()
    while job.state == "running" and (job.fraction < 0.3 or time.monotonic() - start < 3) \
            and time.monotonic() - start < 300:
        slicer.app.processEvents()
        time.sleep(0.05)
    slicer.app.processEvents()
    panel.grab().save(running_path)
    widget.ui.applyButton.click()


def main():
    resources = os.path.join(REPO, "Resources")
    draw_icon(os.path.join(resources, "Icons", "CycleINR.png"))
    draw_icon(os.path.join(REPO, "CycleINRSR", "Resources", "Icons", "CycleINRSR.png"))
    draw_icon(os.path.join(REPO, "CycleINRTraining", "Resources", "Icons", "CycleINRTraining.png"), accent="#d4862a")
    from cycleinr.bundled import default_model_path

    render_panel(str(default_model_path("cpu")), os.path.join(resources, "Screenshots", "CycleINRSR_panel.png"),
                 os.path.join(resources, "Screenshots", "CycleINRSR_running.png"))

if __name__ == "__main__":
    main()
