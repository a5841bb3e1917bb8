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


# --- the Slicer layer: Slicer's own MRML (slicer-core) + the Qt-only stand-in -----------------
STANDIN = REPO / "Testing" / "slicer_standin"


@pytest.fixture(scope="session")
def slicer_app():
    """``slicer`` as the application sets it up: slicer-core's scene, logics and util.py, with
    slicer.app and the Qt-only classes from Testing/slicer_standin (see slicerapp/__init__.py)."""
    for path in (str(STANDIN), str(ENGINE_DIR), str(REPO / "CycleINRTraining")):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from slicer import vtkMRMLScene  # noqa: F401
    except ImportError:
        pytest.fail("Slicer's MRML is missing: install the test extra (pip install -e '.[test]' brings slicer-core)")
    import slicerapp
    slicer = slicerapp.start()
    assert slicer.vtkMRMLScene.__module__.startswith("slicer_core."), "MRML must come from slicer-core"
    return slicer


@pytest.fixture(scope="session")
def thick_head_file(tmp_path_factory):
    """A thick version of the real head CT crop on disk: every 3rd slice, small in-plane."""
    import SimpleITK as sitk
    image = sitk.ReadImage(str(HEAD_CT))[:48, :40, ::3]
    path = tmp_path_factory.mktemp("input") / "head_thick.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_file(tiny_model, tmp_path_factory):
    from cycleinr import save_model
    return str(save_model(tmp_path_factory.mktemp("model") / "tiny_untrained.safetensors",
                          tiny_model.network, tiny_model.info))


@pytest.fixture
def mrml(slicer_app, monkeypatch):
    """The application's scene, closed (File > Close scene) before each test."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker processes share the cores with everyone
    slicer_app.mrmlScene.Clear(False)
    return slicer_app
