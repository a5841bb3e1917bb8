"""Stand-in for Slicer's SampleData module: ``downloadSample(name)`` loads a local volume.

Only "CTChest" is known, and it is NOT Slicer's CTChest download (no network here): it is the
committed real chest CT crop (TCGA-THCA, 256x256x36, 0.98x0.98x2.5 mm), enough for the self-test.
"""
import os

import slicer

_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
_SAMPLES = {"CTChest": os.path.join(_REPO, "CycleINRSR", "cycleinr", "sample", "tcga_thca_ct_chest_crop.nii.gz")}


def downloadSample(sampleName):
    if sampleName not in _SAMPLES:
        raise ValueError(f"the stand-in has no sample named {sampleName!r}")
    return slicer.util.loadVolume(_SAMPLES[sampleName], {"name": sampleName})


class SampleDataLogic:
    def downloadSample(self, sampleName):
        return downloadSample(sampleName)
