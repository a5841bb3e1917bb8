"""Output grid rules: slice axis choice, scale/spacing, slice count, positions."""
import numpy as np
import pytest

from cycleinr.errors import InputError
from cycleinr.geometry import axis_from_letter, output_positions, output_slice_count, plan_output


def test_slice_count_and_positions_follow_floor_rule():
    assert output_slice_count(36, 2.5) == 88           # floor(35 * 2.5) + 1
    assert output_slice_count(10, 5 / 3) == 16          # floor(9 * 5/3 + eps) + 1: exact thirds
    positions = output_positions(36, 2.5)
    assert positions[0] == 0 and positions[-1] == pytest.approx(34.8)  # never past the last centre
    assert np.allclose(np.diff(positions), 0.4)


def test_interval_sampled_volume_lines_up_with_original_grid():
    # 61 thin slices sampled every 5th -> 13 thick; x5 gives back slices 0..60 exactly
    grid = plan_output((13, 32, 32), (5.0, 1.0, 1.0), scale=5)
    assert grid.shape == (61, 32, 32)
    assert grid.spacing == (1.0, 1.0, 1.0)


def test_slice_axis_is_coarsest_unless_named():
    assert plan_output((40, 20, 30), (1.0, 0.8, 4.0), scale=2).slice_axis == 2
    assert plan_output((40, 20, 30), (1.0, 0.8, 4.0), scale=2, slice_axis=0).slice_axis == 0
    assert axis_from_letter("K") == 0 and axis_from_letter("i") == 2


def test_target_spacing_gives_scale():
    grid = plan_output((36, 8, 8), (2.5, 0.977, 0.977), target_spacing=1.0)
    assert grid.scale == pytest.approx(2.5)
    assert grid.shape[0] == 88


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=1.0), "greater than 1"),
    (dict(scale=0.5), "greater than 1"),
    (dict(scale=17), "maximum"),
    (dict(scale=float("nan")), "finite"),
    (dict(target_spacing=3.0), "greater than 1"),
    (dict(target_spacing=-1.0), "positive"),
    (dict(), "exactly one"),
    (dict(scale=2, target_spacing=1), "exactly one"),
])
def test_bad_scales_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        plan_output((10, 8, 8), (2.5, 1, 1), **kwargs)


def test_degenerate_shapes_are_refused():
    with pytest.raises(InputError, match="single slice"):
        plan_output((1, 8, 8), (2.5, 1, 1), scale=2)
    with pytest.raises(InputError, match="2D"):
        plan_output((8, 1, 8), (2.5, 1, 1), scale=2)
    with pytest.raises(InputError, match="3D"):
        plan_output((8, 8), (2.5, 1), scale=2)
