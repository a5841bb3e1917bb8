"""CycleINR training in 3D Slicer: train a model on volumes, or fine-tune one on a single scan.

A thin layer over ``cycleinr.train`` and ``cycleinr.finetune`` (the engine package installed with
CycleINRSR). The Logic is headless: use it from the Python console or
``Slicer --no-main-window --python-script``. Training is long: for full runs prefer the
``cycleinr train`` command line (and torchrun for several GPUs), which runs the same code.
"""
import logging
import os
import sys
import tempfile
import threading

import qt

import slicer
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)

# The engine sits beside the scripted modules when installed; in a build or source tree it is in
# the sibling CycleINRSR folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (_HERE, os.path.join(os.path.dirname(_HERE), "CycleINRSR")):
    if os.path.isdir(os.path.join(_folder, "cycleinr")) and _folder not in sys.path:
        sys.path.insert(0, _folder)
        break


class CycleINRTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CycleINR Training"
        self.parent.categories = ["Filtering"]
        self.parent.dependencies = ["CycleINRSR"]
        self.parent.contributors = ["CycleINR extension authors"]
        self.parent.helpText = (
            "Fine-tune a CycleINR model on one thick-slice volume (its sharp in-plane data give the "
            "training pairs), or train a model from volume files with the Logic from the Python console: "
            "<code>slicer.util.getModuleLogic('CycleINRTraining').train(['/data/ct1.nii.gz'], '/runs/a', steps=2000)</code>.")
        self.parent.acknowledgementText = (
            "Method: Wei Fang et al., CycleINR, CVPR 2024. Self-supervised pairs after SMORE/SAINT.")


class CycleINRTrainingWidget(ScriptedLoadableModuleWidget):
    """Fine-tune on the selected volume; the progress callback keeps the panel painting."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self._cancel = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = CycleINRTrainingLogic()
        form = qt.QFormLayout()
        self.inputSelector = slicer.qMRMLNodeComboBox()
        self.inputSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.inputSelector.addEnabled = False
        self.inputSelector.removeEnabled = False
        self.inputSelector.setMRMLScene(slicer.mrmlScene)
        self.inputSelector.toolTip = "The thick-slice volume whose in-plane data train the model"
        form.addRow("Volume:", self.inputSelector)
        self.baseModelEdit = qt.QLineEdit()
        self.baseModelEdit.toolTip = "Weights to start from (.safetensors); empty: the bundled model"
        form.addRow("Start from model:", self.baseModelEdit)
        self.outputModelEdit = qt.QLineEdit()
        self.outputModelEdit.toolTip = "Where to save the fine-tuned weights (.safetensors)"
        form.addRow("Save model as:", self.outputModelEdit)
        self.secondsSpinBox = qt.QSpinBox()
        self.secondsSpinBox.setRange(1, 24 * 3600)
        self.secondsSpinBox.value = 120
        self.secondsSpinBox.suffix = " s"
        form.addRow("Time budget:", self.secondsSpinBox)
        self.runButton = qt.QPushButton("Fine-tune")
        self.runButton.toolTip = "Fine-tune the model on the volume and save it"
        form.addRow(self.runButton)
        self.progressBar = qt.QProgressBar()
        self.progressBar.maximum = 1000
        form.addRow(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)
        box = qt.QWidget()
        box.setLayout(form)
        self.layout.addWidget(box)
        self.layout.addStretch(1)
        self.runButton.connect("clicked(bool)", self.onRunButton)

    def onRunButton(self):
        if self._cancel is not None:
            self._cancel.set()
            return
        self._cancel = threading.Event()
        self.runButton.text = "Cancel"
        self.statusLabel.text = "Fine-tuning\u2026"
        try:
            path = self.logic.fineTuneOnVolume(
                self.inputSelector.currentNode(), self.outputModelEdit.text.strip(),
                model=self.baseModelEdit.text.strip() or None, seconds=self.secondsSpinBox.value,
                progress=self._onProgress, cancel=self._cancel)
            self.statusLabel.text = f"Saved {path}: choose it as the model file in CycleINR Super-Resolution."
        except Exception as error:  # noqa: BLE001 - one line to the user, the log has the rest
            message = str(error) or type(error).__name__
            self.statusLabel.text = f"Stopped: {message}"
            if type(error).__name__ != "Cancelled":
                logging.error(f"CycleINR fine-tuning failed: {message}")
                slicer.util.errorDisplay(f"Fine-tuning failed: {message}")
        finally:
            self._cancel = None
            self.runButton.text = "Fine-tune"

    def _onProgress(self, fraction):
        self.progressBar.value = int(round(1000 * fraction))
        slicer.app.processEvents()


class CycleINRTrainingLogic(ScriptedLoadableModuleLogic):
    """Headless training API (imports torch only when called)."""

    def train(self, data, output, progress=None, cancel=None, device="auto", log=None, **options):
        """Train (or resume) a model on volume files / DICOM folders into the run folder ``output``.

        ``options`` are cycleinr.train.TrainOptions fields (steps, preset, init_model, modality,
        batch_size, patch, max_seconds, name ...). Returns the path of the final weights.
        """
        from cycleinr.train import TrainOptions, train
        if isinstance(data, (str, os.PathLike)):
            data = [data]
        trainOptions = TrainOptions(data=[str(d) for d in data], output=str(output), **options)
        return str(train(trainOptions, progress=progress, cancel=cancel, device=device,
                         log=log or (lambda message: logging.info(f"CycleINR training: {message}"))))

    def trainOnVolumeNodes(self, volumeNodes, output, **options):
        """Train on volumes already in the scene (written to temporary NRRD files first)."""
        from CycleINRSR import CycleINRSRLogic
        with tempfile.TemporaryDirectory(prefix="CycleINRTraining-") as folder:
            paths = []
            for index, node in enumerate(volumeNodes):
                path = os.path.join(folder, f"volume{index:03d}.nrrd")
                CycleINRSRLogic.writeVolumeFile(node, path)
                paths.append(path)
            return self.train(paths, output, **options)

    def fineTuneOnVolume(self, volumeNode, outputModelPath, model=None, scale=None, seconds=120.0,
                         maxSteps=None, device="auto", progress=None, cancel=None):
        """Fine-tune ``model`` (None: the bundled one) on this volume's in-plane data; save it.

        The volume is read, never modified. Returns the saved weights path, ready for CycleINRSR.
        """
        if volumeNode is None or volumeNode.GetImageData() is None:
            raise ValueError("select a volume with voxels to fine-tune on")
        if not outputModelPath or not str(outputModelPath).endswith(".safetensors"):
            raise ValueError("give a file name ending in .safetensors to save the fine-tuned model")
        from cycleinr.finetune import fine_tune
        from cycleinr.weights import save_model
        volume = slicer.util.arrayFromVolume(volumeNode).copy()
        spacing = tuple(reversed(volumeNode.GetSpacing()))
        tuned = fine_tune(volume, spacing, model=model, scale=scale, seconds=seconds, max_steps=maxSteps,
                          device=device, progress=progress, cancel=cancel)
        tuned.info.name = f"{tuned.info.name} fine-tuned on {volumeNode.GetName()}"
        return str(save_model(outputModelPath, tuned.network, tuned.info))


class CycleINRTrainingTest(ScriptedLoadableModuleTest):
    """Self-test in real Slicer: fine-tune for a few steps on SampleData's CTChest, save, reload."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_FineTuneSavesAUsableModel()

    def test_FineTuneSavesAUsableModel(self):
        import SampleData
        from cycleinr.weights import read_model_info
        volume = SampleData.downloadSample("CTChest")
        path = os.path.join(slicer.app.temporaryPath, "CycleINRTrainingTest.safetensors")
        saved = CycleINRTrainingLogic().fineTuneOnVolume(volume, path, seconds=60, maxSteps=3)
        self.assertTrue(os.path.exists(saved))
        self.assertIn("fine-tuned on", read_model_info(saved).name)
        self.delayDisplay("Test passed")
