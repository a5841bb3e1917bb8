"""super_resolve on arrays and SimpleITK images: geometry, dtype, tiling invariance, progress, cancel."""
import threading

import numpy as np
import pytest
import SimpleITK as sitk

import cycleinr
from cycleinr import Cancelled, ScaleWarning, super_resolve
from cycleinr.api import super_resolve_image
from conftest import HEAD_CT, OBLIQUE_MR, SAMPLE_CT


@pytest.fixture(scope="module")
def head_ct():
    image = sitk.ReadImage(str(HEAD_CT))
    return image, sitk.GetArrayFromImage(image)


def test_tiles_do_not_change_the_result(head_ct, tiny_model):
    """With the halo at the receptive radius, any tiling gives the whole-volume answer."""
    _, volume = head_ct
    thick = volume[::3, :40, :44].astype(np.float32)
    whole = super_resolve(thick, (4.5, 0.957, 0.957), scale=3, model=tiny_model, device="cpu").array
    for tile in [(4, 9, 11), (5, 16, 7), (3, 40, 44)]:
        tiled = super_resolve(thick, (4.5, 0.957, 0.957), scale=3, model=tiny_model, device="cpu",
                              tile_size=tile).array
        assert np.abs(tiled - whole).max() < 0.05, tile  # HU; float rounding only


def test_small_halo_blends_smoothly(head_ct, tiny_model):
    """A halo below the receptive radius is an approximation: close, not exact."""
    _, volume = head_ct
    thick = volume[::3, :40, :40].astype(np.float32)
    whole = super_resolve(thick, (4.5, 1, 1), scale=3, model=tiny_model, device="cpu").array
    tiled = super_resolve(thick, (4.5, 1, 1), scale=3, model=tiny_model, device="cpu",
                          tile_size=(6, 16, 16), halo=2).array
    assert np.abs(tiled - whole).mean() < 5.0


def test_image_geometry_and_dtype_kept(head_ct, tiny_model):
    image, volume = head_ct
    thick = image[:, :, ::3]
    before = sitk.GetArrayFromImage(thick).copy()
    output, result = super_resolve_image(thick, scale=3, model=tiny_model, device="cpu")
    assert output.GetSize() == (96, 96, (16 - 1) * 3 + 1)
    assert output.GetOrigin() == thick.GetOrigin()
    assert output.GetDirection() == thick.GetDirection()
    assert output.GetSpacing()[2] == pytest.approx(thick.GetSpacing()[2] / 3)
    assert output.GetSpacing()[:2] == thick.GetSpacing()[:2]
    assert output.GetPixelID() == thick.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(thick), before)  # input untouched
    assert result.slice_axis == 0


def test_oblique_direction_survives(tiny_model):
    image = sitk.ReadImage(str(OBLIQUE_MR))
    thick = image[:, ::4, :]  # J is now the coarse axis of an oblique volume
    output, result = super_resolve_image(thick, scale=4, model=tiny_model, device="cpu")
    assert result.slice_axis == 1
    assert output.GetDirection() == thick.GetDirection()
    assert output.GetOrigin() == thick.GetOrigin()
    assert output.GetSize()[1] == (thick.GetSize()[1] - 1) * 4 + 1
    # output voxel (i, 4j, k) sits at the same physical point as input voxel (i, j, k)
    index = (5, 3, 7)
    assert np.allclose(output.TransformIndexToPhysicalPoint((5, 12, 7)),
                       thick.TransformIndexToPhysicalPoint(index), atol=1e-4)


def test_named_axis_and_fractional_scale(tiny_model):
    volume = np.random.default_rng(0).normal(40, 10, (20, 18, 16)).astype(np.float32)
    result = super_resolve(volume, (1, 1, 1), scale=5 / 3, slice_axis=2, model=tiny_model, device="cpu")
    assert result.array.shape == (20, 18, 26)  # floor(15 * 5/3) + 1
    assert result.spacing == pytest.approx((1, 1, 0.6))


def test_outside_trained_range_warns(tiny_model):
    volume = np.zeros((6, 8, 8), dtype=np.int16)
    with pytest.warns(ScaleWarning, match="outside the range"):
        result = super_resolve(volume, (3, 1, 1), scale=8, model=tiny_model, device="cpu")
    assert result.warnings


def test_progress_reaches_one_and_cancel_stops(tiny_model):
    volume = np.zeros((12, 24, 24), dtype=np.int16)
    seen = []
    super_resolve(volume, (3, 1, 1), scale=3, model=tiny_model, device="cpu", tile_size=(4, 12, 12),
                  progress=seen.append)
    assert seen[-1] == 1.0 and all(a <= b for a, b in zip(seen, seen[1:]))
    stop = threading.Event()
    calls = []

    def progress(fraction):
        calls.append(fraction)
        stop.set()

    with pytest.raises(Cancelled):
        super_resolve(volume, (3, 1, 1), scale=3, model=tiny_model, device="cpu", tile_size=(4, 12, 12),
                      progress=progress, cancel=stop)
    assert len(calls) == 1


def test_integer_output_is_rounded_and_clipped(tiny_model):
    volume = np.full((5, 8, 8), 3071, dtype=np.int16)
    volume[2] = -1024
    out = super_resolve(volume, (3, 1, 1), scale=2, model=tiny_model, device="cpu").array
    assert out.dtype == np.int16
    assert out.min() >= -1024 and out.max() <= 3071


def test_real_thick_sample_runs_end_to_end(tiny_model):
    image = sitk.ReadImage(str(SAMPLE_CT))[64:128, 64:128, :]
    output, result = super_resolve_image(image, target_spacing=1.0, model=tiny_model, device="cpu")
    assert result.scale == pytest.approx(2.5)
    assert output.GetSize() == (64, 64, 88)


@pytest.mark.parametrize("scale, halo", [(3, None), (2.5, None), (2.5, 2)])
def test_acquired_slices_are_kept_exactly(head_ct, tiny_model, scale, halo):
    """Output slices on an input slice are the input slice, bit for bit (int16 kept), whichever
    tiling path runs; the slices between are what the network gives without the option."""
    _, volume = head_ct
    thick = np.ascontiguousarray(volume[::3, :36, :40])  # int16 HU
    options = dict(scale=scale, model=tiny_model, device="cpu", tile_size=(5, 20, 40), halo=halo)
    kept = super_resolve(thick, (4.5, 0.957, 0.957), **options).array
    regenerated = super_resolve(thick, (4.5, 0.957, 0.957), keep_acquired=False, **options).array
    step = 5 if scale == 2.5 else 3  # output j lies at input j / r: on an input slice every p-th j for r = p / q
    on_input = np.arange(0, kept.shape[0], step)
    inputs = on_input * 2 // 5 if scale == 2.5 else on_input // 3
    assert np.array_equal(kept[on_input], thick[inputs])
    between = np.setdiff1d(np.arange(kept.shape[0]), on_input)
    assert between.size > 0
    assert np.abs(kept[between].astype(np.int32) - regenerated[between]).max() <= 1  # rounding of int16
    # The network does change acquired slices when asked to regenerate them, so the option is not a no-op.
    assert not np.array_equal(regenerated[on_input], thick[inputs])
