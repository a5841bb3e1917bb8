"""Interpolation baselines: same grid as super_resolve, exact at the input slices, geometry kept."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import HEAD_CT, OBLIQUE_MR
from cycleinr.baselines import interpolate, interpolate_image
from cycleinr.errors import InputError


@pytest.fixture(scope="module")
def head_ct():
    return sitk.ReadImage(str(HEAD_CT))


@pytest.mark.parametrize("scale", [2.5, 3])
def test_grid_equals_super_resolve_image(head_ct, tiny_model, scale):
    from cycleinr.api import super_resolve_image

    small = head_ct[:40, :40, :12]
    expected, _ = super_resolve_image(small, scale=scale, model=tiny_model, device="cpu")
    got = interpolate_image(small, scale=scale, method="linear")
    assert got.GetSize() == expected.GetSize()
    assert np.allclose(got.GetSpacing(), expected.GetSpacing(), rtol=0, atol=1e-12)
    assert got.GetOrigin() == expected.GetOrigin()
    assert got.GetDirection() == expected.GetDirection()
    assert got.GetPixelID() == expected.GetPixelID()


@pytest.mark.parametrize("method", ["linear", "bspline", "nearest"])
@pytest.mark.parametrize("scale", [2, 3, 5])
def test_input_slices_reproduced_exactly(head_ct, method, scale):
    volume = sitk.GetArrayFromImage(head_ct)
    spacing = tuple(reversed(head_ct.GetSpacing()))
    out = interpolate(volume, spacing, scale=scale, method=method)
    assert out.dtype == volume.dtype
    assert out.shape == ((volume.shape[0] - 1) * scale + 1,) + volume.shape[1:]
    assert np.array_equal(out[::scale], volume)


def test_linear_float_exact_and_midway_is_the_mean(head_ct):
    volume = sitk.GetArrayFromImage(head_ct)[:10].astype(np.float64) + 0.25
    out = interpolate(volume, (1.5, 0.957, 0.957), scale=2, method="linear")
    assert np.array_equal(out[::2], volume)
    assert np.allclose(out[1::2], (volume[:-1] + volume[1:]) / 2, atol=1e-9)


def test_fractional_scale_positions(head_ct):
    volume = sitk.GetArrayFromImage(head_ct)[:9].astype(np.float32)
    out = interpolate(volume, (1.5, 0.957, 0.957), scale=2.5, method="linear")
    assert out.shape[0] == 21  # floor(8 * 2.5) + 1
    # output slice 1 sits at input index 0.4
    assert np.allclose(out[1], 0.6 * volume[0] + 0.4 * volume[1], atol=1e-3)
    assert np.array_equal(out[5], volume[2])


def test_bspline_slabs_match_whole_volume_resampling(head_ct, monkeypatch):
    """Slab processing gives what one SimpleITK resampling of the whole volume gives."""
    import cycleinr.baselines as baselines

    volume = sitk.GetArrayFromImage(head_ct).astype(np.float32)
    monkeypatch.setattr(baselines, "_SLAB_VOXELS", 96 * 96 * 20)  # force several slabs
    out = interpolate(volume, (1.5, 0.957, 0.957), scale=3, method="bspline")
    image = sitk.GetImageFromArray(volume)
    reference = sitk.Resample(image, (96, 96, out.shape[0]), sitk.Transform(), sitk.sitkBSpline,
                              (0, 0, 0), (1, 1, 1 / 3), (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0,
                              sitk.sitkFloat32)
    assert np.abs(out - sitk.GetArrayFromImage(reference)).max() < 1e-3


def test_non_slice_axis_and_oblique_direction_kept():
    image = sitk.ReadImage(str(OBLIQUE_MR))
    out = interpolate_image(image, scale=2, slice_axis="I", method="bspline")
    assert out.GetDirection() == image.GetDirection()
    assert out.GetOrigin() == image.GetOrigin()
    size, spacing = image.GetSize(), image.GetSpacing()
    assert out.GetSize() == ((size[0] - 1) * 2 + 1, size[1], size[2])
    assert np.allclose(out.GetSpacing(), (spacing[0] / 2, spacing[1], spacing[2]))
    # the first output voxel of every row is the first input voxel (same physical point)
    assert np.array_equal(sitk.GetArrayViewFromImage(out)[:, :, ::2], sitk.GetArrayViewFromImage(image))


def test_target_spacing_and_bad_input():
    volume = np.zeros((6, 8, 8), dtype=np.int16)
    out = interpolate(volume, (3.0, 1.0, 1.0), target_spacing=1.0)
    assert out.shape == (16, 8, 8)
    with pytest.raises(InputError, match="unknown interpolation method"):
        interpolate(volume, (3.0, 1.0, 1.0), scale=2, method="cubic-ish")
    with pytest.raises(InputError, match="greater than 1"):
        interpolate(volume, (3.0, 1.0, 1.0), scale=0.5)
