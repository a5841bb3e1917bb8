"""The skip-air option: voxels whose 27 LR neighbours are all air get linear interpolation."""
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from cycleinr import super_resolve
from cycleinr.baselines import interpolate
from conftest import SAMPLE_CT

SPACING = (2.5, 0.977, 0.977)


@pytest.fixture(scope="module")
def chest_edge():
    """A real CT crop across the body outline: air on one side, tissue on the other."""
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_CT)))[:8, 20:60, 30:66]
    assert (volume < -900).mean() > 0.2 and (volume > -500).mean() > 0.2
    return np.ascontiguousarray(volume)


def _air_everywhere_around(volume, scale, threshold):
    """Output voxels whose 3x3x3 LR neighbourhood (nearest slice +-1, clamped) is all below."""
    high = ndimage.maximum_filter(volume, size=3, mode="nearest") < threshold
    slices = volume.shape[0]
    positions = np.arange(int(np.floor((slices - 1) * scale + 1e-6)) + 1) / scale
    nearest = np.clip(np.rint(positions.astype(np.float32)), 0, slices - 1).astype(int)
    return high[nearest]


def test_threshold_below_everything_changes_nothing(chest_edge, tiny_model):
    plain = super_resolve(chest_edge, SPACING, scale=2.5, model=tiny_model, device="cpu").array
    skipped = super_resolve(chest_edge, SPACING, scale=2.5, model=tiny_model, device="cpu",
                            skip_below=-5000).array
    np.testing.assert_array_equal(plain, skipped)


def test_air_gets_interpolation_and_the_rest_is_unchanged(chest_edge, tiny_model):
    plain = super_resolve(chest_edge, SPACING, scale=2.5, model=tiny_model, device="cpu").array
    skipped = super_resolve(chest_edge, SPACING, scale=2.5, model=tiny_model, device="cpu",
                            skip_below=-900).array
    linear = interpolate(chest_edge, SPACING, scale=2.5, method="linear")
    air = _air_everywhere_around(chest_edge, 2.5, -900)
    assert 0.1 < air.mean() < 0.9
    assert np.abs(skipped[air].astype(int) - linear[air]).max() <= 1
    assert np.abs(skipped[~air].astype(int) - plain[~air]).max() <= 1
    assert np.abs(plain[air].astype(int) - linear[air]).max() > 1  # the network did differ there


def test_an_all_air_tile_skips_the_network(tiny_model):
    air = np.full((6, 20, 20), -1000, dtype=np.int16)
    air[2] = -980
    out = super_resolve(air, SPACING, scale=3, model=tiny_model, device="cpu", skip_below=-900,
                        tile_size=(6, 10, 10)).array
    np.testing.assert_array_equal(out, interpolate(air, SPACING, scale=3, method="linear"))


def test_eval_method_cycleinr_skip_is_the_engine_with_the_option(chest_edge, tiny_model):
    """`cycleinr eval --methods cycleinr-skip` measures the option's effect beside plain cycleinr."""
    from cycleinr.evaluate import method_from_spec

    name, skipping = method_from_spec("cycleinr-skip", "cpu", skip_below=-900)
    assert name == "cycleinr-skip"
    # the bundled model is what the method loads: compare with the engine run the same way
    direct = super_resolve(chest_edge, SPACING, scale=2.5, device="cpu", skip_below=-900).array
    np.testing.assert_array_equal(skipping(chest_edge, SPACING, 2.5, 0), direct)
    _, plain = method_from_spec("cycleinr", "cpu")
    assert not np.array_equal(plain(chest_edge, SPACING, 2.5, 0), direct)
