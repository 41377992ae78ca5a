"""The ``digits`` test bed: scikit-learn's 1797 real handwritten 8x8 digits, scaled to [-1, 1].

Pixel values 0..16 map to ``x / 8 - 1``. The split is fixed and written down here: a permutation
of the 1797 indices drawn with ``numpy.random.default_rng(20240101)``; the first 1197 are
``train``, the next 200 ``val`` (validation: hyper-parameter sweeps), the last 400 ``heldout``
(every reported number). :func:`split_indices` returns them.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["load_digits_split", "split_indices", "SPLIT_SIZES", "SPLIT_SEED"]

SPLIT_SEED = 20240101
SPLIT_SIZES = {"train": 1197, "val": 200, "heldout": 400}


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def split_indices(split: str) -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of ``split`` in {'train', 'val', 'heldout', 'all'}."""
    n = 1797
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    a, b = SPLIT_SIZES["train"], SPLIT_SIZES["train"] + SPLIT_SIZES["val"]
    parts = {"train": perm[:a], "val": perm[a:b], "heldout": perm[b:], "all": np.arange(n)}
    if split not in parts:
        raise ValueError(f"split: expected one of {sorted(parts)}, got {split!r}")
    return parts[split]


def load_digits_split(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, 1, 8, 8)`` in [-1, 1] and labels ``(n,)`` of one fixed split."""
    images, labels = _raw()
    idx = split_indices(split)
    x = torch.from_numpy(images[idx] / 8.0 - 1.0).unsqueeze(1)
    return x.float(), torch.from_numpy(labels[idx])
