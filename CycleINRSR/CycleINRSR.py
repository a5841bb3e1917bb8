"""CycleINR super-resolution: thin slices from thick ones, in 3D Slicer.

The module holds no maths: it moves voxels and geometry between MRML and the ``cycleinr`` engine,
which runs in a separate PythonSlicer process (``python -m cycleinr.worker``) fed through
temporary NRRD files, so the GUI stays responsive and Cancel can stop the work at once.
"""
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Annotated

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# The engine package ``cycleinr/`` sits beside this file (installed extensions put every scripted
# module in one folder; a build tree keeps it here, where CycleINRTraining also looks for it).
ENGINE_PARENT = os.path.dirname(os.path.abspath(__file__))
if ENGINE_PARENT not in sys.path:
    sys.path.insert(0, ENGINE_PARENT)

SCALE_MIN, SCALE_MAX = 1.1, 10.0
WORKER_EXIT_MEMORY, WORKER_EXIT_CANCELLED = 3, 130
FALLBACK_TILE_SIZES = (48, 24)
# (import name, pip requirement) the worker process needs; torch comes through SlicerPyTorch.
ENGINE_REQUIREMENTS = [("safetensors", "safetensors>=0.4"), ("psutil", "psutil>=5.9"),
                       ("SimpleITK", "SimpleITK>=2.2"), ("numpy", "numpy>=1.24")]
TORCH_REQUIREMENT = ">=2.1"


#
# CycleINRSR
#
class CycleINRSR(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CycleINR Super-Resolution"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = []
        self.parent.contributors = ["CycleINR extension authors"]
        self.parent.helpText = (
            "Make thin slices from a thick-slice CT or MR volume (slice-axis super-resolution, "
            "CycleINR, CVPR 2024). Pick the input, a scale or a target slice spacing, and click "
            "<b>Super-resolve</b>: a new volume appears beside the input, same place in patient space. "
            "The input is never modified. Research use only, not for diagnosis.")
        self.parent.acknowledgementText = (
            "Method: Wei Fang et al., CycleINR: Cycle Implicit Neural Representation for Arbitrary-Scale "
            "Volumetric Super-Resolution of Medical Data, CVPR 2024.")


#
# Parameter node
#
@parameterNodeWrapper
class CycleINRSRParameterNode:
    """Everything the panel shows, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    scale: Annotated[float, WithinRange(SCALE_MIN, SCALE_MAX)] = 4.0
    targetSpacing: Annotated[float, WithinRange(0.01, 100.0)] = 1.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    modelPath: str = ""
    sliceAxis: Annotated[str, Choice(["auto", "I", "J", "K"])] = "auto"
    tileSize: Annotated[int, WithinRange(0, 512)] = 0
    keepAcquired: bool = True
    adaptToScan: bool = False
    adaptMinutes: Annotated[float, WithinRange(0.5, 120.0)] = 3.0
    adaptSliceThickness: Annotated[float, WithinRange(0.0, 50.0)] = 0.0  # 0: unknown


#
# CycleINRSRWidget
#
class CycleINRSRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the panel to the parameter node and runs jobs through the logic without blocking."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._lastInputID = None
        self._gpuStatusCache = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CycleINRSR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CycleINRSRLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.scaleSliderWidget.connect("valueChanged(double)", self.onScaleChanged)
        self.ui.targetSpacingSpinBox.connect("valueChanged(double)", self.onTargetSpacingChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.progressBar.hide()
        self.initializeParameterNode()

    def cleanup(self):
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode):
        # exit() may have unbound the node already: unbinding twice makes VTKObservationMixin warn
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if self._parameterNode and self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                                    self.onParameterNodeModified):
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # connectGui returns the tag only from Slicer 5.10 (None in 5.8, so disconnectGui did nothing);
            # connectParametersToGui returns it in every version
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(
                {widget.property("SlicerParameterName"): widget for widget in vars(self.ui).values()
                 if hasattr(widget, "property") and widget.property("SlicerParameterName")})
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    # --- keeping scale and target spacing in step ------------------------------------------
    def _sliceSpacing(self):
        node = self._parameterNode.inputVolume if self._parameterNode else None
        if node is None or node.GetImageData() is None:
            return None
        try:
            return self.logic.sliceSpacing(node, self._sliceAxisOption())
        except ValueError:
            return None

    def onScaleChanged(self, value):
        sliceSpacing = self._sliceSpacing()
        if not sliceSpacing or abs(value - self._parameterNode.scale) < 0.005 and self._inStep():
            return
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.scale = value
            self._parameterNode.targetSpacing = min(max(sliceSpacing / value, 0.01), 100.0)

    def onTargetSpacingChanged(self, value):
        sliceSpacing = self._sliceSpacing()
        if not sliceSpacing or value <= 0 or abs(value - self._parameterNode.targetSpacing) < 0.0005:
            return
        scale = min(max(sliceSpacing / value, SCALE_MIN), SCALE_MAX)
        with slicer.util.NodeModify(self._parameterNode):
            self._parameterNode.scale = scale
            self._parameterNode.targetSpacing = sliceSpacing / scale

    def _inStep(self):
        sliceSpacing = self._sliceSpacing()
        return sliceSpacing and abs(sliceSpacing / self._parameterNode.scale - self._parameterNode.targetSpacing) < 1e-3

    def onModelPathChanged(self, path):
        if self._parameterNode and path != self._parameterNode.modelPath:
            self._parameterNode.modelPath = path

    def onDeviceChanged(self, index):
        self._gpuStatusCache = None

    def _sliceAxisOption(self):
        axis = self._parameterNode.sliceAxis if self._parameterNode else "auto"
        return None if axis == "auto" else axis

    # --- read-outs ---------------------------------------------------------------------------
    def onParameterNodeModified(self, caller=None, event=None):
        if self._parameterNode is None:
            return
        inputNode = self._parameterNode.inputVolume
        inputID = inputNode.GetID() if inputNode else None
        if inputID != self._lastInputID:
            self._lastInputID = inputID
            sliceSpacing = self._sliceSpacing()
            if sliceSpacing:
                with slicer.util.NodeModify(self._parameterNode):
                    self._parameterNode.targetSpacing = min(max(sliceSpacing / self._parameterNode.scale, 0.01), 100.0)
        if self.ui.modelPathLineEdit.currentPath != self._parameterNode.modelPath:
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
        self.updateReadouts()

    def updateReadouts(self):
        p = self._parameterNode
        ready, lines = True, []
        model = None
        try:
            model = self.logic.modelDescription(p.modelPath or None, p.device)
            low, high = model["trained_scales"]
            inside = low - 1e-6 <= p.scale <= high + 1e-6
            self.ui.trainedRangeLabel.text = (
                f"Trained range {low:g}\u2013{high:g}\u00d7" + ("" if inside else
                " \u2014 <span style='color:#c06000'>this scale is outside it: results may be less reliable</span>"))
            self.ui.modelInfoLabel.text = f"{model['name']} ({os.path.basename(model['path'])})"
        except ValueError as error:
            ready = False
            self.ui.trainedRangeLabel.text = ""
            self.ui.modelInfoLabel.text = f"<span style='color:#c00000'>{_escape(error)}</span>"
        self.ui.deviceInfoLabel.text = self._deviceReadout(p)
        inputNode = p.inputVolume
        if inputNode is None or inputNode.GetImageData() is None:
            ready = False
            lines.append("Select an input volume.")
        else:
            try:
                grid = self.logic.outputGrid(inputNode, scale=p.scale, sliceAxis=self._sliceAxisOption())
                info = self.logic.describeGrid(inputNode, grid)
                lines += [f"<b>Input</b> {info['inputSize']} voxels, {info['inputSpacing']} mm",
                          f"<b>Output</b> {info['outputSize']} voxels, {info['outputSpacing']} mm "
                          f"(slices along {info['axis']})",
                          f"<b>Memory</b> output {info['outputMemory']}, peak about {info['peakMemory']} "
                          "(worker included)"]
            except ValueError as error:
                ready = False
                lines.append(f"<span style='color:#c00000'>{_escape(error)}</span>")
        if p.outputVolume is not None and p.outputVolume is inputNode:
            ready = False
            lines.append("<span style='color:#c00000'>The output must not be the input: choose another "
                         "volume or 'Create new volume'.</span>")
        self.ui.infoLabel.text = "<br>".join(lines)
        if self._job is None:
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = ("Super-resolve the input volume" if ready else
                                           "Select an input volume and a model first")

    def _deviceReadout(self, p):
        if p.device == "cpu":
            return "The CPU (slower; memory permitting, any size)"
        if self._gpuStatusCache is None:
            self._gpuStatusCache = self.logic.gpuStatus()
        gpu = self._gpuStatusCache
        if gpu is None:
            if p.device == "cuda":
                return "<span style='color:#c00000'>No CUDA GPU found: choose auto or cpu</span>"
            return "No CUDA GPU found: runs on the CPU"
        text = f"{gpu['name']}: {_bytesText(gpu['free'])} free of {_bytesText(gpu['total'])}"
        if p.inputVolume is not None and p.inputVolume.GetImageData() is not None:
            try:
                grid = self.logic.outputGrid(p.inputVolume, scale=p.scale, sliceAxis=self._sliceAxisOption())
                if self.logic.gpuWorkingSetBytes(p.inputVolume, grid) > gpu["free"]:
                    text += (" <span style='color:#c06000'>(tight: tiles will shrink, or the CPU takes "
                             "over if the GPU runs out of memory)</span>")
            except ValueError:
                pass
        return text

    # --- running -----------------------------------------------------------------------------
    def onApplyButton(self):
        if self._job is not None:
            self._job.cancel()
            return
        p = self._parameterNode
        try:
            self.logic.ensureDependencies()
            self._job = self.logic.superResolve(
                p.inputVolume, scale=p.scale, outputVolumeNode=p.outputVolume, device=p.device,
                model=p.modelPath or None, sliceAxis=self._sliceAxisOption(),
                tileSize=p.tileSize or None, keepAcquired=p.keepAcquired, waitForCompletion=False,
                adaptMinutes=p.adaptMinutes if p.adaptToScan else None,
                sliceThickness=p.adaptSliceThickness or None,
                progress=self.onJobProgress, completed=self.onJobCompleted, status=self.onJobStatus)
        except Exception as error:  # noqa: BLE001 - shown to the user as one line, logged in full
            self._job = None
            self._showError(error)
            return
        self._setRunning(True)

    def _setRunning(self, running):
        for name in ("inputsCollapsibleButton", "scaleCollapsibleButton", "modelCollapsibleButton",
                     "advancedCollapsibleButton"):
            getattr(self.ui, name).enabled = not running
        self.ui.applyButton.text = "Cancel" if running else "Super-resolve"
        self.ui.applyButton.toolTip = "Stop the running job" if running else "Super-resolve the input volume"
        self.ui.applyButton.enabled = True
        self.ui.progressBar.value = 0
        self.ui.progressBar.format = "starting\u2026"
        self.ui.progressBar.visible = running
        if running:
            self.ui.statusLabel.text = "Running\u2026"
        else:
            self.updateReadouts()

    def onJobProgress(self, fraction):
        self.ui.progressBar.value = int(round(1000 * fraction))
        job = self._job
        elapsed = time.monotonic() - job.startTime if job else 0.0
        if 0.02 < fraction < 1.0 and elapsed > 1.0:
            self.ui.progressBar.format = f"%p% \u2014 about {_durationText(elapsed * (1 - fraction) / fraction)} left"
        else:
            self.ui.progressBar.format = "%p%"

    def onJobStatus(self, message):
        self.ui.statusLabel.text = _escape(message)

    def onJobCompleted(self, job):
        self._job = None
        self._setRunning(False)
        if job.state == "done":
            node = job.outputVolumeNode
            text = (f"Done in {_durationText(job.elapsed)}: {node.GetName()} on {job.result.get('device', '?')}")
            notes = job.notes + job.result.get("warnings", [])
            self.ui.statusLabel.text = _escape(text + "".join(f"\n{n}" for n in notes))
        elif job.state == "cancelled":
            self.ui.statusLabel.text = "Cancelled: the scene is as it was."
        else:
            self.ui.statusLabel.text = _escape(f"Failed: {job.error}")
            self._showError(job.error)

    def _showError(self, error):
        message = str(error) or type(error).__name__
        logging.error(f"CycleINR super-resolution failed: {message}")
        slicer.util.errorDisplay(f"Super-resolution failed: {message}")


#
# CycleINRSRLogic
#
class CycleINRSRLogic(ScriptedLoadableModuleLogic):
    """Console and batch API; no GUI needed.

    ``superResolve(inputVolumeNode, scale=5)`` returns a new volume node; the input is not touched.
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return CycleINRSRParameterNode(super().getParameterNode())

    # --- read-outs before any work ---------------------------------------------------------
    @staticmethod
    def _arraySpacing(volumeNode):
        return tuple(reversed(volumeNode.GetSpacing()))  # KJI order, as arrayFromVolume gives

    @staticmethod
    def _arrayShape(volumeNode):
        return tuple(reversed(volumeNode.GetImageData().GetDimensions()))

    def outputGrid(self, volumeNode, scale=None, targetSpacing=None, sliceAxis=None):
        """The engine's output grid for this node (cycleinr.geometry.plan_output); ValueError if unusable."""
        from cycleinr.errors import InputError
        from cycleinr.geometry import axis_from_letter, plan_output
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("the input volume has no voxels")
        try:
            axis = axis_from_letter(sliceAxis) if sliceAxis else None
            return plan_output(self._arrayShape(volumeNode), self._arraySpacing(volumeNode), scale,
                               targetSpacing, axis)
        except InputError as error:
            raise ValueError(str(error)) from None

    def sliceSpacing(self, volumeNode, sliceAxis=None):
        from cycleinr.geometry import axis_from_letter, choose_slice_axis
        spacing = self._arraySpacing(volumeNode)
        return spacing[choose_slice_axis(spacing, axis_from_letter(sliceAxis) if sliceAxis else None)]

    def describeGrid(self, volumeNode, grid):
        """Human-readable sizes (I x J x K, as Slicer shows them) and memory for the panel."""
        itemSize = slicer.util.arrayFromVolume(volumeNode).dtype.itemsize
        outputBytes = grid.voxels * itemSize
        inputBytes = int(volumeNode.GetImageData().GetNumberOfPoints()) * itemSize
        return dict(
            inputSize=" \u00d7 ".join(str(n) for n in reversed(grid.input_shape)),
            inputSpacing=" \u00d7 ".join(f"{s:.3g}" for s in reversed(grid.input_spacing)),
            outputSize=" \u00d7 ".join(str(n) for n in reversed(grid.shape)),
            outputSpacing=" \u00d7 ".join(f"{s:.3g}" for s in reversed(grid.spacing)),
            axis="IJK"[2 - grid.slice_axis],
            outputMemory=_bytesText(outputBytes),
            # Slicer holds input + output; the worker holds its own copies and a tile working set
            peakMemory=_bytesText(2 * (inputBytes + outputBytes) + grid.voxels * 4 // 8 + (256 << 20)))

    def gpuWorkingSetBytes(self, volumeNode, grid):
        """A rough GPU need: one float32 copy of input and output tiles plus features (for warnings)."""
        return int(volumeNode.GetImageData().GetNumberOfPoints()) * 4 * 8 + (512 << 20)

    @staticmethod
    def gpuStatus():
        """Name, free and total bytes of the first CUDA GPU, or None (nvidia-smi: no torch needed)."""
        executable = shutil.which("nvidia-smi")
        if executable is None:
            return None
        try:
            output = subprocess.run([executable, "--query-gpu=name,memory.free,memory.total",
                                     "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                    timeout=5, check=True).stdout.strip().splitlines()
            name, free, total = [field.strip() for field in output[0].split(",")]
            return dict(name=name, free=int(float(free)) << 20, total=int(float(total)) << 20)
        except (subprocess.SubprocessError, OSError, ValueError, IndexError):
            return None

    # --- models --------------------------------------------------------------------------------
    def bundledModelPath(self, device="auto"):
        """$CYCLEINR_MODEL, else the bundled weights for the device (CPU-sized ones on a CPU)."""
        from cycleinr.bundled import default_model_path
        from cycleinr.errors import ModelError

        deviceType = "cuda" if device == "cuda" or (device == "auto" and self.gpuStatus()) else "cpu"
        try:
            return str(default_model_path(deviceType))
        except ModelError:
            return None

    def modelDescription(self, modelPath=None, device="auto"):
        """Name and trained scale range from a weights file's header (read without torch)."""
        from cycleinr.bundled import model_path, read_description
        from cycleinr.errors import ModelError

        path = modelPath or self.bundledModelPath(device)
        if not path:
            raise ValueError("No bundled model is installed: choose a model file (.safetensors)")
        try:
            description = read_description(model_path(path))
        except ModelError as error:
            raise ValueError(str(error)) from None
        return dict(name=str(description.get("name", "unnamed")),
                    trained_scales=tuple(description["trained_scales"]), path=path)

    # --- dependencies, on first use ----------------------------------------------------------
    @staticmethod
    def missingPackages():
        import importlib.util
        missing = [requirement for name, requirement in ENGINE_REQUIREMENTS
                   if importlib.util.find_spec(name) is None]
        if importlib.util.find_spec("torch") is None:
            missing.insert(0, f"torch{TORCH_REQUIREMENT}")
        return missing

    def ensureDependencies(self, askConfirmation=True):
        """Install what the engine needs into Slicer's Python, after the user agrees."""
        missing = self.missingPackages()
        if not missing:
            return
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "CycleINR needs these Python packages, which will be downloaded and installed "
                f"now (this can take several minutes): {', '.join(missing)}", "Install dependencies"):
            raise RuntimeError("the required Python packages are not installed: " + ", ".join(missing))
        if missing[0].startswith("torch"):
            self._installTorch()
            missing = missing[1:]
        if not missing:
            return
        try:
            import slicer.packaging as packaging  # Slicer 5.12+ (earlier: ImportError, pip_install below)
            from packaging.requirements import Requirement
            packaging.pip_ensure([Requirement(r) for r in missing], prompt_install=False,
                                 requester="CycleINR")
        except (ImportError, AttributeError):
            slicer.util.pip_install(missing)

    @staticmethod
    def _installTorch():
        try:
            import PyTorchUtils
        except ImportError:
            slicer.util.pip_install(f"torch{TORCH_REQUIREMENT}")
            return
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError("PyTorch could not be installed (see the PyTorch module)")

    # --- the job -----------------------------------------------------------------------------
    def superResolve(self, inputVolumeNode, scale=None, targetSpacing=None, outputVolumeNode=None,
                     device="auto", model=None, progress=None, sliceAxis=None, tileSize=None,
                     keepAcquired=True, waitForCompletion=True, completed=None, status=None, showResult=True,
                     adaptMinutes=None, sliceThickness=None):
        """Super-resolve ``inputVolumeNode`` along its slice axis; returns the output volume node.

        Give ``scale`` (r > 1) or ``targetSpacing`` (mm). ``outputVolumeNode`` None creates a new
        node named after the input and the scale. ``progress(fraction)`` is called as work goes on.
        ``keepAcquired`` (default True): output slices lying on input slices are copied unchanged.
        ``adaptMinutes``: adapt the model to this scan for that long first (``sliceThickness`` mm,
        None: unknown); ``status(message)`` reports the phase and which model was used.
        With ``waitForCompletion=False`` a running SuperResolveJob is returned instead (its QTimer
        polls the worker; ``completed(job)`` is called at the end).
        """
        if inputVolumeNode is None or inputVolumeNode.GetImageData() is None:
            raise ValueError("select an input volume with voxels")
        if outputVolumeNode is not None and outputVolumeNode is inputVolumeNode:
            raise ValueError("the output volume must not be the input volume")
        grid = self.outputGrid(inputVolumeNode, scale=scale, targetSpacing=targetSpacing, sliceAxis=sliceAxis)
        modelPath = model or self.bundledModelPath(device)
        self.modelDescription(modelPath, device)  # fail now, with a clear message, on a bad file
        job = SuperResolveJob(self, inputVolumeNode, outputVolumeNode, grid, dict(
            device=device, model=modelPath, sliceAxis=sliceAxis, tileSize=tileSize, keepAcquired=keepAcquired,
            adaptMinutes=adaptMinutes, sliceThickness=sliceThickness),
            progress=progress, completed=completed, status=status, showResult=showResult)
        job.start(useTimer=not waitForCompletion)
        if not waitForCompletion:
            return job
        job.wait()
        if job.state != "done":
            raise RuntimeError("cancelled" if job.state == "cancelled" else job.error)
        return job.outputVolumeNode

    # --- MRML <-> files: Slicer's own volume storage node does the RAS <-> LPS geometry ----------
    @staticmethod
    def writeVolumeFile(volumeNode, path):
        """The node's voxels and local geometry (a parent transform is not applied) as NRRD.

        A storage node made here, outside the scene: the node keeps its own storage node and file name.
        """
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(path)
        storageNode.SetUseCompression(False)  # a temporary file: speed over size
        if not storageNode.WriteData(volumeNode):
            raise RuntimeError(f"Slicer could not write the volume to {path}")

    @staticmethod
    def readVolumeFile(path, volumeNode):
        """Voxels and geometry of a NRRD file into ``volumeNode`` (its name and transform are kept)."""
        storageNode = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storageNode.SetFileName(path)
        storageNode.SetSingleFile(True)
        if not storageNode.ReadData(volumeNode):
            raise RuntimeError(f"Slicer could not read the volume from {path}")

    def placeOutput(self, inputVolumeNode, outputVolumeNode, show=True):
        """Display like the input, sit beside it in the subject hierarchy, show in slice views."""
        outputVolumeNode.CreateDefaultDisplayNodes()
        source, target = inputVolumeNode.GetDisplayNode(), outputVolumeNode.GetDisplayNode()
        if source is not None and target is not None:
            with slicer.util.NodeModify(target):
                if source.GetColorNodeID():  # None in a scene without the Colors logic: MRML refuses None
                    target.SetAndObserveColorNodeID(source.GetColorNodeID())
                target.SetAutoWindowLevel(source.GetAutoWindowLevel())
                target.SetWindowLevel(source.GetWindow(), source.GetLevel())
                target.SetInterpolate(source.GetInterpolate())
        outputVolumeNode.SetAndObserveTransformNodeID(inputVolumeNode.GetTransformNodeID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        inputItem = shNode.GetItemByDataNode(inputVolumeNode)
        outputItem = shNode.GetItemByDataNode(outputVolumeNode)
        if inputItem:
            parentItem = shNode.GetItemParent(inputItem)
            if outputItem:
                shNode.SetItemParent(outputItem, parentItem)
            else:  # no item without Slicer's subject hierarchy plugin (scripts, slicer-core): make it
                shNode.CreateItem(parentItem, outputVolumeNode)
        if show:
            slicer.util.setSliceViewerLayers(background=outputVolumeNode, fit=True)

    @staticmethod
    def outputName(inputVolumeNode, scale):
        """``<input>_x<scale>``, or ``..._1``, ``..._2`` ... when taken. Asking uses nothing up (the
        scene's GetUniqueNameByString moves its counter on at every call)."""
        baseName = f"{inputVolumeNode.GetName()}_x{scale:.3g}"
        name, index = baseName, 0
        while slicer.mrmlScene.GetFirstNodeByName(name) is not None:
            index += 1
            name = f"{baseName}_{index}"
        return name


class SuperResolveJob:
    """One run of ``python -m cycleinr.worker``: start, read progress, cancel, finish.

    A thread reads the worker's stdout into a queue; ``poll`` (a QTimer in the GUI, a loop in
    ``wait``) handles the lines. Cancel kills the worker and its children (the PythonSlicer
    launcher starts the real interpreter as a child). A GPU out-of-memory exit is retried with
    smaller tiles, then on the CPU, and the ``status`` callback says so.
    """

    def __init__(self, logic, inputNode, outputNode, grid, options, progress=None, completed=None,
                 status=None, showResult=True):
        self.logic, self.inputNode, self.outputVolumeNode, self.grid = logic, inputNode, outputNode, grid
        self.options = dict(options)
        self.progressCallback, self.completedCallback, self.statusCallback = progress, completed, status
        self.showResult = showResult
        self.state = "new"
        self.error = None
        self.result = {}
        self.notes = []
        self.fraction = 0.0
        self.process = None
        self.timer = None
        self.tempDir = None
        self.startTime = self.elapsed = 0.0
        self._lines = None
        self._reader = None
        self._errorLine = None

    # lifecycle ----------------------------------------------------------------------------------
    def start(self, useTimer):
        self.tempDir = tempfile.mkdtemp(prefix="CycleINR-")
        self.inputPath = os.path.join(self.tempDir, "input.nrrd")
        self.outputPath = os.path.join(self.tempDir, "output.nrrd")
        self.startTime = time.monotonic()
        try:
            self.logic.writeVolumeFile(self.inputNode, self.inputPath)
            self._launch()
        except Exception:
            self._removeTempDir()
            raise
        self.state = "running"
        if useTimer:
            self.timer = qt.QTimer()
            self.timer.setInterval(100)
            self.timer.timeout.connect(self.poll)
            self.timer.start()

    def command(self):
        python = shutil.which("PythonSlicer") or sys.executable
        command = [python, "-m", "cycleinr.worker", "--input", self.inputPath, "--output", self.outputPath,
                   "--scale", repr(self.grid.scale), "--device", self.options["device"] or "auto", "--overwrite"]
        if self.options.get("model"):
            command += ["--model", str(self.options["model"])]
        if self.options.get("sliceAxis"):
            command += ["--axis", self.options["sliceAxis"]]
        if self.options.get("tileSize"):
            command += ["--tile-size", str(int(self.options["tileSize"]))]
        if not self.options.get("keepAcquired", True):
            command += ["--no-keep-acquired"]
        if self.options.get("adaptMinutes"):
            command += ["--adapt", repr(float(self.options["adaptMinutes"]))]
            if self.options.get("sliceThickness"):
                command += ["--slice-thickness", repr(float(self.options["sliceThickness"]))]
        return command

    def _launch(self):
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [ENGINE_PARENT] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else []))
        environment["PYTHONUNBUFFERED"] = "1"
        extra = {}
        if os.name == "nt":
            extra["creationflags"] = subprocess.CREATE_NO_WINDOW | subprocess.CREATE_NEW_PROCESS_GROUP
        else:
            extra["start_new_session"] = True  # its own process group: cancel kills all of it
        command = self.command()
        logging.info("CycleINR worker: " + " ".join(command))
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, cwd=ENGINE_PARENT,
                                        env=environment, **extra)
        self._lines = queue.Queue()
        self._errorLine = None
        self._reader = threading.Thread(target=self._readOutput, args=(self.process, self._lines), daemon=True)
        self._reader.start()

    @staticmethod
    def _readOutput(process, lines):
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        process.stdout.close()
        process.wait()
        lines.put(None)

    def poll(self, timeout=0.0):
        """Handle the worker's output so far; finish when it has exited."""
        if self.state != "running":
            return
        while True:
            try:
                line = self._lines.get(timeout=timeout) if timeout else self._lines.get_nowait()
            except queue.Empty:
                return
            timeout = 0.0
            if line is None:
                self._finish(self.process.returncode)
                return
            self._handleLine(line)

    def _handleLine(self, line):
        keyword, _, text = line.partition(" ")
        if keyword == "PROGRESS":
            try:
                self.fraction = float(text)
            except ValueError:
                return
            if self.progressCallback:
                self.progressCallback(self.fraction)
        elif keyword == "STATUS":
            logging.info(f"CycleINR: {text}")
            if self.statusCallback:
                self.statusCallback(text)
        elif keyword == "WARNING":
            self.notes.append(text)
            logging.warning(f"CycleINR: {text}")
        elif keyword == "RESULT":
            self.result = json.loads(text)
        elif keyword == "ERROR":
            self._errorLine = text
        elif line.strip():
            logging.info(f"CycleINR worker: {line}")

    def wait(self):
        while self.state == "running":
            self.poll(timeout=0.2)

    def cancel(self):
        if self.state != "running":
            return
        _killProcessTree(self.process)
        self._end("cancelled")

    # endings --------------------------------------------------------------------------------------
    def _finish(self, returnCode):
        if returnCode == 0 and os.path.exists(self.outputPath):
            try:
                self._importOutput()
            except Exception as error:  # noqa: BLE001
                self.error = f"cannot read the result back: {error}"
                self._end("failed")
                return
            self._end("done")
            return
        if returnCode == WORKER_EXIT_CANCELLED:
            self._end("cancelled")
            return
        message = (self._errorLine or f"the worker stopped with exit code {returnCode}").partition(": ")
        reason = message[2] or message[0]
        if returnCode == WORKER_EXIT_MEMORY and "GPU" in reason and self._retryAfterGpuMemoryError(reason):
            return
        self.error = reason
        self._end("failed")

    def _retryAfterGpuMemoryError(self, reason):
        current = self.options.get("tileSize") or 10**6
        smaller = [size for size in FALLBACK_TILE_SIZES if size < current]
        if smaller:
            self.options["tileSize"] = smaller[0]
            note = f"GPU out of memory: retrying with {smaller[0]}-voxel tiles"
        elif self.options.get("device") != "cpu":
            self.options["device"], self.options["tileSize"] = "cpu", None
            note = "GPU out of memory even with small tiles: retrying on the CPU (slower)"
        else:
            return False
        self.notes.append(note)
        logging.warning(f"CycleINR: {note} ({reason})")
        if self.statusCallback:
            self.statusCallback(note)
        self._launch()
        return True

    def _importOutput(self):
        created = self.outputVolumeNode is None
        node = self.outputVolumeNode or slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLScalarVolumeNode", self.logic.outputName(self.inputNode, self.grid.scale))
        try:
            self.logic.readVolumeFile(self.outputPath, node)
            self.logic.placeOutput(self.inputNode, node, show=self.showResult)
        except Exception:
            if created:  # RemoveNode leaves display and storage nodes behind: remove them too
                helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
                helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
                for helper in helpers + [node]:
                    if helper is not None:
                        slicer.mrmlScene.RemoveNode(helper)
            raise
        self.outputVolumeNode = node

    def _end(self, state):
        self.state = state
        self.elapsed = time.monotonic() - self.startTime
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        self._removeTempDir()
        if state == "done" and self.progressCallback:
            self.progressCallback(1.0)
        if self.completedCallback:
            self.completedCallback(self)

    def _removeTempDir(self):
        if self.tempDir:
            shutil.rmtree(self.tempDir, ignore_errors=True)
            self.tempDir = None


def _killProcessTree(process):
    """Kill the worker, and everything it started, now."""
    if process is None or process.poll() is not None:
        return
    try:
        import psutil
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
    except Exception:  # noqa: BLE001 - psutil missing or the process already gone
        pass
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
    else:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.kill()
    process.wait()


def _bytesText(count):
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def _durationText(seconds):
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "<br>")


#
# CycleINRSRTest
#
class CycleINRSRTest(ScriptedLoadableModuleTest):
    """Self-test in real Slicer (``--testing``): SampleData's CTChest, thinned to thick slices,
    super-resolved back; geometry must match the original exactly, values must be plausible."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ThinnedCTChest()

    def test_ThinnedCTChest(self):
        import numpy as np
        import SampleData

        self.delayDisplay("Loading CTChest")
        original = SampleData.downloadSample("CTChest")
        thin = slicer.util.arrayFromVolume(original)
        factor = 3
        # a central in-plane crop keeps the test to a minute on a CPU; all slices are kept
        rows, columns = thin.shape[1], thin.shape[2]
        crop = thin[:, rows // 2 - 48:rows // 2 + 48, columns // 2 - 48:columns // 2 + 48]
        thick = np.ascontiguousarray(crop[::factor])
        ijkToRAS = vtk.vtkMatrix4x4()
        original.GetIJKToRASMatrix(ijkToRAS)
        origin = [ijkToRAS.GetElement(r, 3) + ijkToRAS.GetElement(r, 0) * (columns // 2 - 48)
                  + ijkToRAS.GetElement(r, 1) * (rows // 2 - 48) for r in range(3)]
        thickNode = slicer.util.addVolumeFromArray(thick, name="CTChest_thick")
        thickNode.CopyOrientation(original)
        thickNode.SetOrigin(origin)
        spacing = list(original.GetSpacing())
        thickNode.SetSpacing(spacing[0], spacing[1], spacing[2] * factor)
        thickBefore = slicer.util.arrayFromVolume(thickNode).copy()

        self.delayDisplay(f"Super-resolving x{factor}")
        fractions = []
        output = CycleINRSRLogic().superResolve(thickNode, scale=factor, progress=fractions.append)
        result = slicer.util.arrayFromVolume(output)
        expectedSlices = (thick.shape[0] - 1) * factor + 1
        self.assertEqual(result.shape, (expectedSlices,) + thick.shape[1:])
        self.assertEqual(result.dtype, thick.dtype)
        self.assertTrue(np.array_equal(slicer.util.arrayFromVolume(thickNode), thickBefore))
        self.assertTrue(np.array_equal(result[::factor], thick))  # acquired slices kept, bit for bit
        self.assertEqual(fractions[-1], 1.0)
        outputMatrix, thickMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        output.GetIJKToRASMatrix(outputMatrix)
        thickNode.GetIJKToRASMatrix(thickMatrix)
        for r in range(3):
            for c in range(4):
                expected = thickMatrix.GetElement(r, c) / (factor if c == 2 else 1)
                self.assertAlmostEqual(outputMatrix.GetElement(r, c), expected, places=4)
        # the output grid is the original thin grid: compare voxel for voxel
        reference = crop[:expectedSlices].astype(np.float64)
        error = np.abs(result.astype(np.float64) - reference).mean()
        spread = np.abs(reference - reference.mean()).mean()
        self.delayDisplay(f"Mean absolute error {error:.1f} (mean deviation of the image {spread:.1f})")
        self.assertTrue(np.isfinite(result).all())
        self.assertLess(error, spread)
        self.delayDisplay("Test passed")
