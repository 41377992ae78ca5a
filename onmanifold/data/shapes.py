"""The ``shapes`` test bed: procedural 32x32 grey images of one filled shape on a black background.

A valid image is ``x = -1 + a * M_{type,size}(. - center)``: background -1, one anti-aliased
shape template ``M`` (values in [0, 1], 4x4 super-sampled) with

* ``type``  in {0: circle, 1: square, 2: triangle},
* ``size``  in {0: small, 1: medium, 2: large} (half-extent 5, 8, 11 px),
* ``center`` integer ``(cy, cx)`` such that the whole shape lies inside the image (1 px margin),
* grey level ``g = a - 1`` uniform in [-0.2, 1.0] (amplitude ``a`` in [0.8, 2.0]).

Because the manifold is known, any 32x32 image can be fitted to its nearest valid shape
(:func:`fit_shapes`): for every template and every valid centre the least-squares amplitude is
closed form, ``a* = <x + 1, M> / <M, M>`` clamped to [0.8, 2.0], so the fit is an exhaustive
search computed with one correlation per template. The per-pixel deviation ``|x - fit|`` above
``threshold`` (default 0.3 on the [-1, 1] scale) is the ground-truth artifact mask (ASCED, Cao et
al. CVPR 2025, needs such masks to score detection).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = [
    "IMAGE_SIZE",
    "TYPE_NAMES",
    "SIZE_NAMES",
    "HALF_EXTENTS",
    "ShapeParams",
    "ShapeFit",
    "render_shapes",
    "sample_shapes",
    "fit_shapes",
    "shape_templates",
]

IMAGE_SIZE = 32
TYPE_NAMES = ("circle", "square", "triangle")
SIZE_NAMES = ("small", "medium", "large")
HALF_EXTENTS = (5, 8, 11)
AMPLITUDE_RANGE = (0.8, 2.0)
_KERNEL = 2 * max(HALF_EXTENTS) + 3  # 25: every template fits, centred
_MARGIN = 1
_SUPERSAMPLE = 4


@dataclass
class ShapeParams:
    """Parameters of a batch of shapes (all ``(n,)`` tensors)."""

    type: torch.Tensor
    size: torch.Tensor
    cy: torch.Tensor
    cx: torch.Tensor
    amplitude: torch.Tensor

    def __len__(self) -> int:
        return int(self.type.numel())


@dataclass
class ShapeFit:
    """Result of :func:`fit_shapes`: nearest valid shape, its image, deviation and mask."""

    params: ShapeParams
    image: torch.Tensor  # (n, 1, 32, 32) nearest valid image
    deviation: torch.Tensor  # (n, 1, 32, 32) |x - image|
    mask: torch.Tensor  # (n, 1, 32, 32) bool, deviation > threshold
    rmse: torch.Tensor  # (n,)
    has_artifact: torch.Tensor  # (n,) bool: at least ``min_pixels`` pixels in the mask


@lru_cache(maxsize=1)
def _templates() -> torch.Tensor:
    """``(3 types * 3 sizes, 1, K, K)`` anti-aliased templates centred in a K x K kernel (float64)."""
    return shape_templates(HALF_EXTENTS, _KERNEL)


def shape_templates(half_extents: tuple[int, ...], kernel: int) -> torch.Tensor:
    """``(3 types * len(half_extents), 1, kernel, kernel)`` anti-aliased templates (float64), type-major.

    Template ``type * len(half_extents) + size`` is the shape of half-extent ``half_extents[size]``
    centred on the middle pixel of an odd ``kernel x kernel`` grid, 4x4 super-sampled (values in [0, 1]).
    Also the object family of the ``mosaic`` bed (:mod:`onmanifold.data.mosaic`).
    """
    if kernel % 2 != 1 or kernel < 2 * max(half_extents) + 3:
        raise ValueError(f"kernel: expected an odd size >= 2 * max(half_extents) + 3, got {kernel}")
    K, s = kernel, _SUPERSAMPLE
    c = (K - 1) / 2
    # sub-pixel sample coordinates relative to the centre pixel
    u = (torch.arange(K * s, dtype=torch.float64) + 0.5) / s - 0.5 - c
    yy, xx = torch.meshgrid(u, u, indexing="ij")
    out = []
    for shape in range(len(TYPE_NAMES)):
        for r in half_extents:
            if shape == 0:
                m = (yy**2 + xx**2) <= (r + 0.5) ** 2
            elif shape == 1:
                h = 0.8 * r + 0.5
                m = (yy.abs() <= h) & (xx.abs() <= h)
            else:  # isosceles triangle, apex up: y in [-r, r], half width grows linearly to r at the base
                top, bottom = -r - 0.5, r + 0.5
                frac = (yy - top) / (bottom - top)
                m = (yy >= top) & (yy <= bottom) & (xx.abs() <= frac * (r + 0.5))
            m = m.double().reshape(K, s, K, s).mean(dim=(1, 3))
            out.append(m)
    return torch.stack(out).unsqueeze(1)


def _valid_centres(size_index: int) -> tuple[int, int]:
    r = HALF_EXTENTS[size_index]
    return r + _MARGIN, IMAGE_SIZE - 1 - r - _MARGIN  # inclusive range for cy and cx


def render_shapes(params: ShapeParams) -> torch.Tensor:
    """Images ``(n, 1, 32, 32)`` in [-1, 1] of the given parameters (float32)."""
    n = len(params)
    T = _templates()
    K, c = _KERNEL, _KERNEL // 2
    canvas = torch.zeros(n, 1, IMAGE_SIZE + 2 * c, IMAGE_SIZE + 2 * c, dtype=torch.float64)
    for i in range(n):
        k = int(params.type[i]) * len(HALF_EXTENTS) + int(params.size[i])
        lo, hi = _valid_centres(int(params.size[i]))
        cy, cx = int(params.cy[i]), int(params.cx[i])
        if not (lo <= cy <= hi and lo <= cx <= hi):
            raise ValueError(f"params: centre ({cy}, {cx}) of sample {i} is outside the valid range [{lo}, {hi}]")
        canvas[i, 0, cy : cy + K, cx : cx + K] = T[k, 0]
    m = canvas[:, :, c : c + IMAGE_SIZE, c : c + IMAGE_SIZE]
    return (-1.0 + params.amplitude.double().reshape(-1, 1, 1, 1) * m).float()


def sample_shapes(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ShapeParams]:
    """``n`` random valid shapes: images ``(n, 1, 32, 32)`` and their parameters."""
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    kind = torch.randint(0, len(TYPE_NAMES), (n,), generator=generator)
    size = torch.randint(0, len(HALF_EXTENTS), (n,), generator=generator)
    u = torch.rand(n, 2, generator=generator)
    lo = torch.tensor([_valid_centres(int(s))[0] for s in size])
    hi = torch.tensor([_valid_centres(int(s))[1] for s in size])
    span = (hi - lo + 1).unsqueeze(1)
    centre = lo.unsqueeze(1) + (u * span).long().clamp(max=span - 1)
    amp = AMPLITUDE_RANGE[0] + (AMPLITUDE_RANGE[1] - AMPLITUDE_RANGE[0]) * torch.rand(n, generator=generator)
    params = ShapeParams(type=kind, size=size, cy=centre[:, 0], cx=centre[:, 1], amplitude=amp)
    return render_shapes(params), params


def fit_shapes(x: torch.Tensor, threshold: float = 0.3, min_pixels: int = 3, batch_size: int = 512) -> ShapeFit:
    """Fit every image of ``x`` ``(n, 1, 32, 32)`` to its nearest valid shape (exhaustive least squares).

    For template ``M`` placed at centre ``c`` the residual with the optimal amplitude is
    ``||x + 1||^2 - 2 a <x + 1, M_c> + a^2 ||M_c||^2`` with ``a = clamp(<x+1, M_c>/||M_c||^2, 0.8, 2.0)``;
    the minimum over (type, size, centre) is the nearest valid shape. ``mask = |x - fit| > threshold``;
    a sample *has an artifact* when its mask has at least ``min_pixels`` pixels.
    """
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"x: expected shape (n, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x: contains NaN or Inf")
    if threshold <= 0:
        raise ValueError(f"threshold: expected > 0, got {threshold}")
    fits = [_fit_batch(x[i : i + batch_size].detach().float()) for i in range(0, x.shape[0], batch_size)]
    params = ShapeParams(*[torch.cat([f[k] for f in fits]) for k in range(5)])
    image = render_shapes(params)
    dev = (x.detach().float() - image).abs()
    mask = dev > threshold
    return ShapeFit(
        params=params,
        image=image,
        deviation=dev,
        mask=mask,
        rmse=dev.pow(2).mean(dim=(1, 2, 3)).sqrt(),
        has_artifact=mask.flatten(1).sum(1) >= min_pixels,
    )


def _fit_batch(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    T = _templates().float()
    c = _KERNEL // 2
    y = x + 1.0
    corr = F.conv2d(y, T, padding=c)  # (n, 9, 32, 32): <x + 1, M placed at (cy, cx)>
    energy = T.flatten(1).pow(2).sum(1).reshape(1, -1, 1, 1)
    a = (corr / energy).clamp(*AMPLITUDE_RANGE)
    resid = -2 * a * corr + a * a * energy  # + ||y||^2, constant per image
    valid = torch.zeros(1, T.shape[0], IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    for k in range(T.shape[0]):
        lo, hi = _valid_centres(k % len(HALF_EXTENTS))
        valid[0, k, lo : hi + 1, lo : hi + 1] = True
    resid = resid.masked_fill(~valid, float("inf"))
    flat = resid.flatten(1).argmin(1)
    k, pos = flat // (IMAGE_SIZE * IMAGE_SIZE), flat % (IMAGE_SIZE * IMAGE_SIZE)
    cy, cx = pos // IMAGE_SIZE, pos % IMAGE_SIZE
    amp = a.flatten(1).gather(1, flat[:, None])[:, 0]
    return k // len(HALF_EXTENTS), k % len(HALF_EXTENTS), cy, cx, amp.float()
