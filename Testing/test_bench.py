"""cycleinr bench: builds its volume from the real sample, reports every figure, writes JSON.

No timing is asserted (speed is measured by the command, never by tests); only that the figures
exist, are consistent with each other and with the job's size.
"""
import json

import numpy as np
import pytest

from cycleinr import cli
from cycleinr.bench import BenchResult, PeakHostMemory, bench_volume, check_targets, matmul_rate


def test_bench_volume_is_the_real_sample_mirrored_or_cropped():
    grown, spacing = bench_volume((300, 20, 50))
    assert grown.shape == (50, 20, 300)
    assert spacing == pytest.approx((2.5, 0.977, 0.977), abs=1e-3)
    assert grown.std() > 100  # CT intensities, not a constant or noise in [0, 1]
    small, _ = bench_volume((16, 16, 4))
    assert small.shape == (4, 16, 16)


def test_peak_memory_sees_an_allocation_inside_the_block():
    import mmap

    with PeakHostMemory() as memory:
        # fresh pages from the kernel: a malloc'd block may reuse pages an earlier test left resident
        block = mmap.mmap(-1, 64 << 20)
        np.frombuffer(block, dtype=np.uint8)[::4096] = 2  # 64 MiB, touched
        block.close()
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


def test_bench_json_alone_prints_the_figures_for_the_engines_own_model(capsys):
    """`cycleinr bench --json` is how the targets are checked: JSON on stdout, the table on stderr,
    and by default on CPU the model the engine itself would pick there (not an untrained one)."""
    code = cli.main(["bench", "--shape", "24", "20", "6", "--scale", "2.5", "--device", "cpu", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    figures = json.loads(captured.out)
    assert figures["model"] == "cycleinr_ct_cpu" and "UNTRAINED" not in figures["model_note"]
    assert not figures["paper_sized"] and not figures["compiled"]
    assert "engine / floor" in captured.err
    # not the target job (512x512x64 at x5): only the memory target applies, at every size
    assert [target["target"] for target in figures["targets"]] == ["host peak <= input + output + 1.5 GB"]
    memory = figures["targets"][0]
    assert memory["value"] == figures["host_peak"]
    assert memory["limit"] == figures["input_bytes"] + figures["output_bytes"] + 1.5e9
    assert memory["met"] == (memory["value"] <= memory["limit"])
    assert "target host peak" in captured.err


def _result(**changes):
    figures = dict(shape_xyz=(512, 512, 64), output_shape_xyz=(512, 512, 316), scale=5.0, dtype="int16",
                   device="cpu", device_name="test", threads=2, model="m", model_note="", matmul_dtype="float32",
                   matmul_flops_per_s=1e11, engine_s=90.0, sitk_linear_s=1.0, sitk_bspline_s=10.0,
                   flops_ideal=4e12, flops_processed=4e12, flops_split={}, floor_s=40.0, engine_over_floor=2.25,
                   halo_overhead=1.0, tile_core=(64, 64, 64), tile_halo=9, input_bytes=2**25,
                   output_bytes=158 * 2**20, host_rss_before=2**29, host_peak=2**30, host_growth=2**29)
    figures.update(changes)
    return BenchResult(**figures)


def test_targets_follow_the_issue():
    met = {t["target"]: t["met"] for t in check_targets(_result())}
    assert met == {"host peak <= input + output + 1.5 GB": True, "engine / floor <= 3 (CPU)": True,
                   "CPU-sized model done in <= 3 min": True}
    slow = {t["target"]: t["met"] for t in check_targets(_result(engine_s=200.0, engine_over_floor=3.2,
                                                                   host_peak=2 * 2**30))}
    assert not any(slow.values())
    # the paper-sized model on CPU is not held to 3 minutes, only to its floor
    assert "CPU-sized model done in <= 3 min" not in {t["target"] for t in check_targets(_result(paper_sized=True))}
    gpu = {t["target"]: t["met"] for t in check_targets(_result(device="cuda", paper_sized=True, engine_s=1.5,
                                                                  gpu_peak_reserved=9 * 10**9))}
    assert gpu == {"host peak <= input + output + 1.5 GB": True, "paper-sized model <= 2 s (H100)": True,
                   "GPU memory <= 8 GB (H100)": False}
    assert len(check_targets(_result(scale=4.0))) == 1  # other jobs: the memory target only


def test_a_job_too_big_for_memory_is_refused_before_anything_is_built(capsys):
    assert cli.main(["bench", "--shape", "100000", "100000", "1000", "--device", "cpu"]) == 2
    said = capsys.readouterr().err
    assert "needs" in said and "GiB for its input and output alone" in said and "--shape" in said
