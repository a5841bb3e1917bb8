"""The paper's image-quality metrics (Section 4.1, Eq. 10) as pure functions on numpy volumes.

Every metric works on *axial* slices, i.e. the slices across the slice axis (``volume[t]`` when the
slice axis is array axis 0; ``axis`` names another one).

- Intensity range. CT: both volumes clipped to [-1024, 3071] HU, data range 4095 (the paper).
  MR has no absolute scale: the range is [min, 99.9th percentile] of the *reference* (ground
  truth), both volumes are clipped to it and the data range is its width. The same range is used
  for every method compared against one reference, so their scores are comparable.
- PSNR: over the whole volume, 10 log10(range^2 / MSE), MSE over all voxels in float64; equal to
  ``skimage.metrics.peak_signal_noise_ratio`` on the clipped volumes (computed in slabs here so a
  large volume never needs two float64 copies).
- SSIM: mean over axial slices of ``skimage.metrics.structural_similarity`` (default 7x7 uniform
  window) on the clipped float64 slices with the same data range.
- SNLI (Eq. 10): sigma_t = ``skimage.restoration.estimate_sigma`` of axial slice t (the
  Donoho-Johnstone wavelet MAD estimator) for each slice that holds anatomy, then the standard
  deviation of sigma_t over those slices (numpy's default, ddof=0). It is computed on the values
  as they are, in the volume's own units: clipping air at -1024 HU would distort the very noise it
  measures. A CT slice holds anatomy when at least 5% of its voxels are above -924 HU; an MR slice
  when at least 5% are above 10% of the MR range.
- LPIPS: see ``lpips_score``; needs torchvision's ImageNet backbone weights, which are never
  downloaded here: where they are absent ``LpipsUnavailable`` says so, in one line.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import CycleINRError, InputError

CT_WINDOW = (-1024.0, 3071.0)
CT_ANATOMY_HU = -924.0
ANATOMY_FRACTION = 0.05
MR_PERCENTILE = 99.9
MR_ANATOMY_LEVEL = 0.10
MODALITIES = ("ct", "mr")
LPIPS_BACKBONES = ("alex", "vgg", "squeeze")
# torchvision's ImageNet weights each LPIPS backbone is built on (file name as torchvision caches it)
BACKBONE_FILES = {
    "alex": "alexnet-owt-7be5be79.pth",
    "vgg": "vgg16-397923af.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}
_SLAB_VOXELS = 4_000_000


class LpipsUnavailable(CycleINRError):
    """LPIPS cannot be computed here (backbone weights absent); the message says why."""


@dataclass(frozen=True)
class IntensityRange:
    """The clipping window of a comparison; ``data_range`` is its width."""

    low: float
    high: float

    @property
    def data_range(self) -> float:
        return self.high - self.low


def guess_modality(volume: np.ndarray) -> str:
    """CT when the darkest 0.5% of voxels are below -500 (air in HU); MR intensities are >= 0."""
    stride = max(1, int(round((volume.size / 2_000_000) ** (1 / 3))))
    sample = volume[::stride, ::stride, ::stride]
    return "ct" if float(np.percentile(sample, 0.5)) < -500 else "mr"


def check_modality(modality: str) -> str:
    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return modality


def intensity_range(reference: np.ndarray, modality: str = "ct") -> IntensityRange:
    """CT: the paper's fixed window. MR: [min, 99.9th percentile] of the reference."""
    if check_modality(modality) == "ct":
        return IntensityRange(*CT_WINDOW)
    low = float(np.min(reference))
    high = float(np.percentile(reference, MR_PERCENTILE))
    if not high > low:
        raise InputError("the MR reference is constant: no intensity range to compare on")
    return IntensityRange(low, high)


def _check_pair(reference: np.ndarray, test: np.ndarray) -> None:
    if reference.shape != test.shape:
        raise InputError(f"volumes differ in shape: {reference.shape} vs {test.shape}")
    if reference.ndim != 3:
        raise InputError(f"expected 3D volumes, got {reference.ndim}D")


def _clipped(values: np.ndarray, window: IntensityRange) -> np.ndarray:
    return np.clip(values.astype(np.float64), window.low, window.high)


def _axial(volume: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(volume, axis, 0)


def mean_squared_error(reference: np.ndarray, test: np.ndarray, window: IntensityRange) -> float:
    """MSE over all voxels of the clipped volumes, accumulated slab by slab in float64."""
    _check_pair(reference, test)
    plane = int(np.prod(reference.shape[1:]))
    step = max(1, _SLAB_VOXELS // plane)
    total = 0.0
    for start in range(0, reference.shape[0], step):
        diff = _clipped(reference[start:start + step], window) - _clipped(test[start:start + step], window)
        total += float(np.sum(diff * diff))
    return total / reference.size


def psnr(reference: np.ndarray, test: np.ndarray, window: IntensityRange) -> float:
    """Peak signal-to-noise ratio in dB over the whole volume (inf for identical volumes)."""
    mse = mean_squared_error(reference, test, window)
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(window.data_range ** 2 / mse))


def ssim(reference: np.ndarray, test: np.ndarray, window: IntensityRange, axis: int = 0) -> float:
    """Mean structural similarity over axial slices (scikit-image, default 7x7 window)."""
    from skimage.metrics import structural_similarity

    _check_pair(reference, test)
    ref, out = _axial(reference, axis), _axial(test, axis)
    if min(ref.shape[1:]) < 7:
        raise InputError(f"axial slices of {ref.shape[1:]} are smaller than SSIM's 7x7 window")
    scores = [structural_similarity(_clipped(ref[t], window), _clipped(out[t], window),
                                    data_range=window.data_range)
              for t in range(ref.shape[0])]
    return float(np.mean(scores))


def anatomy_slices(volume: np.ndarray, modality: str = "ct", axis: int = 0,
                   window: IntensityRange | None = None) -> np.ndarray:
    """Boolean per axial slice: does it hold anatomy (>= 5% of voxels above the tissue level)?"""
    if check_modality(modality) == "ct":
        level = CT_ANATOMY_HU
    else:
        window = window or intensity_range(volume, "mr")
        level = window.low + MR_ANATOMY_LEVEL * window.data_range
    slices = _axial(volume, axis)
    return np.array([np.mean(slices[t] > level) >= ANATOMY_FRACTION for t in range(slices.shape[0])])


def slice_noise(volume: np.ndarray, axis: int = 0, slices: np.ndarray | None = None) -> np.ndarray:
    """Wavelet MAD noise estimate (Donoho-Johnstone) of each selected axial slice."""
    from skimage.restoration import estimate_sigma

    axial = _axial(volume, axis)
    chosen = range(axial.shape[0]) if slices is None else np.flatnonzero(slices)
    return np.array([estimate_sigma(axial[t].astype(np.float64)) for t in chosen], dtype=np.float64)


def snli(volume: np.ndarray, modality: str = "ct", axis: int = 0,
         window: IntensityRange | None = None) -> float:
    """Slice-wise noise level inconsistency (Eq. 10): std over anatomical slices of sigma_t."""
    mask = anatomy_slices(volume, modality, axis, window)
    if mask.sum() < 2:
        raise InputError(f"SNLI needs at least 2 axial slices with anatomy, found {int(mask.sum())}")
    return float(np.std(slice_noise(volume, axis, mask)))


# LPIPS -----------------------------------------------------------------------------------------

def lpips_weights_folder(folder: str | os.PathLike | None = None) -> Path:
    """Where backbone weights are looked for: the given folder, $CYCLEINR_LPIPS_WEIGHTS, or
    torch's own cache (``$TORCH_HOME/hub/checkpoints``) where torchvision keeps what it downloaded."""
    if folder is None:
        folder = os.environ.get("CYCLEINR_LPIPS_WEIGHTS")
    if folder is None:
        import torch
        folder = Path(torch.hub.get_dir()) / "checkpoints"
    return Path(folder)


def _backbone_file(backbone: str, folder: Path) -> Path:
    if backbone not in LPIPS_BACKBONES:
        raise InputError(f"unknown LPIPS backbone {backbone!r}; use one of {', '.join(LPIPS_BACKBONES)}")
    name = BACKBONE_FILES[backbone]
    path = folder / name
    if not path.is_file():
        raise LpipsUnavailable(f"LPIPS ({backbone}) not computed: torchvision's ImageNet weights {name} are "
                               f"not in {folder} and cannot be downloaded here; copy them there or "
                               "point the LPIPS weights option at a folder that holds them")
    return path


def verify_checksum(backbone: str, path: Path) -> None:
    """torchvision names its files with the first hex digits of their SHA-256: check them, so a
    truncated or foreign file is refused rather than scored with."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = path.name.rsplit("-", 1)[-1].split(".")[0]
    if not digest.startswith(expected):
        raise LpipsUnavailable(f"LPIPS ({backbone}) not computed: {path} does not match torchvision's "
                               f"published checksum {expected}")


@lru_cache(maxsize=3)
def _lpips_network(backbone: str, path: str, device: str):
    """The lpips package's network with its backbone loaded from a verified local torchvision file."""
    import lpips
    import torch
    import torchvision

    verify_checksum(backbone, Path(path))
    builders = {"alex": torchvision.models.alexnet, "vgg": torchvision.models.vgg16,
                "squeeze": torchvision.models.squeezenet1_1}
    imagenet = builders[backbone](weights=None)
    imagenet.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # pnet_rand builds the backbone without touching the network; its layers are then filled from
    # the verified file (lpips keeps torchvision's feature indices as module names in each slice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lpips passes torchvision's deprecated `pretrained=False`
        network = lpips.LPIPS(net=backbone, pretrained=True, pnet_rand=True, verbose=False)
    for stage in network.net.children():
        for index, layer in stage.named_children():
            layer.load_state_dict(imagenet.features[int(index)].state_dict())
    return network.eval().to(device)


def lpips_score(reference: np.ndarray, test: np.ndarray, window: IntensityRange, backbone: str = "alex",
                axis: int = 0, weights_folder: str | os.PathLike | None = None,
                device: str = "cpu", batch: int = 8) -> float:
    """Mean LPIPS over axial slices: clipped to the window, scaled to [-1, 1], grey -> 3 channels.

    Raises ``LpipsUnavailable`` (one line) when the backbone's ImageNet weights are not cached.
    """
    import torch

    _check_pair(reference, test)
    path = _backbone_file(backbone, lpips_weights_folder(weights_folder))
    network = _lpips_network(backbone, str(path), str(device))
    ref, out = _axial(reference, axis), _axial(test, axis)

    def as_input(slices: np.ndarray) -> torch.Tensor:
        scaled = 2.0 * (_clipped(slices, window) - window.low) / window.data_range - 1.0
        return torch.from_numpy(scaled.astype(np.float32))[:, None].expand(-1, 3, -1, -1).to(device)

    scores = []
    with torch.no_grad():
        for start in range(0, ref.shape[0], batch):
            distance = network(as_input(ref[start:start + batch]), as_input(out[start:start + batch]))
            scores.append(distance.reshape(-1).cpu().numpy())
    return float(np.concatenate(scores).mean())
