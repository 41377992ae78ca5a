"""The per-step change of ASCED's detector: frames, change maps, the robust threshold test, and normal change.

Steps 1-6 of :mod:`onmanifold.artifacts.detector` are built from these pieces (one home each):

    F_n       = frame_of(x0_hat_n)                                   frame n in grey levels
    D_n       = G_sigma * |F_n - F_{n-1}|          (B, C, H, W)      change_map: steps 1-2
    D_n(i, j) = max_c D_n(c, i, j)                 (B, H, W)         the pixel's change (pixel_change)
    flag      = D_n(i, j) > max(mu + k * 1.4826 * s, a_min)          threshold_test: steps 4-5
    z         = (D_n(i, j) - mu) / (1.4826 * s + 1e-6)               the robust z-map (step 6, AUROC score)

with ``(mu, s)`` the centre and spread the change is compared with: the image's own median and MAD (the paper's
detector, ``normalization="per-image"``, docs/methods/asced.md#R3), or, beyond the paper, the per-pixel median and
MAD of the same step's change over normal trajectories (``"reference"``) or over the batch (``"batch"``),
:func:`normal_change_statistics` (docs/methods/asced.md#V1).
"""

from __future__ import annotations

import math

import torch

from .config import DetectorConfig
from .image_ops import ROBUST_SCALE, gaussian_blur_reflect

__all__ = ["frame_of", "change_map", "pixel_change", "threshold_test", "normal_change_statistics", "MIN_NORMAL_SAMPLES", "Z_EPS"]

Z_EPS = 1e-6  # the z-map's guard against a zero spread (the official code's)
MIN_NORMAL_SAMPLES = 3  # fewest trajectories a median and MAD of normal change are taken over
_QUANTILE_LIMIT = 16_000_000  # torch.quantile refuses longer reductions


def frame_of(x0_hat: torch.Tensor, config: DetectorConfig, eps: torch.Tensor | None = None, abar_t: float | None = None) -> torch.Tensor:
    """Frame ``F_n`` of a step in grey levels (float32): see the module docstring of the detector for the three variants."""
    if config.quantity == "weighted_score":
        if eps is None or abar_t is None:
            raise ValueError("eps, abar_t: quantity='weighted_score' needs the model's eps and abar_t")
        return 127.5 * (-math.sqrt((1.0 - abar_t) / abar_t) * eps.detach().float())
    f = 127.5 * (x0_hat.detach().float() + 1.0)
    if config.quantize:
        f = f.clamp(0.0, 255.0).to(torch.uint8).float()  # uint8 conversion truncates toward zero
    return f


def change_map(f_prev: torch.Tensor, f_cur: torch.Tensor, config: DetectorConfig) -> torch.Tensor:
    """Steps 1-2: ``D = G_sigma * |F_n - F_{n-1}|``, ``(B, C, H, W)`` float64 (blur: docs/methods/asced.md#D4)."""
    d = (f_cur - f_prev).abs().double()
    return gaussian_blur_reflect(d, config.sigma, config.blur_channels)


def pixel_change(d: torch.Tensor) -> torch.Tensor:
    """``D(i, j) = max_c D(c, i, j)``, ``(B, H, W)``: the change a pixel is flagged by (docs/methods/asced.md#D3)."""
    return d.amax(dim=1)


def threshold_test(dmax: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, k: float, a_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-6 on the pixel change ``dmax`` (B, H, W) with a centre and spread broadcastable to it:

        flag = dmax > max(center + k * 1.4826 * scale, a_min)        (strict; a floor of a_min grey levels)
        z    = (dmax - center) / (1.4826 * scale + 1e-6)             float64

    ``(center, scale)`` is ``(med, mad)`` of the image (``(B, 1, 1)``, the paper's test) or of normal change per pixel.
    """
    thr = (center + k * ROBUST_SCALE * scale).clamp_min(a_min)
    flag = dmax > thr
    z = (dmax - center) / (ROBUST_SCALE * scale + Z_EPS)
    return flag, z


def _median(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The interpolating median along ``dim`` (numpy's ``median``; ``torch.quantile``, or a sort when it is too long)."""
    if x.shape[dim] <= _QUANTILE_LIMIT:
        return torch.quantile(x, 0.5, dim=dim)
    s = x.sort(dim=dim).values
    n = x.shape[dim]
    return torch.lerp(s.select(dim, (n - 1) // 2), s.select(dim, n // 2), 0.5)


def normal_change_statistics(changes: torch.Tensor, pool_pixels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, s)`` of the pixel changes ``changes`` (K, H, W) of one step over ``K`` trajectories, each ``(H, W)`` float64:

        mu(i, j) = median_k D^k(i, j),     s(i, j) = median_k |D^k(i, j) - mu(i, j)|       (per pixel)
        mu       = median_{k,i,j} D^k(i, j),  s = median_{k,i,j} |D^k(i, j) - mu|           (pool_pixels=True, broadcast)

    The interpolating median (docs/methods/asced.md#D2). ``K >= 3`` (``ValueError`` naming ``changes`` otherwise): of two
    trajectories the median is their mean and the MAD half their distance, no robust statistic.
    """
    if changes.dim() != 3:
        raise ValueError(f"changes: expected the pixel changes (trajectories, height, width) of one step, got shape {tuple(changes.shape)}")
    count = int(changes.shape[0])
    if count < MIN_NORMAL_SAMPLES:
        raise ValueError(f"changes: the median and MAD of normal change need at least {MIN_NORMAL_SAMPLES} trajectories, got {count}")
    d = changes.double()
    if pool_pixels:
        flat = d.reshape(-1)
        mu = _median(flat, 0)
        s = _median((flat - mu).abs(), 0)
        return mu.expand(changes.shape[1:]).clone(), s.expand(changes.shape[1:]).clone()
    flat = d.reshape(count, -1)
    mu = _median(flat, 0)
    s = _median((flat - mu[None]).abs(), 0)
    return mu.reshape(changes.shape[1:]), s.reshape(changes.shape[1:])
