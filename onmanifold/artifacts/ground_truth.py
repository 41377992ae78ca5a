"""Ground-truth artifact masks on the ``shapes`` test bed (the project's reference for scoring ASCED's detector).

Every 32x32 sample is fitted to its nearest valid shape (:func:`onmanifold.data.shapes.fit_shapes`,
exhaustive least squares over type, size, centre and grey level). The ground-truth artifact mask is

    G = open_{w x w}( |x - fit(x)| > threshold )          (morphological opening by a w x w square)

and a sample *has a ground-truth artifact* iff ``G`` has at least ``min_pixels`` pixels.

Project definition (docs/methods/asced.md#D16), defaults ``threshold = 0.5`` (a quarter of the [-1, 1] range), ``w = 2``,
``min_pixels = 4`` (one full 2x2 block). Why: the bundled shapes UNet's DDIM samples carry a noisy
background (mean -0.94, std 0.095 instead of exactly -1) and their shape edges sit up to a pixel away
from the template's anti-aliased edge; the raw test ``deviation > 0.3`` flags ~95 % of samples
because of these 1-pixel streaks and isolated noisy pixels. ``0.5`` is above 5 background standard
deviations, and the 2x2 opening keeps only deviations at least two pixels wide in both directions:
missing or extra chunks, a second shape, wrong-size or distorted shapes (a square two pixels wider
than any valid size), which is what an artifact on this manifold looks like. Real shapes (their fit
is exact) are never flagged: 0 of 1000 at every threshold tried (0.3 .. 1.0).
"""

from __future__ import annotations

import torch

from .image_ops import open_mask  # the opening of G; re-exported here

__all__ = ["gt_artifact_mask", "deviation_artifact_mask", "open_mask", "GT_THRESHOLD", "GT_BLOCK", "GT_MIN_PIXELS"]

GT_THRESHOLD = 0.5
GT_BLOCK = 2
GT_MIN_PIXELS = 4


def gt_artifact_mask(x: torch.Tensor, threshold: float = GT_THRESHOLD, block: int = GT_BLOCK,
                     min_pixels: int = GT_MIN_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G (n, 32, 32) bool, has_artifact (n,) bool)`` for shapes samples ``x`` ``(n, 1, 32, 32)`` (module docstring)."""
    from ..data.shapes import fit_shapes

    _check_mask_options(block, min_pixels)
    fit = fit_shapes(x, threshold=threshold, min_pixels=1)
    return deviation_artifact_mask(fit.deviation[:, 0], threshold, block, min_pixels)


def deviation_artifact_mask(deviation: torch.Tensor, threshold: float = GT_THRESHOLD, block: int = GT_BLOCK,
                            min_pixels: int = GT_MIN_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G (n, H, W) bool, has_artifact (n,) bool)`` from the deviation ``|x - fit(x)|`` ``(n, H, W)`` of any exact fit.

    ``G = open_{block x block}(deviation > threshold)``, kept only where it has at least ``min_pixels``
    pixels (module docstring). Shared by every bed with an exact fit (shapes; mosaic,
    :func:`onmanifold.data.mosaic.fit_mosaic`).
    """
    _check_mask_options(block, min_pixels)
    if threshold <= 0:
        raise ValueError(f"threshold: expected > 0, got {threshold}")
    if deviation.dim() != 3:
        raise ValueError(f"deviation: expected shape (n, H, W), got {tuple(deviation.shape)}")
    g = open_mask(deviation > threshold, block)
    has = g.flatten(1).sum(1) >= min_pixels
    return g & has[:, None, None], has


def _check_mask_options(block: int, min_pixels: int) -> None:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block: expected an integer >= 1, got {block!r}")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise ValueError(f"min_pixels: expected an integer >= 1, got {min_pixels!r}")
