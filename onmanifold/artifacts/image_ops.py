"""Image operations of ASCED's detector and ground truth, on batches of single images (pure functions).

Every function works per sample (statistics are never pooled across the batch) and is exact against its
reference: the blur against ``scipy.ndimage.gaussian_filter(mode="reflect", truncate=4)``, the median against
``numpy.median``, the components against ``scipy.ndimage.label``, the dilation against
``scipy.ndimage.binary_dilation`` with a square structuring element (``tests/methods/artifacts/test_image_ops.py``).

Notation: ``D`` is a ``(B, C, H, W)`` change map, masks are ``(B, H, W)`` bool.

Devices: every function returns its result on its input's device. The blur's kernel and reflect indices are
built once per device (float64 from numpy, then copied); the components of :func:`filter_components` are
labelled by scipy on the CPU, one transfer there and back per call (docs/methods/asced.md#D20).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ROBUST_SCALE",
    "gaussian_kernel_1d",
    "reflect_indices",
    "gaussian_blur_reflect",
    "robust_median_mad",
    "robust_threshold",
    "full_blocks",
    "filter_components",
    "dilate_mask",
    "open_mask",
]

ROBUST_SCALE = 1.4826  # 1.4826 * MAD estimates the standard deviation of a Gaussian


def gaussian_kernel_1d(sigma: float) -> torch.Tensor:
    """``phi(x) = exp(-x^2 / (2 sigma^2)) / sum_x phi`` for ``x = -R .. R``, ``R = int(4 sigma + 0.5)`` (float64, scipy's kernel)."""
    if not sigma > 0:
        raise ValueError(f"sigma: expected a positive standard deviation, got {sigma!r}")
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return torch.from_numpy(phi / phi.sum())


def reflect_indices(n: int, radius: int) -> torch.Tensor:
    """Source indices of scipy's 'reflect' padding of a length-``n`` axis by ``radius`` on both sides.

    ``d c b a | a b c d | d c b a``: the edge sample is repeated (torch's ``mode="reflect"`` is scipy's
    'mirror'); the pattern is periodic with period ``2 n``, so any radius works.
    """
    i = np.arange(-radius, n + radius) % (2 * n)
    i = np.where(i >= n, 2 * n - 1 - i, i)
    return torch.from_numpy(i)


@lru_cache(maxsize=64)
def _kernel_on(sigma: float, device: torch.device) -> torch.Tensor:
    return gaussian_kernel_1d(sigma).to(device)


@lru_cache(maxsize=256)
def _reflect_indices_on(n: int, radius: int, device: torch.device) -> torch.Tensor:
    return reflect_indices(n, radius).to(device)


def _blur_axis(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """``y_i = sum_k kernel_k x_{reflect(i + k - R)}`` along ``dim`` (``kernel`` on ``x``'s device)."""
    radius = (kernel.numel() - 1) // 2
    xp = x.index_select(dim, _reflect_indices_on(int(x.shape[dim]), radius, x.device))
    win = xp.unfold(dim, kernel.numel(), 1)  # (..., n, K) along dim
    return (win * kernel.to(x.dtype)).sum(-1)


def gaussian_blur_reflect(d: torch.Tensor, sigma: float, blur_channels: bool = False) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` over H then W (then C if ``blur_channels``), 'reflect' boundary.

    ``D <- phi_sigma *_H phi_sigma *_W D`` with :func:`gaussian_kernel_1d`; equals
    ``scipy.ndimage.gaussian_filter(D_b, (sigma if blur_channels else 0, sigma, sigma), mode="reflect", truncate=4)``
    per sample up to float rounding. ``sigma = 0`` returns the input itself.
    """
    if sigma < 0:
        raise ValueError(f"sigma: expected a standard deviation >= 0, got {sigma!r}")
    if sigma == 0:
        return d
    if d.dim() != 4:
        raise ValueError(f"d: expected a (batch, channels, height, width) tensor, got shape {tuple(d.shape)}")
    k = _kernel_on(float(sigma), d.device)
    out = _blur_axis(_blur_axis(d, k, 2), k, 3)
    if blur_channels:
        out = _blur_axis(out, k, 1)
    return out


def robust_median_mad(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, over all non-batch values: ``med = q_0.5(D)``, ``mad = q_0.5(|D - med|)``, shapes ``(B,)``.

    The interpolating median (``torch.quantile``, numpy's ``median``), not ``torch.median`` (the lower middle value).
    """
    flat = d.flatten(1)
    med = torch.quantile(flat, 0.5, dim=1)
    mad = torch.quantile((flat - med[:, None]).abs(), 0.5, dim=1)
    return med, mad


def robust_threshold(d: torch.Tensor, k: float, a_min: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(thr, med, mad)`` per sample: ``thr = max(med + k * 1.4826 * mad, a_min)``, a robust z-test with a floor."""
    med, mad = robust_median_mad(d)
    thr = (med + k * ROBUST_SCALE * mad).clamp_min(a_min)
    return thr, med, mad


def full_blocks(mask: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, H - w + 1, W - w + 1)`` bool: the top-left pixels of the ``w x w`` windows lying entirely inside ``mask``.

    ``avg_pool2d(mask, w, stride 1) * w^2 > w^2 - 1/2`` (all ``w^2`` pixels set; exact in float64).
    """
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width: expected an integer >= 1, got {width!r}")
    w2 = width * width
    return F.avg_pool2d(mask[:, None].double(), width, stride=1)[:, 0] * w2 > (w2 - 0.5)


def filter_components(union: torch.Tensor, area_min: int, area_max: int, min_width: int = 1) -> torch.Tensor:
    """The union ``M`` of the 4-connected components ``K`` of ``union`` (B, H, W) with

        area_min < |K| < area_max          (strict band)
        K contains a full min_width x min_width block   (min_width = 1: no width test)

    A ``w x w`` window inside ``union`` lies inside one component (a square is 4-connected), so a component
    passes the width test iff the top-left pixel of some full window (:func:`full_blocks`) carries its label.
    The labelling runs on the CPU (scipy): ``union`` is copied there once and ``M`` back to its device.
    """
    from scipy import ndimage

    device = union.device
    u = union.bool().cpu()
    if u.dim() != 3:
        raise ValueError(f"union: expected a (batch, height, width) mask, got shape {tuple(u.shape)}")
    w = int(min_width)
    full = full_blocks(u, w) if w > 1 else None
    out = np.zeros(tuple(u.shape), dtype=bool)
    un = u.numpy()
    for b in range(un.shape[0]):
        if not un[b].any():
            continue
        labels, count = ndimage.label(un[b])  # 4-connectivity (scipy's default structure)
        area = np.bincount(labels.ravel(), minlength=count + 1)
        keep = (area > area_min) & (area < area_max)
        keep[0] = False
        if full is not None:
            fb = full[b].numpy()
            wide = np.zeros(count + 1, dtype=bool)
            wide[np.unique(labels[: fb.shape[0], : fb.shape[1]][fb])] = True
            keep &= wide
        out[b] = keep[labels]
    return torch.from_numpy(out).to(device)


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(B, H, W)`` by a ``(2r+1) x (2r+1)`` box: ``max_pool2d(mask, 2r+1, stride 1, padding r)``.

    ``radius = 0`` returns a copy.
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius: expected an integer >= 0, got {radius!r}")
    if radius == 0:
        return mask.bool().clone()
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def open_mask(mask: torch.Tensor, block: int) -> torch.Tensor:
    """Binary opening of ``(B, H, W)`` by a ``block x block`` square: the union of the full blocks inside ``mask``.

    ``open(m) = dilate_square(erode_square(m))``, computed as the max-pool of :func:`full_blocks` padded by
    ``block - 1``; ``block = 1`` returns a copy.
    """
    if block <= 1:
        return mask.bool().clone()
    full = full_blocks(mask, block).double()[:, None]
    return F.max_pool2d(F.pad(full, (block - 1,) * 4), block, stride=1)[:, 0] > 0
