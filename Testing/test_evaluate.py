"""The evaluation protocol and the `cycleinr eval` command on real CT crops.

The CycleINR method here is the untrained tiny test model: it checks plumbing, never quality.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import HEAD_CT, SAMPLE_CT
from cycleinr import evaluate as protocol
from cycleinr import metrics
from cycleinr.cli import main
from cycleinr.errors import InputError

SPACING = (1.5, 0.957, 0.957)


@pytest.fixture(scope="module")
def head():
    return sitk.GetArrayFromImage(sitk.ReadImage(str(HEAD_CT)))


def test_interval_degradation_and_ground_truth_region(head):
    degraded = protocol.degrade(head, SPACING, 3)
    assert np.array_equal(degraded.thick, head[:46:3])  # 48 slices -> m = 16 -> thin 0..45
    assert np.array_equal(degraded.truth, head[:46])
    assert degraded.thick_spacing == (4.5, 0.957, 0.957)
    fractional = protocol.degrade(head, SPACING, 2.5)  # every 5th slice, scored on every 2nd
    assert np.array_equal(fractional.thick, head[:46:5])
    assert np.array_equal(fractional.truth, head[:46:2])
    assert fractional.truth_spacing == (3.0, 0.957, 0.957)


def test_slab_degradation_is_the_centred_slab_mean(head):
    odd = protocol.degrade(head, SPACING, 3, "slab")
    assert odd.thick.dtype == head.dtype
    expected = np.rint(head[5:8].astype(float).mean(axis=0)).astype(head.dtype)
    assert np.array_equal(odd.thick[2], expected)
    assert np.array_equal(odd.thick[0], np.rint(head[0:2].astype(float).mean(axis=0)).astype(head.dtype))
    even = protocol.degrade(head, SPACING, 2, "slab")
    weighted = (0.5 * head[3].astype(float) + head[4] + 0.5 * head[5]) / 2
    assert np.array_equal(even.thick[2], np.rint(weighted).astype(head.dtype))
    assert np.array_equal(even.truth, head[:47])


def test_bad_scales_and_modes(head):
    with pytest.raises(InputError, match="no ground truth"):
        protocol.degrade(head, SPACING, 2.37)
    with pytest.raises(InputError, match="degradation"):
        protocol.degrade(head, SPACING, 2, "blur")
    with pytest.raises(InputError, match="too few"):
        protocol.degrade(head[:4], SPACING, 5)


def test_trilinear_scores_match_an_independent_computation(head):
    """The acceptance check in small: numpy linear interpolation + scikit-image on our own."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    methods = {"trilinear": protocol.interpolation_method("trilinear")}
    scores = protocol.evaluate_volume(head, SPACING, 3, methods)["trilinear"]
    thick = head[:46:3].astype(np.float64)
    truth = head[:46].astype(np.float64)
    fraction = (np.arange(46) % 3 / 3.0)[:, None, None]
    lower = thick[np.minimum(np.arange(46) // 3, 15)]
    upper = thick[np.minimum(np.arange(46) // 3 + 1, 15)]
    independent = np.rint((1 - fraction) * lower + fraction * upper)
    clip = lambda v: np.clip(v, -1024, 3071)  # noqa: E731
    psnr = peak_signal_noise_ratio(clip(truth), clip(independent), data_range=4095)
    ssim = np.mean([structural_similarity(clip(truth[t]), clip(independent[t]), data_range=4095)
                    for t in range(46)])
    assert scores["psnr"] == pytest.approx(psnr, abs=0.01)
    assert scores["ssim"] == pytest.approx(ssim, rel=0.01)
    assert scores["snli"] == pytest.approx(metrics.snli(independent), rel=0.01)


def test_evaluate_volume_with_every_kind_of_method(head, tiny_model):
    methods = {"trilinear": protocol.interpolation_method("trilinear"),
               "cubic": protocol.interpolation_method("cubic"),
               "tiny-untrained": protocol.cycleinr_method(tiny_model, device="cpu")}
    crop = head[:, 24:72, 24:72]
    results = protocol.evaluate_volume(crop, SPACING, 2.5, methods, degrade_mode="slab",
                                       lpips=["alex"], lpips_weights="/nonexistent-lpips-folder")
    assert set(results) == set(methods)
    for scores in results.values():
        assert np.isfinite(scores["psnr"]) and 0 < scores["ssim"] <= 1 and scores["snli"] >= 0
        assert scores["lpips_alex"] is None and "not computed" in scores["notes"]["lpips_alex"]


def test_thick_input_reports_snli_and_cycle_error():
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT)))[:12, 64:160, 64:160]
    spacing = (2.5, 0.977, 0.977)
    methods = {"trilinear": protocol.interpolation_method("trilinear"),
               "cubic": protocol.interpolation_method("cubic")}
    scores, outputs = protocol.evaluate_thick(volume, spacing, 2, methods)
    assert scores["trilinear"]["cycle_mae"] == 0.0 and scores["trilinear"]["cycle_psnr"] == float("inf")
    assert scores["cubic"]["snli"] > 0 and outputs["cubic"].shape == (23, 96, 96)
    fractional, _ = protocol.evaluate_thick(volume, spacing, 2.5, methods)
    assert 0 < fractional["trilinear"]["cycle_mae"] < 50


def test_eval_command_writes_table_csv_json_and_figures(tmp_path, tiny_model, capsys):
    from cycleinr.weights import save_model

    model = save_model(tmp_path / "tiny.safetensors", tiny_model.network, tiny_model.info)
    small = sitk.ReadImage(str(HEAD_CT))[24:72, 24:72, :]
    data = tmp_path / "data"
    data.mkdir()
    sitk.WriteImage(small, str(data / "head.nii.gz"))
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    code = main(["eval", "--data", str(data), "--scales", "2", "2.5", "--methods", "trilinear", "cubic",
                 f"cycleinr={model}", "--out", str(out), "--json", str(summary), "--device", "cpu",
                 "--lpips-weights", str(tmp_path / "no-weights")])
    assert code == 0
    result = json.loads(summary.read_text())
    assert set(result) == {"x2", "x2.5"}
    assert set(result["x2"]) == {"trilinear", "cubic", f"cycleinr={model}"}
    entry = result["x2.5"]["cubic"]
    assert entry["psnr"] > 25 and entry["lpips_vgg"] is None and "vgg16" in entry["notes"]["lpips_vgg"]
    table = (out / "eval_interval.md").read_text()
    assert "| x2 | trilinear |" in table and "SNLI(↓)" in table and "n/c (lpips_alex)" in table
    assert len((out / "eval_interval.csv").read_text().splitlines()) == 1 + 2 * 3
    for name in ("eval_interval_vs_scale.png", "head_x2_interval.png", "head_x2.5_interval.png"):
        assert (out / name).stat().st_size > 1000
    assert "| x2.5 | trilinear |" in capsys.readouterr().out


def test_eval_command_on_a_real_thick_input(tmp_path):
    out = tmp_path / "out"
    code = main(["eval", "--data", str(SAMPLE_CT), "--scales", "2", "--methods", "trilinear",
                 "--out", str(out), "--no-figures", "--no-lpips"])
    assert code == 0
    table = (out / "eval_thick.md").read_text()
    assert "cycle PSNR" in table and "SNLI" in table and "| PSNR(↑)" not in table


def test_eval_command_rejects_a_scale_without_ground_truth(tmp_path, capsys):
    code = main(["eval", "--data", str(HEAD_CT), "--scales", "2.37", "--methods", "trilinear",
                 "--out", str(tmp_path)])
    assert code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("cycleinr: error: scale 2.37 has no ground truth") and "\n" not in message
