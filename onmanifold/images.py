"""Saving image grids and 2-D scatter plots (PIL / matplotlib, no torchvision)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["to_uint8", "save_grid", "save_scatter", "save_rows", "save_figure"]


def to_uint8(x: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """``(B, C, H, W)`` in ``data_range`` -> ``(B, H, W, C)`` uint8 (clamped, no per-image normalisation)."""
    lo, hi = data_range
    u = ((x.detach().float().clamp(lo, hi) - lo) / (hi - lo) * 255).round().to(torch.uint8)
    return u.permute(0, 2, 3, 1).cpu().numpy()


def _atomic_save(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    img.save(tmp, format=path.suffix.lstrip(".").upper() or "PNG")
    os.replace(tmp, path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 100, tight: bool = True) -> Path:
    """Save a matplotlib figure as PNG atomically (a killed run never leaves half a file) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def save_grid(x: torch.Tensor, path: str | os.PathLike, nrow: int = 8, scale: int = 4, pad: int = 1, data_range=(-1.0, 1.0)) -> Path:
    """Save a ``(B, C, H, W)`` batch as one PNG grid (nearest-neighbour upscaled by ``scale``)."""
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
    path = Path(path)
    _atomic_save(img, path)
    return path


def save_rows(rows: Sequence[torch.Tensor], labels: Sequence[str], path: str | os.PathLike, scale: int = 4) -> Path:
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
    return save_figure(fig, path, tight=False)


def save_scatter(sets: dict[str, torch.Tensor], path: str | os.PathLike, title: str = "") -> Path:
    """Scatter plot of named 2-D point sets."""
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
    return save_figure(fig, path)
