"""super_resolve_image writes into the output image's own buffer: the output is held once."""
import gc

import numpy as np
import SimpleITK as sitk

from cycleinr.api import super_resolve, super_resolve_image
from cycleinr.image_buffer import new_image_with_array


def test_writes_through_the_view_reach_the_image_and_outlive_the_name():
    image, array = new_image_with_array((3, 4, 5), np.int16)
    assert image.GetSize() == (5, 4, 3)
    array[2, 1, 4] = 77
    assert image.GetPixel(4, 1, 2) == 77
    del image
    gc.collect()
    array[0, 0, 0] = 5  # the array keeps the image (and its buffer) alive
    assert int(array.sum()) == 82


def test_types_simpleitk_lacks_fall_back():
    assert new_image_with_array((2, 2, 2), np.float16) == (None, None)


def test_image_output_shares_the_engine_result_and_matches_the_array_path(tiny_model):
    rng = np.random.default_rng(0)
    volume = rng.integers(-1000, 1500, size=(5, 12, 10)).astype(np.int16)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 3.0))
    output, result = super_resolve_image(image, scale=2.5, model=tiny_model, device="cpu")
    assert np.shares_memory(sitk.GetArrayViewFromImage(output), result.array)
    expected = super_resolve(volume, (3.0, 0.8, 0.8), scale=2.5, model=tiny_model, device="cpu").array
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(output), expected)
    assert output.GetSpacing() == (0.8, 0.8, 1.2)
