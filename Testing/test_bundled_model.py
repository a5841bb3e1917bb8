"""The bundled default CT model against interpolation on real CT it was not trained on.

Issue 6's target, checked on the held-out chest CTA of ../shared/data (interval sampling, the
paper's protocol): PSNR above trilinear's and SNLI no higher, at x2, x3 and x5, with the engine's
defaults. Slow (about a minute on two cores) and skipped where the shared data is absent.
"""
from __future__ import annotations

import numpy as np
import pytest

from cycleinr import evaluate
from cycleinr.bundled import model_path

HELD_OUT_CTA = "totalseg_aorta_cta_cropped_1p5mm_iso.nii.gz"


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 5])
def test_bundled_ct_model_beats_trilinear_on_held_out_chest_cta(shared_data, scale):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(shared_data / HELD_OUT_CTA))
    thin = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = tuple(reversed(image.GetSpacing()))
    methods = {"trilinear": evaluate.interpolation_method("trilinear"),
               "cycleinr": evaluate.cycleinr_method(model_path("ct-cpu"), device="cpu")}  # the CPU default
    scores = evaluate.evaluate_volume(thin, spacing, scale, methods, "interval", "ct")
    model, trilinear = scores["cycleinr"], scores["trilinear"]
    assert model["psnr"] > trilinear["psnr"], scores
    assert model["snli"] <= trilinear["snli"], scores
