"""CIE Lab colour space in torch, ab quantisation into bins, and class-rebalancing weights.

Used by the colorization pretext tasks (Zhang et al. 2016, "Colorful Image Colorization"; Zhang et al. 2017,
"Split-Brain Autoencoders"). Conversions follow the sRGB (D65) definitions: L in [0, 100], a and b roughly in
[-110, 110]. All functions take batches ``(B, 3, H, W)`` and compute in float32 whatever the input dtype (the
cube roots and powers lose too much in bf16).
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import nn

_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_WHITE = (0.950456, 1.0, 1.088754)  # D65 reference white in XYZ
_EPS = (6 / 29) ** 3
_KAPPA = 3 * (6 / 29) ** 2

L_SCALE = 50.0  # network inputs: L / 50 - 1 and ab / 110, both about [-1, 1]
AB_SCALE = 110.0


def _matrix(rows, device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32, device=device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] ``(B, 3, H, W)`` → Lab ``(B, 3, H, W)`` (L in [0, 100])."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"rgb_to_lab expects (B, 3, H, W), got {tuple(rgb.shape)}")
    with torch.autocast(rgb.device.type, enabled=False):  # einsum would run in bf16 under autocast
        return _rgb_to_lab(rgb.float().clamp(0, 1))


def _rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055).clamp_min(1e-12) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,bjhw->bihw", _matrix(_RGB_TO_XYZ, x.device), lin)
    xyz = xyz / _matrix(_WHITE, x.device).view(1, 3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(1e-12) ** (1 / 3), xyz / _KAPPA + 4 / 29)
    fx, fy, fz = f.unbind(1)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`; ``clamp`` clips out-of-gamut colours to [0, 1]."""
    if lab.ndim != 4 or lab.shape[1] != 3:
        raise ValueError(f"lab_to_rgb expects (B, 3, H, W), got {tuple(lab.shape)}")
    with torch.autocast(lab.device.type, enabled=False):
        return _lab_to_rgb(lab.float(), clamp)


def _lab_to_rgb(lab: torch.Tensor, clamp: bool) -> torch.Tensor:
    L, a, b = lab.unbind(1)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f ** 3, _KAPPA * (f - 4 / 29))
    xyz = xyz * _matrix(_WHITE, lab.device).view(1, 3, 1, 1)
    inv = torch.linalg.inv(_matrix(_RGB_TO_XYZ, lab.device).double()).float()
    lin = torch.einsum("ij,bjhw->bihw", inv, xyz)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0, 1) if clamp else rgb


class NormalizedRGBToLab(nn.Module):
    """Views normalised with the dataset's mean/std → Lab scaled for a network: ``L/50 - 1`` and ``ab/110``.

    ``channels`` "L" returns (B, 1, H, W), "ab" (B, 2, H, W), "Lab" (B, 3, H, W). The statistics are non-persistent
    buffers set by the method's ``make_views`` (identity until then, i.e. views already in [0, 1]).
    """
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, channels: str = "Lab") -> None:
        super().__init__()
        if channels not in ("L", "ab", "Lab"):
            raise ValueError(f"channels must be 'L', 'ab' or 'Lab', got '{channels}'")
        self.channels = channels
        self.register_buffer("mean", torch.zeros(3), persistent=False)
        self.register_buffer("std", torch.ones(3), persistent=False)

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"Lab input needs RGB statistics, got mean {list(mean)} and std {list(std)}")
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def lab(self, x: torch.Tensor) -> torch.Tensor:
        """Unscaled Lab (L in [0, 100]) of normalised views ``x`` (B, 3, H, W)."""
        rgb = x.float() * self.std.view(1, 3, 1, 1) + self.mean.view(1, 3, 1, 1)
        return rgb_to_lab(rgb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale_lab(self.lab(x), self.channels)


def scale_lab(lab: torch.Tensor, channels: str = "Lab") -> torch.Tensor:
    """Lab → network scale (``L/50 - 1``, ``ab/110``), keeping the channels named by ``channels``."""
    L = lab[:, :1] / L_SCALE - 1
    ab = lab[:, 1:] / AB_SCALE
    return {"L": L, "ab": ab, "Lab": torch.cat([L, ab], dim=1)}[channels]


# ------------------------------------------------------------------------------------------- ab quantisation
@functools.lru_cache(maxsize=8)
def _gamut_bins(grid: float, samples: int) -> tuple[tuple[float, float], ...]:
    steps = torch.linspace(0, 1, samples)
    rgb = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij")).reshape(1, 3, -1, 1)
    ab = rgb_to_lab(rgb)[0, 1:, :, 0].T  # (N, 2)
    cells = torch.unique(torch.floor(ab / grid), dim=0)
    return tuple((float(a), float(b)) for a, b in (cells + 0.5) * grid)


def ab_bin_centers(grid: float = 10.0, samples: int = 48) -> torch.Tensor:
    """Centres ``(Q, 2)`` of the ab grid cells (side ``grid``) that sRGB colours reach (Zhang et al.'s Q = 313
    for grid 10 comes from the same rule on ImageNet). Found by converting a ``samples``³ grid of sRGB colours."""
    if grid <= 0:
        raise ValueError(f"ab grid must be > 0, got {grid}")
    return torch.tensor(_gamut_bins(float(grid), samples), dtype=torch.float32)


def encode_ab(ab: torch.Tensor, centers: torch.Tensor, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """Soft-encode ab values ``(N, 2)`` on the bins ``(Q, 2)``: Gaussian weights (``sigma``) on the ``k`` nearest
    bins, summing to 1 (Zhang et al. 2016, Sec. 2.1). ``k = 1`` is the hard (one-hot) encoding. Returns (N, Q)."""
    d2 = torch.cdist(ab.float(), centers.to(ab.device)).pow(2)
    k = min(k, centers.shape[0])
    dk, idx = d2.topk(k, dim=1, largest=False)
    w = torch.softmax(-dk / (2 * sigma ** 2), dim=1)
    return torch.zeros_like(d2).scatter_(1, idx, w)


def quantize_ab(ab: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Index ``(N,)`` of the nearest bin for each ab value ``(N, 2)``."""
    return torch.cdist(ab.float(), centers.to(ab.device)).argmin(dim=1)


def rebalancing_weights(prior: torch.Tensor, centers: torch.Tensor, lam: float = 0.5,
                        sigma: float = 5.0) -> torch.Tensor:
    """Class-rebalancing weights ``(Q,)`` (Zhang et al. 2016, Eq. 3-4).

    ``prior`` (Q,) is the empirical bin distribution; it is smoothed with a Gaussian of width ``sigma`` in ab
    space, mixed with the uniform distribution (``lam``), inverted, and normalised so that its expectation under
    the smoothed prior is 1: ``w ∝ ((1-λ) p̃ + λ/Q)^-1``, ``Σ_q p̃_q w_q = 1``.
    """
    if not 0 <= lam <= 1:
        raise ValueError(f"rebalancing lambda must be in [0, 1], got {lam}")
    with torch.autocast(prior.device.type, enabled=False):
        return _rebalancing_weights(prior.float(), centers.float(), lam, sigma)


def _rebalancing_weights(prior: torch.Tensor, centers: torch.Tensor, lam: float, sigma: float) -> torch.Tensor:
    p = prior / prior.sum().clamp_min(1e-12)
    if sigma > 0:
        d2 = torch.cdist(centers, centers).pow(2).to(p.device)
        kernel = torch.exp(-d2 / (2 * sigma ** 2))
        p = kernel @ p
        p = p / p.sum().clamp_min(1e-12)
    q = p.numel()
    w = 1.0 / ((1 - lam) * p + lam / q)
    return w / (p * w).sum()


def l_bin_centers(bins: int = 50) -> torch.Tensor:
    """Centres ``(bins,)`` of ``bins`` equal bins over L ∈ [0, 100] (Split-Brain's ab → L classification)."""
    if bins < 2:
        raise ValueError(f"L bins must be >= 2, got {bins}")
    width = 100.0 / bins
    return torch.arange(bins, dtype=torch.float32) * width + width / 2


def quantize_l(L: torch.Tensor, bins: int = 50) -> torch.Tensor:
    """Bin index (same shape, int64) of L values in [0, 100]."""
    return (L / (100.0 / bins)).floor().long().clamp_(0, bins - 1)


__all__ = ["rgb_to_lab", "lab_to_rgb", "NormalizedRGBToLab", "scale_lab", "ab_bin_centers", "encode_ab",
           "quantize_ab", "rebalancing_weights", "l_bin_centers", "quantize_l", "L_SCALE", "AB_SCALE"]
