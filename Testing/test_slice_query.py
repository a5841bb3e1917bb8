"""The inference fast path (slice_query) gives CycleINR.query's values; the tile planner's choices."""
import dataclasses

import numpy as np
import pytest
import torch

from cycleinr import build_model, preset
from cycleinr import slice_query
from cycleinr.cost import encoder_macs_per_voxel, job_cost
from cycleinr.geometry import output_positions
from cycleinr.inference import plan_tiles, tile_bytes

SCALES = [2.0, 2.5, 5 / 3, 3.3, 5.0]


def _network(config, seed=0):
    """Random weights with sharpened attention (untrained logits are near-uniform and would hide
    a wrong neighbour order) and a decoder whose correction is not negligible."""
    torch.manual_seed(seed)
    network = build_model(config).eval()
    with torch.no_grad():
        if config.attention:
            network.to_query.weight.mul_(6.0)
            network.to_key.weight.mul_(6.0)
        network.decoder.layers[-1].weight.mul_(4.0)
    return network


def _compare(network, scale, shape=(6, 9, 8), window=None, max_voxels=1 << 16):
    torch.manual_seed(1)
    volume = torch.rand(1, 1, *shape)
    positions = torch.as_tensor(output_positions(shape[0], scale), dtype=torch.float32)
    with torch.inference_mode():
        latent = network.encode(volume)
        reference = network.query(volume, latent, positions, 1 / scale)
        prepared = slice_query.prepare(network, volume, latent)
        fast = slice_query.query_slices(network, prepared, positions, 1 / scale, window=window,
                                        max_voxels=max_voxels)
    if window is not None:
        (r0, r1), (c0, c1) = window
        reference = reference[..., r0:r1, c0:c1]
    return fast, reference


@pytest.mark.parametrize("name", ["tiny", "cpu", "cpu-wide", "cpu-fact"])
@pytest.mark.parametrize("scale", SCALES)
def test_fast_path_matches_query(name, scale):
    fast, reference = _compare(_network(preset(name)), scale)
    assert fast.shape == reference.shape
    spread = float(reference.abs().max())
    assert torch.allclose(fast, reference, rtol=1e-4, atol=1e-4 * spread)


@pytest.mark.parametrize("flags", [dict(attention=False), dict(attention_residual=False),
                                   dict(predict_residual=False, output_relu=True)])
def test_fast_path_matches_query_for_ablations(flags):
    config = dataclasses.replace(preset("tiny"), **flags)
    for scale in (2.5, 4.0):
        fast, reference = _compare(_network(config, seed=3), scale)
        assert torch.allclose(fast, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))


def test_fast_path_windows_and_small_chunks_at_the_borders():
    """A window touching every border, handled a few rows at a time, gives the same values."""
    network = _network(preset("cpu"))
    whole, reference = _compare(network, 3.3, shape=(5, 10, 7))
    for window in [((0, 10), (0, 7)), ((0, 3), (4, 7)), ((7, 10), (0, 2)), ((2, 8), (1, 6))]:
        part, expected = _compare(network, 3.3, shape=(5, 10, 7), window=window, max_voxels=20)
        assert torch.allclose(part, expected, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))


def test_fast_path_is_not_just_interpolation():
    """The decoder's correction is large enough here that a wrong latent would show."""
    network = _network(preset("cpu"))
    fast, _ = _compare(network, 2.5)
    with torch.no_grad():
        network.decoder.layers[-1].weight.zero_()
        network.decoder.layers[-1].bias.zero_()
    interpolated, _ = _compare(network, 2.5)
    assert float((fast - interpolated).abs().max()) > 0.05


def test_planner_fits_the_budget_and_keeps_a_short_slice_axis_whole():
    network = build_model(preset("cpu"))
    budget = 1 << 30
    plan = plan_tiles(network, (64, 512, 512), budget)
    assert plan.core[0] == 64  # no halo along the slice axis at all
    padded = [min(c + 2 * plan.halo, s) for c, s in zip(plan.core, (64, 512, 512))]
    assert tile_bytes(network, tuple(padded), plan.core) <= budget
    assert plan.halo == network.config.receptive_radius


def test_cost_count_matches_the_issue_for_the_paper_model():
    config = preset("paper")
    assert encoder_macs_per_voxel(config) == pytest.approx(2.2e6, rel=0.02)
    cost = job_cost(config, 512 * 512 * 64, 512 * 512 * 316, 5.0)
    assert cost.flops == pytest.approx(1.5e14, rel=0.1)


def test_fast_path_runs_under_bfloat16_autocast():
    """The GPU path runs under autocast; CPU bfloat16 autocast checks the dtype plumbing here."""
    network = _network(preset("cpu"))
    torch.manual_seed(1)
    volume = torch.rand(1, 1, 5, 8, 9)
    positions = output_positions(5, 2.5)
    with torch.inference_mode():
        latent = network.encode(volume)
        reference = network.query(volume, latent, torch.as_tensor(positions, dtype=torch.float32), 0.4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            latent_half = network.encode(volume)
            prepared = slice_query.prepare(network, volume, latent_half, background=0.05)
            fast = slice_query.query_slices(network, prepared, positions, 0.4)
    assert fast.shape == reference.shape
    assert float((fast.float() - reference).abs().max()) < 0.05 * float(reference.abs().max())


@pytest.mark.parametrize("factorised", [False, True])
def test_encoder_reach_is_the_receptive_radius(factorised):
    """One changed LR voxel moves the latent exactly within the radius the tile halo relies on
    (minus the final 3^3 neighbourhood of the sampler), and the MAC count follows the layers."""
    config = dataclasses.replace(preset("tiny"), encoder_blocks=2, convs_per_block=2,
                                 factorised_encoder=factorised)
    network = _network(config)
    reach = config.receptive_radius - 1
    size = 2 * reach + 5
    volume = torch.rand(1, 1, size, size, size)
    changed = volume.clone()
    centre = size // 2
    changed[0, 0, centre, centre, centre] += 1.0
    with torch.no_grad():
        moved = (network.encode(changed) - network.encode(volume)).abs().amax(dim=1)[0] > 0
    where = torch.nonzero(moved)
    assert int((where - centre).abs().max()) == reach
    macs = sum(m.weight.numel() for m in network.encoder.modules() if isinstance(m, torch.nn.Conv3d))
    assert encoder_macs_per_voxel(config) == macs
