"""The metrics pinned against scikit-image and direct computations, on real CT and MR crops."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import HEAD_CT, OBLIQUE_MR, SAMPLE_CT
from cycleinr import metrics
from cycleinr.baselines import interpolate
from cycleinr.errors import InputError

CT = metrics.IntensityRange(-1024.0, 3071.0)


def _array(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def head_pair():
    """Real head CT slices 0..2k and their trilinear reconstruction from every 2nd slice."""
    thin = _array(HEAD_CT)
    truth = thin[: (thin.shape[0] - 1) // 2 * 2 + 1]
    result = interpolate(thin[::2], (3.0, 0.957, 0.957), scale=2, method="linear")
    assert result.shape == truth.shape
    return truth, result


def test_psnr_equals_scikit_image(head_pair, monkeypatch):
    from skimage.metrics import peak_signal_noise_ratio

    truth, result = head_pair
    monkeypatch.setattr(metrics, "_SLAB_VOXELS", 96 * 96 * 5)  # several slabs
    expected = peak_signal_noise_ratio(np.clip(truth.astype(float), -1024, 3071),
                                       np.clip(result.astype(float), -1024, 3071), data_range=4095)
    assert metrics.psnr(truth, result, CT) == pytest.approx(expected, abs=1e-9)
    assert 30 < expected < 60


def test_psnr_clips_to_the_ct_window():
    from skimage.metrics import peak_signal_noise_ratio

    truth = _array(SAMPLE_CT)[:6].astype(np.float64)
    brighter = truth * 4.0 + 40  # real anatomy pushed partly past 3071 and below -1024
    assert brighter.max() > 3071 and brighter.min() < -1024
    expected = peak_signal_noise_ratio(np.clip(truth, -1024, 3071), np.clip(brighter, -1024, 3071),
                                       data_range=4095)
    assert metrics.psnr(truth, brighter, CT) == pytest.approx(expected, abs=1e-9)
    assert metrics.psnr(truth, truth, CT) == float("inf")


def test_ssim_is_the_mean_of_scikit_image_over_axial_slices(head_pair):
    from skimage.metrics import structural_similarity

    truth, result = head_pair
    clip = lambda v: np.clip(v.astype(np.float64), -1024, 3071)  # noqa: E731
    expected = np.mean([structural_similarity(clip(truth[t]), clip(result[t]), data_range=4095)
                        for t in range(truth.shape[0])])
    assert metrics.ssim(truth, result, CT) == pytest.approx(expected, rel=1e-12)
    # another slice axis: axial slices are then the ones across that axis
    moved = np.moveaxis(truth, 0, 2), np.moveaxis(result, 0, 2)
    assert metrics.ssim(*moved, CT, axis=2) == pytest.approx(expected, rel=1e-12)


def _direct_snli(volume, level=-924.0):
    """Eq. 10 written out with PyWavelets: Donoho-Johnstone MAD of the finest diagonal db2 band."""
    import pywt

    sigmas = []
    for axial in volume.astype(np.float64):
        if np.count_nonzero(axial > level) < 0.05 * axial.size:
            continue
        detail = pywt.dwtn(axial, "db2")["dd"]
        detail = detail[detail != 0]
        sigmas.append(np.median(np.abs(detail)) / 0.6744897501960817)
    return float(np.std(sigmas))


def test_snli_equals_a_direct_computation(head_pair):
    truth, result = head_pair
    for volume in (truth, result):
        assert metrics.snli(volume, "ct") == pytest.approx(_direct_snli(volume), rel=1e-9)


def test_snli_skips_slices_without_anatomy():
    volume = _array(SAMPLE_CT)[:8]
    air = np.full((3,) + volume.shape[1:], -1024, dtype=volume.dtype)
    padded = np.concatenate([air, volume, air])
    mask = metrics.anatomy_slices(padded, "ct")
    assert mask.tolist() == [False] * 3 + [True] * 8 + [False] * 3
    assert metrics.snli(padded, "ct") == pytest.approx(metrics.snli(volume, "ct"), rel=1e-12)
    with pytest.raises(InputError, match="at least 2 axial slices"):
        metrics.snli(air, "ct")


def test_mr_range_and_modality_guess():
    mr = _array(OBLIQUE_MR)
    window = metrics.intensity_range(mr, "mr")
    assert window.low == mr.min() and window.high == pytest.approx(np.percentile(mr, 99.9))
    assert metrics.guess_modality(mr) == "mr"
    assert metrics.guess_modality(_array(HEAD_CT)) == "ct"
    assert metrics.guess_modality(_array(SAMPLE_CT)) == "ct"
    assert metrics.intensity_range(mr, "ct") == CT
    assert metrics.snli(mr, "mr", window=window) > 0
    with pytest.raises(InputError, match="modality"):
        metrics.intensity_range(mr, "pet")


def test_lpips_says_plainly_when_weights_are_absent(head_pair, tmp_path):
    truth, result = head_pair
    with pytest.raises(metrics.LpipsUnavailable, match=r"LPIPS \(alex\) not computed: .*alexnet-owt"):
        metrics.lpips_score(truth, result, CT, "alex", weights_folder=tmp_path)
    from cycleinr.evaluate import score

    scores = score(truth, result, "ct", lpips=["vgg"], lpips_weights=tmp_path)
    assert scores["lpips_vgg"] is None
    assert "vgg16-397923af.pth" in scores["notes"]["lpips_vgg"]
    assert scores["psnr"] > 30


def test_lpips_refuses_a_file_that_is_not_torchvision_s(head_pair, tmp_path):
    truth, result = head_pair
    (tmp_path / metrics.BACKBONE_FILES["squeeze"]).write_bytes(b"not the ImageNet weights")
    with pytest.raises(metrics.LpipsUnavailable, match="checksum"):
        metrics.lpips_score(truth[:2], result[:2], CT, "squeeze", weights_folder=tmp_path)


def test_lpips_backbone_is_filled_from_the_file(tmp_path, monkeypatch):
    """Loader plumbing only: a seeded, untrained squeezenet file ends up in lpips' backbone."""
    import torch
    import torchvision

    torch.manual_seed(0)
    untrained = torchvision.models.squeezenet1_1(weights=None)
    path = tmp_path / metrics.BACKBONE_FILES["squeeze"]
    torch.save(untrained.state_dict(), path)
    monkeypatch.setattr(metrics, "verify_checksum", lambda backbone, path: None)
    network = metrics._lpips_network.__wrapped__("squeeze", str(path), "cpu")
    loaded = dict(network.net.slice1.named_children())["0"]
    assert torch.equal(loaded.weight, untrained.features[0].weight)


def test_lpips_known_values_where_weights_are_cached():
    folder = metrics.lpips_weights_folder()
    if not (folder / metrics.BACKBONE_FILES["alex"]).is_file():
        pytest.skip(f"LPIPS alex backbone weights are not cached in {folder} (cannot be downloaded here)")
    import lpips
    import torch

    truth = _array(HEAD_CT)[10:14]
    noisy = truth + np.random.default_rng(0).normal(0, 30, truth.shape)
    assert metrics.lpips_score(truth, truth, CT, "alex") == pytest.approx(0.0, abs=1e-6)
    torch.hub.set_dir(str(folder.parent))
    reference = lpips.LPIPS(net="alex", verbose=False)
    scaled = lambda v: torch.from_numpy(  # noqa: E731
        (2 * (np.clip(v, -1024, 3071) + 1024) / 4095 - 1).astype(np.float32))[:, None].repeat(1, 3, 1, 1)
    expected = float(reference(scaled(truth), scaled(noisy)).mean())
    assert metrics.lpips_score(truth, noisy, CT, "alex") == pytest.approx(expected, rel=1e-5)
