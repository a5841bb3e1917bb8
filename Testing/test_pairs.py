"""Training pairs: LR made by interval sampling or slab averaging, reproducible sampling, DDP shares."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import HEAD_CT, SAMPLE_CT

from cycleinr.config import CT_NORMALISATION
from cycleinr.normalise import intensity_map
from cycleinr.pairs import SCALES, PairSampler, TrainingVolume, degrade, fine_axes


def real_slices(count=13):
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(HEAD_CT))).astype(np.float32)
    return array[10:10 + count, 30:46, 30:46]


def volume_from(path) -> TrainingVolume:
    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    spacing = tuple(reversed(image.GetSpacing()))
    return TrainingVolume(path.name, array, spacing, fine_axes(spacing, 1.6), intensity_map(array, CT_NORMALISATION))


def test_scales_run_from_2_to_6_in_steps_of_a_tenth():
    assert SCALES[0] == 2.0 and SCALES[-1] == 6.0 and len(SCALES) == 41


def test_interval_sampling_keeps_every_rth_slice_and_blends_between():
    hr = real_slices()
    assert np.array_equal(degrade(hr, 3.0, "interval"), hr[[0, 3, 6, 9, 12]])
    lr = degrade(hr, 2.5, "interval")
    assert lr.shape[0] == 5  # positions 0, 2.5, 5, 7.5, 10
    np.testing.assert_allclose(lr[1], 0.5 * (hr[2] + hr[3]), rtol=1e-6)
    np.testing.assert_array_equal(lr[2], hr[5])


def test_slab_averaging_is_the_mean_of_the_covered_slices():
    hr = real_slices()
    lr = degrade(hr, 3.0, "slab")
    np.testing.assert_allclose(lr[1], hr[2:5].mean(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lr[0], hr[0:2].mean(axis=0), rtol=1e-5, atol=1e-4)  # cut off at the volume's edge
    even = degrade(hr, 2.0, "slab")
    np.testing.assert_allclose(even[2], 0.25 * hr[3] + 0.5 * hr[4] + 0.25 * hr[5], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        degrade(hr, 2.0, "nearest")


def test_thick_slice_volumes_are_learned_from_their_in_plane_axes():
    thick = volume_from(SAMPLE_CT)   # 2.5 mm slices, 0.98 mm in-plane
    thin = volume_from(HEAD_CT)      # 1.5 mm slices: z as well
    assert thick.fine_axes == (1, 2) and thin.fine_axes == (0, 1, 2)
    batch = PairSampler([thick], lr_slices=4, patch=16, batch_size=3, seed=1).sample()
    slices = int(np.floor(3 * batch.scale + 1e-6)) + 1
    assert batch.hr.shape == (3, 1, slices, 16, 16) and batch.lr.shape == (3, 1, 4, 16, 16)
    assert batch.scale in SCALES
    np.testing.assert_allclose(batch.hr_positions * batch.scale, np.arange(slices), atol=1e-9)
    assert 0 <= batch.hr.min() and batch.hr.max() <= 1  # the model's CT window


def test_sampler_state_restores_the_same_batches():
    sampler = PairSampler([volume_from(HEAD_CT)], lr_slices=3, patch=16, batch_size=2, seed=7)
    sampler.sample()
    state = sampler.state()
    first = sampler.sample()
    sampler.set_state(state)
    again = sampler.sample()
    assert first.scale == again.scale
    assert np.array_equal(first.lr, again.lr) and np.array_equal(first.hr, again.hr)


def test_process_shares_make_up_the_global_batch():
    volumes = [volume_from(HEAD_CT)]
    whole = PairSampler(volumes, lr_slices=3, patch=16, batch_size=4, seed=3)
    parts = [PairSampler(volumes, lr_slices=3, patch=16, batch_size=2, seed=3) for _ in range(2)]
    for _ in range(2):  # and they stay in step batch after batch
        full = whole.sample()
        shares = [sampler.sample(rank, 2) for rank, sampler in enumerate(parts)]
        assert all(share.scale == full.scale for share in shares)
        assert np.array_equal(np.concatenate([s.hr for s in shares]), full.hr)
        assert np.array_equal(np.concatenate([s.lr for s in shares]), full.lr)


def test_sampler_refuses_volumes_with_no_fine_axis():
    coarse = TrainingVolume("coarse", np.zeros((8, 8, 8), np.int16), (3.0, 2.0, 2.0), (),
                            intensity_map(np.zeros(1), CT_NORMALISATION))
    with pytest.raises(ValueError, match="fine enough"):
        PairSampler([coarse])


def test_every_scale_gives_lr_slices_and_targets_inside_them():
    sampler = PairSampler([volume_from(HEAD_CT)], lr_slices=4, patch=16, batch_size=1, seed=0,
                          degrade_modes=("interval",))
    for scale in SCALES:
        sampler.scales = np.array([scale])
        batch = sampler.sample()
        assert batch.lr.shape[2] == 4, scale
        assert batch.hr_positions[-1] <= 3 + 1e-9 and batch.hr_positions[-1] > 3 - 1 / scale, scale
        if float(scale).is_integer():  # interval LR slice k is HR slice k r itself
            np.testing.assert_array_equal(batch.lr[0, 0, 1], batch.hr[0, 0, int(scale)])


def test_patches_of_air_are_drawn_again_and_processes_stay_in_step():
    """The chest crop is half air: with min_foreground most patches are body, without it many
    are air; under process sharing the shares still make up the global batch."""
    volumes = [volume_from(SAMPLE_CT)]

    def body_fractions(sampler, batches=12):
        return np.concatenate([(sampler.sample().hr > 0.05).mean(axis=(1, 2, 3, 4)) for _ in range(batches)])

    plain = body_fractions(PairSampler(volumes, lr_slices=3, patch=16, batch_size=4, seed=5))
    chosen = body_fractions(PairSampler(volumes, lr_slices=3, patch=16, batch_size=4, seed=5, min_foreground=0.5))
    assert (plain < 0.5).mean() > 0.2
    assert (chosen >= 0.5).mean() > 0.95 and chosen.mean() > plain.mean()
    whole = PairSampler(volumes, lr_slices=3, patch=16, batch_size=4, seed=3, min_foreground=0.5)
    parts = [PairSampler(volumes, lr_slices=3, patch=16, batch_size=2, seed=3, min_foreground=0.5) for _ in range(2)]
    for _ in range(2):
        full = whole.sample()
        shares = [sampler.sample(rank, 2) for rank, sampler in enumerate(parts)]
        assert np.array_equal(np.concatenate([s.hr for s in shares]), full.hr)
    with pytest.raises(ValueError, match="min_foreground"):
        PairSampler(volumes, min_foreground=1.5)
