"""Test setup: the engine package from this checkout, real data locations, small torch threads."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE_DIR = REPO / "CycleINRSR"
if str(ENGINE_DIR) not in sys.path:
    sys.path.insert(0, str(ENGINE_DIR))

TEST_DATA = REPO / "Testing" / "Data"
SAMPLE_CT = ENGINE_DIR / "cycleinr" / "sample" / "tcga_thca_ct_chest_crop.nii.gz"
HEAD_CT = TEST_DATA / "invesalius_head_ct_crop.nii.gz"
OBLIQUE_MR = TEST_DATA / "fnndsc_t1_mr_oblique_crop.nii.gz"
SHARED_DATA = Path(os.environ.get("CYCLEINR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The larger real volumes beside the repo; tests that need them skip where they are absent."""
    if not (SHARED_DATA / "invesalius_cranium_ct0051_1p5mm.nii.gz").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set CYCLEINR_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def _few_threads():
    import torch
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture(scope="session")
def tiny_model():
    """An UNTRAINED tiny network with fixed seed: for geometry/plumbing tests, never for quality."""
    import torch
    from cycleinr import LoadedModel, ModelInfo, build_model, preset

    torch.manual_seed(0)
    network = build_model(preset("tiny")).eval()
    return LoadedModel(network, ModelInfo(config=network.config, name="tiny-untrained-test"), None)


@pytest.fixture
def one_thread():
    """Training tests run with one torch thread: steady timings on a shared 2-core machine."""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
