"""Adapt to this scan: the slice profile, the keep-base rule, and the switch in every front end."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ENGINE_DIR, HEAD_CT, REPO, SAMPLE_CT, SHARED_DATA

import cycleinr.adapt as adapt_module
from cycleinr.adapt import adapt_model, slice_axis_psnr, thin_if_gaps
from cycleinr.api import super_resolve
from cycleinr.cli import main
from cycleinr.errors import Cancelled, InputError
from cycleinr.slice_profile import (SliceProfile, box_weights, degrade_with_profile, dicom_slice_profile,
                                    estimate_profile, profile_for)
from cycleinr.weights import load_model, save_model

FAST = dict(batch_size=1, lr_slices=3, patch=16, validation_patches=2, checks=1)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def thick_ct():
    """The real thick-slice chest CT crop (2.5 mm slices, 0.98 mm in-plane), [k, j, i], cut small."""
    image = sitk.ReadImage(str(SAMPLE_CT))
    return sitk.GetArrayFromImage(image)[:12, 80:176, 80:176].copy(), tuple(reversed(image.GetSpacing()))


@pytest.fixture
def tiny_weights(tmp_path, tiny_model):
    return str(save_model(tmp_path / "tiny.safetensors", tiny_model.network, tiny_model.info))


# the slice profile -------------------------------------------------------------------------------

def test_overlapping_slices_are_wide_boxes_with_partial_ends():
    profile = SliceProfile(5.0, 2.5)  # the TCGA scan: 5 mm thick every 2.5 mm
    assert profile.width(2.0) == 4.0 and "overlapping" in profile.describe()
    first, weights = box_weights(2.0, 4.0, 10)  # [0, 4]: half of samples 0 and 4, all of 1-3
    assert first == 0 and np.allclose(weights, [0.125, 0.25, 0.25, 0.25, 0.125])
    first, weights = box_weights(0.0, 4.0, 10)  # cut at the start: [-0.5, 2], renormalised
    assert first == 0 and np.allclose(weights, np.array([1.0, 1.0, 0.5]) / 2.5)
    fine = (np.arange(9, dtype=np.float32) ** 2).reshape(9, 1, 1)
    lr = degrade_with_profile(fine, 2.0, profile.width(2.0))[:, 0, 0]
    assert lr.shape == (5,) and lr[1] == pytest.approx(0.25 * (1 + 4 + 9) + 0.125 * 16)  # 5.5, not 4


def test_gapped_slices_sample_thin_boxes():
    profile = SliceProfile(1.25, 2.5)  # 1.25 mm slices every 2.5 mm: gaps between them
    assert profile.width(2.0) == 1.0 and "gaps" in profile.describe()
    fine = (np.arange(9, dtype=np.float32) ** 2).reshape(9, 1, 1)
    assert np.array_equal(degrade_with_profile(fine, 2.0, profile.width(2.0))[:, 0, 0], fine[::2, 0, 0])
    wider = SliceProfile(2.5, 5.0).width(4.0)  # half as thick as the spacing, x4: 2 samples wide
    assert degrade_with_profile(fine, 4.0, wider)[1, 0, 0] == pytest.approx(0.25 * 9 + 0.5 * 16 + 0.25 * 25)
    # between two fine samples a one-sample box blends them linearly
    assert degrade_with_profile(fine, 2.5, 1.0)[1, 0, 0] == pytest.approx(0.5 * 4 + 0.5 * 9)
    unknown = profile_for(2.5)  # a NIfTI without --slice-thickness: not guessed, both ends
    assert unknown.thickness is None and unknown.widths(5.0) == (1.0, 5.0) and "unknown" in unknown.describe()
    assert profile_for(2.5, 5.0).widths(2.0) == (4.0,)
    with pytest.raises(InputError):
        SliceProfile(0.0, 2.5)


def _array(path):
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def test_the_real_overlapping_scan_measures_as_5_mm_every_2_5():
    volume, spacing = _array(SAMPLE_CT)  # TCGA: 5 mm slices reconstructed every 2.5 mm
    profile = estimate_profile(volume, spacing, 0)
    assert profile.thickness == pytest.approx(5.0) and "overlapping" in profile.describe()
    assert "estimated" in profile.describe()


@pytest.mark.parametrize("factor", [2, 3])
def test_thin_ct_made_thick_measures_gaps_when_sampled_and_contiguous_when_averaged(factor):
    volume, spacing = _array(HEAD_CT)  # 1.5 mm slices of a real head CT
    count = volume.shape[0] // factor * factor
    sampled = volume[:count:factor]
    averaged = volume[:count].reshape(count // factor, factor, *volume.shape[1:]).mean(axis=1)
    thick_spacing = (spacing[0] * factor, spacing[1], spacing[2])
    gaps = estimate_profile(sampled, thick_spacing, 0)
    contiguous = estimate_profile(averaged, thick_spacing, 0)
    assert gaps.thickness / gaps.spacing <= 0.5 and "gaps" in gaps.describe()
    assert 0.75 <= contiguous.thickness / contiguous.spacing <= 1.25


def test_measured_gaps_are_taken_as_thin_slices_at_the_scale(tiny_model):
    """The estimate tells gaps from slabs, not one gap width from another: pairs are made thin."""
    volume, spacing = _array(HEAD_CT)  # 1.5 mm slices of a real head CT, every 3rd kept
    count = volume.shape[0] // 3 * 3
    sampled, thick_spacing = volume[:count:3].copy(), (spacing[0] * 3, spacing[1], spacing[2])
    result = adapt_model(sampled, thick_spacing, 3.0, tiny_model, minutes=5, max_steps=1, device="cpu", **FAST)
    assert result.profile.measured and result.profile.thickness == pytest.approx(spacing[0])
    assert "taken as thin" in result.message() and result.profile.width(3.0) == pytest.approx(1.0)
    given = SliceProfile(2.0, 4.5)
    slabs = SliceProfile(4.5, 4.5, "estimated", measured=True)
    assert thin_if_gaps(given, 3.0) is given and thin_if_gaps(slabs, 3.0) is slabs


def test_adaptation_patches_of_air_are_drawn_again(thick_ct):
    """A field of view that is mostly air: with min_foreground the pairs hold tissue."""
    from cycleinr.adapt import ProfilePairs
    from cycleinr.normalise import intensity_map
    from cycleinr.pairs import TrainingVolume, _foreground
    from cycleinr.config import CT_NORMALISATION

    volume, spacing = thick_ct  # a real chest crop, placed in a field of air three times as wide
    wide = np.full((volume.shape[0], 3 * volume.shape[1], 3 * volume.shape[2]), -1024.0, np.float32)
    wide[:, :volume.shape[1], :volume.shape[2]] = volume
    intensities = intensity_map(wide, CT_NORMALISATION)
    source = TrainingVolume("wide", wide, spacing, (1, 2), intensities)

    def tissue_share(min_foreground):
        pairs = ProfilePairs([source], 3.0, (1.0,), 4, 24, 4, seed=0, min_foreground=min_foreground)
        shares = [float((batch.hr > 0.05).mean()) for batch in (pairs.sample() for _ in range(20))]
        return float(np.mean(shares))

    assert tissue_share(0.0) < 0.25  # most random patches are air
    assert tissue_share(0.3) > 0.5
    assert _foreground(source, wide[:, :24, :24]) > 0.3


def test_the_learning_rate_warms_up_then_decays_to_zero_over_the_budget():
    from cycleinr.adapt import WARM_UP, learning_rate_factor
    rising = [learning_rate_factor(f * WARM_UP) for f in (0.0, 0.5, 1.0)]
    assert 0 < rising[0] < rising[1] < rising[2] == pytest.approx(1.0)
    falling = [learning_rate_factor(f) for f in (0.25, 0.5, 0.75, 1.0, 1.5)]
    assert all(a > b for a, b in zip(falling, falling[1:4])) and falling[3] == pytest.approx(0.0)
    assert falling[4] == pytest.approx(0.0)  # past the budget (the last check): nothing more


def test_a_profile_that_cannot_be_measured_is_refused_with_the_reason(thick_ct):
    volume, spacing = thick_ct
    with pytest.raises(InputError, match="from 12 slices"):
        estimate_profile(volume, spacing, 0)
    with pytest.raises(InputError, match="no tissue"):
        estimate_profile(np.full((40, 64, 64), -1024, np.int16), (2.5, 1.0, 1.0), 0)


def test_adaptation_without_a_thickness_measures_it_and_says_so(tiny_model):
    volume, spacing = _array(SAMPLE_CT)
    volume = volume[:, 64:192, 64:192].copy()
    result = adapt_model(volume, spacing, 2.0, tiny_model, minutes=5, max_steps=1, device="cpu", **FAST)
    assert result.profile.thickness == pytest.approx(5.0) and "estimated" in result.message()
    small, small_spacing = volume[:12], spacing  # too few slices to measure: both ends, and why
    result = adapt_model(small, small_spacing, 2.0, tiny_model, minutes=5, max_steps=1, device="cpu", **FAST)
    assert result.profile.thickness is None and "not measurable" in result.message()


def test_thickness_and_spacing_come_from_the_dicom_headers(tmp_path):
    source = SHARED_DATA / "tcga_thca_ct_dicom_subset"
    if not source.is_dir():
        pytest.skip(f"DICOM subset not found at {source}")
    folder = tmp_path / "series"
    shutil.copytree(source, folder)
    profile = dicom_slice_profile(folder)
    assert profile.thickness == pytest.approx(5.0) and profile.spacing == pytest.approx(2.5, abs=1e-3)
    assert "DICOM" in profile.source and "overlapping" in profile.describe()


# the keep-base rule ------------------------------------------------------------------------------

def test_harmful_adaptation_falls_back_to_the_base_model_and_says_so(thick_ct):
    volume, spacing = thick_ct
    base = load_model(None, "cpu")  # the bundled model: a good base that a huge step can only spoil
    before = {k: v.clone() for k, v in base.network.state_dict().items()}
    result = adapt_model(volume, spacing, 2.0, base, minutes=5, max_steps=2, lr=5.0, device="cpu", **FAST)
    assert not result.adapted and result.model is base
    assert result.adapted_psnr < result.base_psnr
    assert "no improvement, the base model cycleinr_ct_cpu was used" in result.message()
    assert all(torch.equal(before[k], v) for k, v in base.network.state_dict().items())
    out = super_resolve(volume, spacing, scale=2.0, model=base, device="cpu", adapt_minutes=5,
                        adapt_options=dict(max_steps=2, lr=5.0, **FAST))
    assert out.model_name == "cycleinr_ct_cpu" and not out.adaptation.adapted
    assert any("the base model cycleinr_ct_cpu was used" in note for note in out.warnings)


def test_an_accepted_adaptation_is_a_changed_copy(thick_ct, tiny_model):
    volume, spacing = thick_ct
    before = {k: v.clone() for k, v in tiny_model.network.state_dict().items()}
    result = adapt_model(volume, spacing, 2.5, tiny_model, minutes=5, max_steps=2, lr=1e-3,
                         min_gain_db=-np.inf, slice_thickness=5.0, device="cpu", **FAST)
    assert result.adapted and result.model is not tiny_model and result.steps == 2
    assert result.model.name == "tiny-untrained-test-adapted"
    assert any(not torch.equal(before[k], v) for k, v in result.model.network.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in tiny_model.network.state_dict().items())
    record = result.model.info.provenance["adaptation"]
    assert record["slice_thickness_mm"] == 5.0 and record["slice_spacing_mm"] == 2.5
    assert "adapted model was used" in result.message()


def test_a_frozen_encoder_stays_as_it_was_and_the_decoder_learns(thick_ct, tiny_model):
    volume, spacing = thick_ct
    before = {k: v.clone() for k, v in tiny_model.network.state_dict().items()}
    result = adapt_model(volume, spacing, 2.5, tiny_model, minutes=5, max_steps=2, lr=1e-3, trainable="decoder",
                         min_gain_db=-np.inf, slice_thickness=5.0, device="cpu", **FAST)
    after = result.model.network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in after if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("decoder."))
    assert all(p.requires_grad for p in result.model.network.parameters())  # trainable again for the caller
    with pytest.raises(InputError, match="trainable must be one of all, decoder"):
        adapt_model(volume, spacing, 2.5, tiny_model, minutes=5, max_steps=1, trainable="tail", device="cpu", **FAST)


def test_the_slice_axis_check_scores_real_acquired_slices_and_sees_a_damaged_model():
    from cycleinr.api import pick_model
    from cycleinr.normalise import intensity_map
    from cycleinr.weights import LoadedModel

    volume, spacing = _array(HEAD_CT)
    base = pick_model(None, torch.device("cpu"))
    intensities = intensity_map(volume, base.info.normalisation)
    good = slice_axis_psnr(volume, spacing, 0, base, "cpu", intensities)
    damaged = LoadedModel(__import__("copy").deepcopy(base.network), base.info, None)
    with torch.no_grad():
        for parameter in damaged.network.parameters():
            parameter.mul_(1.5)
    assert 25.0 < good < 60.0 and slice_axis_psnr(volume, spacing, 0, damaged, "cpu", intensities) < good
    assert slice_axis_psnr(volume[:4], spacing, 0, base, "cpu", intensities) is None  # too few slices


def test_the_slice_axis_check_averages_thin_predictions_over_a_slab():
    """Contiguous slabs: a thin-slice model is judged by its fine slices averaged over the dropped
    slab, which must match the slab better than its one thin slice does, and a damaged model
    must still score lower."""
    from cycleinr.api import pick_model
    from cycleinr.normalise import intensity_map
    from cycleinr.weights import LoadedModel

    volume, spacing = _array(HEAD_CT)  # 1.5 mm slices of a real head CT, made 4.5 mm slabs
    count = volume.shape[0] // 3 * 3
    slabs = volume[:count].astype(np.float32).reshape(count // 3, 3, *volume.shape[1:]).mean(axis=1)
    slab_spacing = (spacing[0] * 3, spacing[1], spacing[2])
    base = pick_model(None, torch.device("cpu"))
    intensities = intensity_map(slabs, base.info.normalisation)
    as_thin = slice_axis_psnr(slabs, slab_spacing, 0, base, "cpu", intensities)
    as_slab = slice_axis_psnr(slabs, slab_spacing, 0, base, "cpu", intensities, thickness=slab_spacing[0])
    assert as_slab > as_thin + 0.1
    thin_thickness = slice_axis_psnr(slabs, slab_spacing, 0, base, "cpu", intensities, thickness=1.5)
    assert thin_thickness == as_thin  # thinner than the spacing: compared as they are
    damaged = LoadedModel(__import__("copy").deepcopy(base.network), base.info, None)
    with torch.no_grad():
        for parameter in damaged.network.parameters():
            parameter.mul_(1.5)
    assert slice_axis_psnr(slabs, slab_spacing, 0, damaged, "cpu", intensities, thickness=slab_spacing[0]) < as_slab


def test_the_detail_term_is_off_for_slabs_and_on_for_gaps(thick_ct, tiny_model):
    from cycleinr.adapt import DETAIL_WEIGHT_GAPS, DETAIL_WEIGHT_SLABS, detail_weight_for

    assert detail_weight_for(SliceProfile(5.0, 2.5)) == detail_weight_for(SliceProfile(2.5, 2.5)) == DETAIL_WEIGHT_SLABS
    assert detail_weight_for(SliceProfile(1.0, 2.5)) == detail_weight_for(SliceProfile(None, 2.5)) == DETAIL_WEIGHT_GAPS
    assert DETAIL_WEIGHT_GAPS > 0 == DETAIL_WEIGHT_SLABS
    volume, spacing = thick_ct
    for thickness, weight in ((5.0, DETAIL_WEIGHT_SLABS), (1.0, DETAIL_WEIGHT_GAPS)):
        result = adapt_model(volume, spacing, 2.5, tiny_model, minutes=5, max_steps=1, lr=1e-3,
                             min_gain_db=-np.inf, slice_thickness=thickness, device="cpu", **FAST)
        assert result.model.info.provenance["adaptation"]["detail_weight"] == weight


def test_slabs_adapt_at_a_higher_learning_rate_than_gaps(thick_ct, tiny_model):
    from cycleinr.adapt import LEARNING_RATE_GAPS, LEARNING_RATE_SLABS, learning_rate_for

    assert learning_rate_for(SliceProfile(5.0, 2.5)) == LEARNING_RATE_SLABS > LEARNING_RATE_GAPS
    assert learning_rate_for(SliceProfile(1.0, 2.5)) == learning_rate_for(SliceProfile(None, 2.5)) == LEARNING_RATE_GAPS
    volume, spacing = thick_ct
    for thickness, rate in ((5.0, LEARNING_RATE_SLABS), (1.0, LEARNING_RATE_GAPS), (1.0, 2e-4)):
        given = None if rate != 2e-4 else rate  # a rate that is given wins
        result = adapt_model(volume, spacing, 2.5, tiny_model, minutes=5, max_steps=1, lr=given,
                             min_gain_db=-np.inf, slice_thickness=thickness, device="cpu", **FAST)
        assert result.model.info.provenance["adaptation"]["lr"] == rate


def test_gaps_train_the_new_slices_only_and_slabs_all_slices(thick_ct, tiny_model, monkeypatch):
    import cycleinr.train as train_module
    seen = []
    real = train_module.backward_on_batch

    def recording(*args, **kwargs):
        seen.append(args[-1] if len(args) > 6 else kwargs.get("target_slices"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "backward_on_batch", recording)
    volume, spacing = thick_ct
    for thickness in (1.0, 5.0):
        adapt_model(volume, spacing, 2.0, tiny_model, minutes=5, max_steps=1, slice_thickness=thickness,
                    device="cpu", **FAST)
    gaps, slabs = seen
    assert gaps is not None and not gaps[0] and gaps[1] and not gaps[2]  # x2: every other slice is new
    assert slabs is None


def test_an_adaptation_worse_on_the_real_slice_axis_is_not_used(thick_ct, tiny_model, monkeypatch):
    volume, spacing = thick_ct
    scores = iter([30.0, 29.5])  # base, adapted: the adapted copy loses on the real slice axis
    monkeypatch.setattr(adapt_module, "slice_axis_psnr", lambda *args: next(scores))
    # no thickness given, and 12 slices are too few to measure it: the profile is not known
    result = adapt_model(volume, spacing, 2.5, tiny_model, minutes=5, max_steps=2, lr=1e-3,
                         min_gain_db=-np.inf, device="cpu", **FAST)
    assert not result.adapted and result.model is tiny_model
    assert (result.slice_check_base, result.slice_check_adapted) == (30.0, 29.5)
    assert "30.00 -> 29.50 dB" in result.message()
    if result.gain_db > 0:
        assert "worse on the real slice axis" in result.message()


def test_a_given_thickness_is_trusted_without_the_real_slice_check(thick_ct, tiny_model, monkeypatch):
    def must_not_run(*args):
        raise AssertionError("the real-slice check ran for a given thickness")

    monkeypatch.setattr(adapt_module, "slice_axis_psnr", must_not_run)
    volume, spacing = thick_ct
    result = adapt_model(volume, spacing, 2.5, tiny_model, minutes=5, max_steps=2, lr=1e-3,
                         min_gain_db=-np.inf, slice_thickness=5.0, device="cpu", **FAST)
    assert result.adapted and result.slice_check_adapted is None


def test_a_measured_thickness_is_checked_on_the_real_slices(tiny_model, monkeypatch):
    calls = []
    monkeypatch.setattr(adapt_module, "slice_axis_psnr", lambda *args: calls.append(args[-1]) or 30.0)
    volume, spacing = _array(SAMPLE_CT)
    volume = volume[:, 64:192, 64:192].copy()
    result = adapt_model(volume, spacing, 2.0, tiny_model, minutes=5, max_steps=1, lr=1e-3,
                         min_gain_db=-np.inf, device="cpu", **FAST)
    assert result.profile.measured and calls == [pytest.approx(5.0)] * 2  # base and adapted, its thickness


def test_cancel_during_adaptation_stops_it(thick_ct, tiny_model):
    volume, spacing = thick_ct
    stop = threading.Event()
    seen = []

    def progress(fraction):  # the first adaptation step reports, then the user cancels
        seen.append(fraction)
        stop.set()

    with pytest.raises(Cancelled, match="adaptation cancelled at step 1"):
        super_resolve(volume, spacing, scale=2.0, model=tiny_model, device="cpu", adapt_minutes=5,
                      progress=progress, cancel=stop, adapt_options=FAST)
    assert len(seen) == 1 and seen[0] < 0.5  # still in the adaptation share of the bar


def test_too_small_a_volume_is_refused_before_training(tiny_model):
    with pytest.raises(InputError, match="too small to adapt"):
        adapt_model(np.zeros((6, 20, 20), np.int16), (5.0, 1.0, 1.0), 4.0, tiny_model, minutes=1, device="cpu")


# the switch in the front ends --------------------------------------------------------------------

ADAPT_FAST = ["--adapt", "0.01"]  # 0.6 s of adaptation: a step or two of the tiny model


def test_cli_adapt_switch_end_to_end_keeps_nothing_unless_asked(tmp_path, tiny_weights, capsys):
    output = tmp_path / "out.nii.gz"
    code = main(["super-resolve", str(HEAD_CT), str(output), "--scale", "2", "--model", tiny_weights,
                 "--device", "cpu", *ADAPT_FAST])
    assert code == 0 and output.exists()
    printed = capsys.readouterr()
    assert "adapted to this scan" in printed.out and "was used" in printed.out
    assert "adapting tiny-untrained-test to this scan" in printed.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii.gz", "tiny.json", "tiny.safetensors"]
    kept = tmp_path / "kept.safetensors"
    code = main(["super-resolve", str(HEAD_CT), str(tmp_path / "out2.nii.gz"), "--scale", "2", "--model",
                 tiny_weights, "--device", "cpu", "--slice-thickness", "3", "--save-model", str(kept), *ADAPT_FAST])
    assert code == 0
    loaded = load_model(kept, "cpu")  # a loadable safetensors model: the one that was used
    used = "adapted" if "adapted model was used" in capsys.readouterr().out else "base"
    assert loaded.name == ("tiny-untrained-test-adapted" if used == "adapted" else "tiny-untrained-test")


def test_cli_adapt_options_are_checked_before_work(tmp_path, tiny_weights, capsys):
    import argparse

    from cycleinr.adapt import DEFAULT_MINUTES
    from cycleinr.commands import super_resolve as command
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert parser.parse_args(["a", "b", "--scale", "5", "--adapt"]).adapt == DEFAULT_MINUTES
    assert parser.parse_args(["a", "b", "--scale", "5"]).adapt is None
    output = tmp_path / "out.nii.gz"
    assert main(["super-resolve", str(HEAD_CT), str(output), "--scale", "2", "--save-model",
                 str(tmp_path / "m.safetensors")]) == 2
    assert "--save-model and --slice-thickness go with --adapt" in capsys.readouterr().err
    assert main(["super-resolve", str(HEAD_CT), str(output), "--scale", "2", "--adapt", "1", "--model",
                 tiny_weights, "--save-model", str(tmp_path / "m.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert main(["super-resolve", str(HEAD_CT), str(output), "--scale", "2", "--adapt", "0"]) == 2
    assert not output.exists()


def test_worker_reports_the_adaptation_phase_and_cancels_in_it(tmp_path, tiny_weights):
    from cycleinr.worker import EXIT_CANCELLED, EXIT_OK, build_parser, run
    args = build_parser().parse_args(["--input", str(HEAD_CT), "--output", str(tmp_path / "out.nrrd"),
                                      "--scale", "2", "--model", tiny_weights, "--threads", "1", *ADAPT_FAST])
    stream = io.StringIO()
    assert run(args, stream) == EXIT_OK
    lines = stream.getvalue().splitlines()
    status = [line for line in lines if line.startswith("STATUS ")]
    assert status[0].startswith("STATUS adapting tiny-untrained-test") and "was used" in status[-1]
    assert '"adapted": ' in lines[-1] and "adapted to this scan" in lines[-1]
    stop = threading.Event()
    stop.set()
    args.output, stream = str(tmp_path / "cancelled.nrrd"), io.StringIO()
    assert run(args, stream, stop) == EXIT_CANCELLED
    assert stream.getvalue().splitlines()[-1] == "ERROR Cancelled: adaptation cancelled at step 0"
    assert not (tmp_path / "cancelled.nrrd").exists()


@pytest.mark.slow
def test_dicom_series_adapts_with_its_header_profile(tmp_path, tiny_weights):
    source = SHARED_DATA / "tcga_thca_ct_dicom_subset"
    if not source.is_dir():
        pytest.skip(f"DICOM subset not found at {source}")
    folder = tmp_path / "series"
    shutil.copytree(source, folder)
    done = subprocess.run([sys.executable, "-m", "cycleinr", "super-resolve", str(folder),
                           str(tmp_path / "out.nii.gz"), "--scale", "2", "--model", tiny_weights, "--device", "cpu",
                           "--adapt", "0.02"], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(ENGINE_DIR), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert "5 mm thick every 2.5 mm (overlapping; DICOM SliceThickness and slice positions)" in done.stderr


def test_eval_adapts_with_each_inputs_own_spacing_as_thickness(thick_ct, tiny_weights):
    """`cycleinr eval --slice-thickness spacing`: slab averaging's true profile at every scale."""
    import argparse

    from cycleinr.commands.evaluate import thickness_value
    from cycleinr.evaluate import adapted_method

    assert thickness_value("spacing") == "spacing" and thickness_value("4.5") == 4.5
    with pytest.raises(argparse.ArgumentTypeError):
        thickness_value("nan")
    volume, spacing = thick_ct
    method = adapted_method(5, tiny_weights, "cpu", "spacing", max_steps=1, min_gain_db=-np.inf, **FAST)
    out = method(volume, spacing, 2.5, 0)
    assert out.shape[0] > volume.shape[0]
    assert method.adaptations[0].profile.thickness == pytest.approx(spacing[0])
