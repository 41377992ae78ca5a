"""The ``mosaic`` test bed: frame-filling procedural 64x64 grey images with an exact nearest-valid fit.

A mosaic is a ``4 x 4`` grid of touching ``16 x 16`` tiles. Tile ``(i, j)`` is one object of the
shapes family on its own linear-gradient background:

    x_tile(r, c) = b0 + b1 * u(c) + b2 * v(r) + a * M_{type,size}(r - cy, c - cx)

with ``u = (c - 7.5) / 7.5`` and ``v = (r - 7.5) / 7.5`` in [-1, 1] across the tile, and

* ``M`` an anti-aliased shape template (:func:`onmanifold.data.shapes.shape_templates`): ``type`` in
  {circle, square, triangle}, ``size`` in {small, medium, large} (half-extent 3, 4, 5 px),
* ``(cy, cx)`` the integer centre inside the tile, the whole shape at least 1 px from the tile border,
* background level ``b0`` with ``|b0|`` uniform in [0.2, 0.5] and a random sign (dark or light
  tiles), slopes ``b1, b2`` uniform in [-0.2, 0.2] (the background stays within ``b0 +- 0.4``),
* object contrast ``a`` with ``|a|`` in [0.8, 1.2]; the sampler points it away from the background
  (``sign(a) = -sign(b0)``) with ``|a| <= 0.6 + |b0|``, so every pixel lies in [-0.9, 0.9].
  The smallest contrast, 0.8, keeps a missing object above the ground truth's 0.5 threshold.

Objects cover 8 - 40 % of each tile and the gradients fill the rest: every pixel is content.

Exact fit (:func:`fit_mosaic`). Tiles are independent, so the nearest valid mosaic is the nearest
valid tile, tile by tile: an exhaustive search over the ``C = 348`` placed templates ``P_k`` (type,
size, centre) with the four amplitudes by least squares. With ``B = [1, u, v]`` (orthogonal on the
tile) and ``Q_k = P_k - proj_B P_k``, the residual of candidate ``k`` at contrast ``a`` is

    R_k(a) = ||x - proj_B x||^2 - 2 a <x, Q_k> + a^2 ||Q_k||^2,

a parabola in ``a`` with minimum at ``a*_k = <x, Q_k> / ||Q_k||^2``; the background ``b`` is free (any
gradient), so the constrained optimum over ``|a|`` in [0.8, 1.2] is the point of that set nearest to
``a*_k`` (exact, not a heuristic), and ``b = LS(x - a P_k on B)``. The minimum over ``k`` is the
nearest valid tile. A real mosaic fits to zero residual (float rounding only). The ground-truth mask
is the deviation ``|x - fit(x)|`` thresholded and opened (:func:`onmanifold.artifacts.ground_truth.deviation_artifact_mask`).
The fit's family is the sampler's family with two relaxations that cannot hide an artifact: any
gradient (the sampler bounds ``b0, b1, b2``) and either contrast sign; ``|a|`` in [0.8, 1.2] is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .shapes import TYPE_NAMES, shape_templates

__all__ = [
    "IMAGE_SIZE",
    "GRID",
    "TILE",
    "MOSAIC_HALF_EXTENTS",
    "CONTRAST_RANGE",
    "MosaicParams",
    "MosaicFit",
    "render_mosaic",
    "sample_mosaic",
    "fit_mosaic",
    "split_tiles",
    "tile_labels",
]

GRID = 4
TILE = 16
IMAGE_SIZE = GRID * TILE  # 64
MOSAIC_HALF_EXTENTS = (3, 4, 5)
CONTRAST_RANGE = (0.8, 1.2)
BACKGROUND_RANGE = (0.2, 0.5)  # |b0|
SLOPE_RANGE = 0.2  # b1, b2 in [-0.2, 0.2]
_MARGIN = 1
_KERNEL = 2 * max(MOSAIC_HALF_EXTENTS) + 3  # 13


@dataclass
class MosaicParams:
    """Parameters of a batch of mosaics: every field is ``(n, GRID, GRID)``, one entry per tile."""

    type: torch.Tensor
    size: torch.Tensor
    cy: torch.Tensor  # centre row inside the tile
    cx: torch.Tensor  # centre column inside the tile
    contrast: torch.Tensor  # a
    background: torch.Tensor  # b0
    slope_x: torch.Tensor  # b1 (per unit of u)
    slope_y: torch.Tensor  # b2 (per unit of v)

    def __len__(self) -> int:
        return int(self.type.shape[0])


@dataclass
class MosaicFit:
    """Result of :func:`fit_mosaic`: nearest valid mosaic, its image and the deviation."""

    params: MosaicParams
    image: torch.Tensor  # (n, 1, 64, 64) nearest valid mosaic
    deviation: torch.Tensor  # (n, 1, 64, 64) |x - image|
    rmse: torch.Tensor  # (n,)


def _centre_range(size_index: int) -> tuple[int, int]:
    r = MOSAIC_HALF_EXTENTS[size_index]
    return r + _MARGIN, TILE - 1 - r - _MARGIN  # inclusive, for cy and cx


@lru_cache(maxsize=1)
def _bank() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every placed template: ``(P (C, TILE*TILE) float64, keys (C, 4) [type, size, cy, cx], index (3, 3, TILE, TILE))``.

    ``index[type, size, cy, cx]`` is the row of ``P`` (or -1 for an invalid centre).
    """
    T = shape_templates(MOSAIC_HALF_EXTENTS, _KERNEL)[:, 0]
    c = _KERNEL // 2
    rows, keys = [], []
    index = torch.full((len(TYPE_NAMES), len(MOSAIC_HALF_EXTENTS), TILE, TILE), -1, dtype=torch.long)
    for kind in range(len(TYPE_NAMES)):
        for size in range(len(MOSAIC_HALF_EXTENTS)):
            lo, hi = _centre_range(size)
            for cy in range(lo, hi + 1):
                for cx in range(lo, hi + 1):
                    canvas = torch.zeros(TILE + 2 * c, TILE + 2 * c, dtype=torch.float64)
                    canvas[cy : cy + _KERNEL, cx : cx + _KERNEL] = T[kind * len(MOSAIC_HALF_EXTENTS) + size]
                    index[kind, size, cy, cx] = len(rows)
                    rows.append(canvas[c : c + TILE, c : c + TILE].reshape(-1))
                    keys.append((kind, size, cy, cx))
    return torch.stack(rows), torch.tensor(keys), index


@lru_cache(maxsize=1)
def _background_basis() -> torch.Tensor:
    """``(3, TILE*TILE)`` float64: the constant, ``u`` (columns) and ``v`` (rows), mutually orthogonal."""
    w = (torch.arange(TILE, dtype=torch.float64) - (TILE - 1) / 2) / ((TILE - 1) / 2)
    v, u = torch.meshgrid(w, w, indexing="ij")
    return torch.stack([torch.ones(TILE, TILE, dtype=torch.float64), u, v]).reshape(3, -1)


def _tiles(x: torch.Tensor) -> torch.Tensor:
    """``(n, 1, 64, 64) -> (n * GRID * GRID, TILE * TILE)``, tiles in row-major order."""
    return split_tiles(x).reshape(x.shape[0] * GRID * GRID, TILE * TILE)


def _untile(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(n, GRID, GRID, TILE, TILE).permute(0, 1, 3, 2, 4).reshape(n, 1, IMAGE_SIZE, IMAGE_SIZE)


def split_tiles(x: torch.Tensor) -> torch.Tensor:
    """The tiles of mosaics: ``(n, C, 64, 64) -> (n * 16, C, 16, 16)``, image-major, tiles in row-major order.

    Rows ``16 i .. 16 i + 15`` are image ``i``'s tiles (what the tile-level evaluation classifier and its
    Fréchet distance see, :class:`onmanifold.nets.networks.TiledFeatures`).
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"x: expected a tensor of shape (n, C, {IMAGE_SIZE}, {IMAGE_SIZE}), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    n, c = x.shape[:2]
    return x.reshape(n, c, GRID, TILE, GRID, TILE).permute(0, 2, 4, 1, 3, 5).reshape(n * GRID * GRID, c, TILE, TILE)


def tile_labels(params: MosaicParams) -> torch.Tensor:
    """``(n * 16, 2)`` long: ``[type, size]`` of every tile, in the order of :func:`split_tiles`."""
    return torch.stack([params.type.reshape(-1), params.size.reshape(-1)], dim=1).long()


def render_mosaic(params: MosaicParams) -> torch.Tensor:
    """Images ``(n, 1, 64, 64)`` (float32) of the given parameters (module docstring's formula, in float64)."""
    P, _, index = _bank()
    B = _background_basis()
    f = lambda v: v.reshape(-1)  # noqa: E731
    k = index[f(params.type).long(), f(params.size).long(), f(params.cy).long(), f(params.cx).long()]
    if (k < 0).any():
        bad = int((k < 0).nonzero()[0, 0])
        raise ValueError(f"params: tile {bad} (row-major over samples and tiles) has a centre outside its valid range")
    coef = torch.stack([f(params.background), f(params.slope_x), f(params.slope_y)], 1).double()
    tiles = coef @ B + f(params.contrast).double()[:, None] * P[k]
    return _untile(tiles, len(params)).float()


def sample_mosaic(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, MosaicParams]:
    """``n`` random valid mosaics: images ``(n, 1, 64, 64)`` in [-1, 1] and their parameters."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    shape = (n, GRID, GRID)
    kind = torch.randint(0, len(TYPE_NAMES), shape, generator=generator)
    size = torch.randint(0, len(MOSAIC_HALF_EXTENTS), shape, generator=generator)
    u = torch.rand(n, GRID, GRID, 2, generator=generator)
    lo = torch.tensor([_centre_range(s)[0] for s in range(len(MOSAIC_HALF_EXTENTS))])[size]
    span = TILE - 2 * lo  # hi - lo + 1
    cy = lo + (u[..., 0] * span).long().clamp(max=span - 1)
    cx = lo + (u[..., 1] * span).long().clamp(max=span - 1)
    lo_b, hi_b = BACKGROUND_RANGE
    b0 = (lo_b + (hi_b - lo_b) * torch.rand(shape, generator=generator)) * torch.where(
        torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0)
    slopes = SLOPE_RANGE * (2 * torch.rand(n, GRID, GRID, 2, generator=generator) - 1)
    lo_a, hi_a = CONTRAST_RANGE
    top = torch.clamp(1 - 2 * SLOPE_RANGE + b0.abs(), max=hi_a)  # room left inside [-1, 1] on the object's side
    mag = lo_a + (top - lo_a) * torch.rand(shape, generator=generator)
    contrast = torch.where(b0 >= 0, -mag, mag)
    params = MosaicParams(kind, size, cy, cx, contrast, b0, slopes[..., 0], slopes[..., 1])
    return render_mosaic(params), params


def fit_mosaic(x: torch.Tensor, batch_tiles: int = 4096) -> MosaicFit:
    """Fit every image of ``x`` ``(n, 1, 64, 64)`` to its nearest valid mosaic (exhaustive, tile by tile).

    See the module docstring for the closed form; the search runs in float64.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"x: expected a tensor of shape (n, 1, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.shape[0] == 0:
        raise ValueError("x: expected at least one image, got 0")
    if not torch.isfinite(x).all():
        raise ValueError("x: contains NaN or Inf")
    if isinstance(batch_tiles, bool) or not isinstance(batch_tiles, int) or batch_tiles < 1:
        raise ValueError(f"batch_tiles: expected a positive integer, got {batch_tiles!r}")
    P, keys, _ = _bank()
    B = _background_basis()
    Bn = B / B.pow(2).sum(1, keepdim=True)  # rows: B_j / ||B_j||^2, so coef = X @ Bn.T
    Q = P - (P @ Bn.T) @ B  # templates with their background component removed
    q2 = Q.pow(2).sum(1)  # ||Q_k||^2
    lo_a, hi_a = CONTRAST_RANGE
    n = x.shape[0]
    X = _tiles(x.detach().double())
    best_k, best_a = [], []
    for s in range(0, X.shape[0], batch_tiles):
        xt = X[s : s + batch_tiles]
        corr = xt @ Q.T  # <x, Q_k>
        a_star = corr / q2
        a = a_star.sign().where(a_star != 0, torch.ones_like(a_star)) * a_star.abs().clamp(lo_a, hi_a)
        resid = -2 * a * corr + a * a * q2  # + ||x - proj_B x||^2, constant per tile
        k = resid.argmin(1)
        best_k.append(k)
        best_a.append(a.gather(1, k[:, None])[:, 0])
    k, a = torch.cat(best_k), torch.cat(best_a)
    coef = (X - a[:, None] * P[k]) @ Bn.T  # background least squares given the object
    g = lambda v: v.reshape(n, GRID, GRID)  # noqa: E731
    kk = keys[k]
    params = MosaicParams(g(kk[:, 0]), g(kk[:, 1]), g(kk[:, 2]), g(kk[:, 3]), g(a.float()), g(coef[:, 0].float()),
                          g(coef[:, 1].float()), g(coef[:, 2].float()))
    image = _untile(coef @ B + a[:, None] * P[k], n)
    dev = (x.detach().double() - image).abs().float()
    return MosaicFit(params=params, image=image.float(), deviation=dev, rmse=dev.pow(2).mean(dim=(1, 2, 3)).sqrt())
