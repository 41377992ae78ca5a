"""Saving image grids and 2-D scatter plots (PIL / matplotlib, no torchvision).

Every ``save_*`` function takes a path (written atomically through :mod:`onmanifold.io`) or an open
binary file (e.g. one staged by :class:`onmanifold.io.OutputSet`), and an optional ``caption``, stored in
the PNG and shown by ``onmanifold report`` under the figure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np
import torch

from .io import write_atomic

PathOrFile = Union[str, os.PathLike, BinaryIO]

__all__ = ["to_uint8", "save_grid", "save_scatter", "save_rows", "save_figure", "read_caption"]


def to_uint8(x: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """``(B, C, H, W)`` in ``data_range`` -> ``(B, H, W, C)`` uint8 (clamped, no per-image normalisation)."""
    lo, hi = data_range
    u = ((x.detach().float().clamp(lo, hi) - lo) / (hi - lo) * 255).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).cpu().numpy()


def _png_info(caption: str | None):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if caption:
        info.add_text("Description", caption)
    return info


def read_caption(path: str | os.PathLike) -> str | None:
    """The caption stored in a PNG written by this module (its ``Description`` text chunk), or None."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            text = getattr(img, "text", {}) or {}
            return text.get("Description") or None
    except (OSError, ValueError):
        return None


def _write_png(target: PathOrFile, write) -> Path | None:
    """``write(f)`` into ``target``: a path (written atomically, :func:`onmanifold.io.write_atomic`) or an open binary file."""
    if hasattr(target, "write"):
        write(target)
        return None
    return write_atomic(Path(target), write)


def save_figure(fig, path: PathOrFile, dpi: int = 100, tight: bool = True, caption: str | None = None) -> Path | None:
    """Save a matplotlib figure as PNG and close it: to a path atomically (a killed run never leaves half a
    file), or into an open binary file (e.g. one staged by :class:`onmanifold.io.OutputSet`).

    ``caption`` (what the figure shows) is stored in the PNG (``Description``); ``onmanifold report``
    prints it under the figure.
    """
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    try:
        return _write_png(path, lambda f: fig.savefig(f, dpi=dpi, format="png", metadata={"Description": caption} if caption else None))
    finally:
        plt.close(fig)


def save_grid(x: torch.Tensor, path: PathOrFile, nrow: int = 8, scale: int = 4, pad: int = 1, data_range=(-1.0, 1.0),
              caption: str | None = None) -> Path | None:
    """Save a ``(B, C, H, W)`` batch as one PNG grid (nearest-neighbour upscaled by ``scale``; ``caption`` stored in the PNG)."""
    from PIL import Image

    if x.dim() != 4:
        raise ValueError(f"x: expected (B, C, H, W) images, got shape {tuple(x.shape)}")
    imgs = to_uint8(x, data_range)
    B, H, W, C = imgs.shape
    ncol = min(nrow, B)
    nrows = (B + ncol - 1) // ncol
    grid = np.full((nrows * (H + pad) + pad, ncol * (W + pad) + pad, C), 128, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        grid[pad + r * (H + pad) : pad + r * (H + pad) + H, pad + c * (W + pad) : pad + c * (W + pad) + W] = imgs[i]
    img = Image.fromarray(grid[..., 0] if C == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return _write_png(path, lambda f: img.save(f, format="PNG", pnginfo=_png_info(caption)))


def save_rows(rows: Sequence[torch.Tensor], labels: Sequence[str], path: PathOrFile, scale: int = 4, caption: str | None = None) -> Path | None:
    """Save several equally sized batches as labelled rows of one figure (e.g. measurement / method / truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 0.95), squeeze=False)
    for r, (batch, label) in enumerate(zip(rows, labels)):
        imgs = to_uint8(batch)
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(imgs[c, ..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.2)
    return save_figure(fig, path, tight=False, caption=caption)


def save_scatter(sets: dict[str, torch.Tensor], path: PathOrFile, title: str = "", caption: str | None = None) -> Path | None:
    """Scatter plot of named 2-D point sets (``caption`` stored in the PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, pts in sets.items():
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.5, label=name)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8, markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, caption=caption)
