"""Measurement operators ``A`` of linear inverse problems, with Gaussian measurement noise.

``y = A(x) + sigma_y * w``, ``w ~ N(0, I)``, on the [-1, 1] data scale (sigma_y = 0.05: docs/methods/dsg.md#D14).

Operators with per-sample parameters (inpainting masks) hold one row per sample of the whole run;
``A(x, rows)`` selects the rows of the current batch (``rows`` = positions in the run, as given by
:attr:`onmanifold.sampler.StepState.rows`). Every operator is linear and differentiable.

* :class:`Inpainting` — ``A(x) = m * x`` (the kept pixels; ``m`` is 1 where observed), with
  :func:`box_masks` (a square hole at a random position) and :func:`random_masks` (a fraction
  ``p ~ U[p_lo, p_hi]`` of pixels removed, shared across channels).
* :class:`Downsample` — super-resolution: ``A(x) = avgpool_f(x)`` (an exact linear stand-in for the
  paper's bicubic anti-aliased downsampling, documented deviation).
* :class:`GaussianBlur` — ``A(x) = k * x`` with a normalised Gaussian kernel, reflect padding.

Randomness: masks and measurement noise of sample ``i`` come from
:func:`onmanifold.random.generator_for` ``(seed, i, "measurement-mask")`` / ``"measurement-noise"``,
independent of the sampler's streams and of the number of samples.

Devices: an operator follows its input: its masks and kernel move to ``x``'s device the first time it is
applied there (one transfer, :func:`onmanifold.device.buffer_on`); the measurement noise is drawn on the CPU
generators and moved to the measurement's device, so ``y`` is the same on every device.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import buffer_on
from .random import generator_for

__all__ = ["Operator", "Inpainting", "Downsample", "GaussianBlur", "box_masks", "random_masks", "make_measurements"]


class Operator(nn.Module):
    """Base class: ``forward(x, rows=None) -> A(x)``."""

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def box_masks(n: int, image_shape: tuple[int, int, int], box: int, margin: int = 0, seed: int = 0) -> torch.Tensor:
    """``(n, 1, H, W)`` float masks, 0 inside one ``box x box`` hole per sample at a random position
    at least ``margin`` pixels from the border (digits: 4x4, no margin; shapes: 16x16, 2 px)."""
    _, H, W = image_shape
    if box < 1 or box + 2 * margin > min(H, W):
        raise ValueError(f"box: expected 1 <= box <= min(H, W) - 2 * margin = {min(H, W) - 2 * margin}, got {box}")
    m = torch.ones(n, 1, H, W)
    for i in range(n):
        g = generator_for(seed, i, "measurement-mask")
        y0 = int(torch.randint(margin, H - margin - box + 1, (1,), generator=g))
        x0 = int(torch.randint(margin, W - margin - box + 1, (1,), generator=g))
        m[i, :, y0 : y0 + box, x0 : x0 + box] = 0
    return m


def random_masks(n: int, image_shape: tuple[int, int, int], p_range: tuple[float, float] = (0.3, 0.7), seed: int = 0) -> torch.Tensor:
    """``(n, 1, H, W)`` masks removing a fraction ``p ~ U[p_lo, p_hi]`` of the pixels of each sample (DPS configs)."""
    lo, hi = p_range
    if not (0 <= lo <= hi < 1):
        raise ValueError(f"p_range: expected 0 <= low <= high < 1, got {p_range}")
    _, H, W = image_shape
    m = torch.ones(n, 1, H, W)
    for i in range(n):
        g = generator_for(seed, i, "measurement-mask")
        p = lo + (hi - lo) * float(torch.rand(1, generator=g))
        drop = torch.rand(H * W, generator=g).argsort()[: int(round(p * H * W))]
        m[i, 0].view(-1)[drop] = 0
    return m


class Inpainting(Operator):
    """``A(x) = m * x`` with per-sample masks ``m`` ``(N, 1, H, W)`` (1 = observed)."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        if masks.dim() != 4 or masks.shape[1] != 1:
            raise ValueError(f"masks: expected shape (N, 1, H, W), got {tuple(masks.shape)}")
        if ((masks != 0) & (masks != 1)).any():
            raise ValueError("masks: expected values in {0, 1}")
        kept = masks.flatten(1).sum(1)
        if (kept == 0).any():
            raise ValueError(f"masks: samples {torch.nonzero(kept == 0).flatten().tolist()[:5]} observe no pixel (empty measurement)")
        self.register_buffer("masks", masks.float())

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        masks = buffer_on(self, "masks", x.device)
        m = masks if rows is None else masks[rows]
        if m.shape[0] != x.shape[0] or m.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"x: expected {m.shape[0]} images of size {tuple(m.shape[-2:])}, got {tuple(x.shape)}")
        return m * x


class Downsample(Operator):
    """Super-resolution by ``factor``-fold average pooling (digits x2: 8 -> 4; shapes x4: 32 -> 8)."""

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 2:
            raise ValueError(f"factor: expected an integer >= 2, got {factor}")
        self.factor = int(factor)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"x: image size {tuple(x.shape[-2:])} is not divisible by factor {self.factor}")
        return F.avg_pool2d(x, self.factor)


class GaussianBlur(Operator):
    """Blur with a normalised ``size x size`` Gaussian kernel of std ``sigma`` pixels, reflect padding.

    Project choices (docs/methods/dsg.md#D14): digits sigma 0.8 px, 5x5; shapes sigma 1.5 px, 9x9.
    """

    def __init__(self, sigma: float, size: int) -> None:
        super().__init__()
        if sigma <= 0 or size < 3 or size % 2 == 0:
            raise ValueError(f"sigma, size: expected sigma > 0 and an odd size >= 3, got {sigma}, {size}")
        r = torch.arange(size, dtype=torch.float64) - size // 2
        k1 = torch.exp(-(r**2) / (2 * sigma**2))
        k = torch.outer(k1, k1)
        self.register_buffer("kernel", (k / k.sum()).float()[None, None])
        self.sigma, self.size = float(sigma), int(size)

    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        C = x.shape[1]
        p = self.size // 2
        if min(x.shape[-2:]) <= p:
            raise ValueError(f"x: image size {tuple(x.shape[-2:])} too small for a {self.size}x{self.size} kernel")
        xp = F.pad(x, (p, p, p, p), mode="reflect")
        return F.conv2d(xp, buffer_on(self, "kernel", x.device).to(x.dtype).expand(C, 1, -1, -1), groups=C)


def make_measurements(operator: Operator, x: torch.Tensor, sigma_y: float, seed: int = 0) -> torch.Tensor:
    """``y = A(x) + sigma_y * w`` for a whole run, generated once per (seed, sample) and shared by every method."""
    if not math.isfinite(sigma_y) or sigma_y < 0:
        raise ValueError(f"sigma_y: expected a finite value >= 0, got {sigma_y}")
    if not torch.isfinite(x).all():
        raise ValueError("x: contains NaN or Inf")
    with torch.no_grad():
        clean = operator(x, torch.arange(x.shape[0], device=x.device))
    noise = torch.stack([torch.randn(clean.shape[1:], generator=generator_for(seed, i, "measurement-noise")) for i in range(x.shape[0])])
    return clean + sigma_y * noise.to(clean.device)
