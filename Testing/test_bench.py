"""cycleinr bench: builds its volume from the real sample, reports every figure, writes JSON.

No timing is asserted (speed is measured by the command, never by tests); only that the figures
exist, are consistent with each other and with the job's size.
"""
import json

import numpy as np
import pytest

from cycleinr import cli
from cycleinr.bench import PeakHostMemory, bench_volume, matmul_rate


def test_bench_volume_is_the_real_sample_mirrored_or_cropped():
    grown, spacing = bench_volume((300, 20, 50))
    assert grown.shape == (50, 20, 300)
    assert spacing == pytest.approx((2.5, 0.977, 0.977), abs=1e-3)
    assert grown.std() > 100  # CT intensities, not a constant or noise in [0, 1]
    small, _ = bench_volume((16, 16, 4))
    assert small.shape == (4, 16, 16)


def test_peak_memory_sees_an_allocation_inside_the_block():
    with PeakHostMemory() as memory:
        block = np.ones(64 << 20, dtype=np.uint8)  # 64 MiB, touched
        block[::4096] = 2
        del block
    assert memory.peak - memory.before >= 60 << 20


def test_matmul_rate_is_positive():
    import torch
    assert matmul_rate(torch.device("cpu"), torch.float32, seconds=0.05, size=128) > 0


def test_bench_command_prints_the_table_and_writes_json(tmp_path, capsys):
    target = tmp_path / "bench.json"
    code = cli.main(["bench", "--shape", "24", "20", "6", "--scale", "2.5", "--device", "cpu",
                     "--preset", "tiny", "--json", str(target)])
    assert code == 0
    printed = capsys.readouterr().out
    for label in ("engine (CycleINR)", "SimpleITK linear", "SimpleITK B-spline", "floor", "engine / floor",
                  "peak host memory", "UNTRAINED"):
        assert label in printed
    figures = json.loads(target.read_text())
    assert figures["output_shape_xyz"] == [24, 20, 13]
    # output slices 0, 5 and 10 lie on input slices 0, 2, 4: copied, so not in the floor's count
    assert figures["copied_slices"] == 3 and "3 of 13 output slices" in printed
    assert figures["engine_s"] > 0 and figures["sitk_linear_s"] > 0 and figures["sitk_bspline_s"] > 0
    assert figures["floor_s"] == pytest.approx(figures["flops_ideal"] / figures["matmul_flops_per_s"])
    assert figures["engine_over_floor"] == pytest.approx(figures["engine_s"] / figures["floor_s"])
    assert figures["flops_processed"] >= figures["flops_ideal"]
    assert figures["host_peak"] >= figures["host_rss_before"]
    assert figures["gpu_peak_allocated"] is None
