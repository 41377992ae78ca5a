"""Evaluation on the test beds: reference sets, the evaluation classifiers and a quality summary.

* ``digits``: reference = the held-out split (400 images); train floor = the training split.
* ``shapes``: reference = 2000 procedural shapes from seed 777 (never used in training, which draws
  from seed 0's stream); train floor = 2000 shapes from seed 778.
* ``gmm2d``: reference = 2000 exact mixture draws from seed 777; floor = 2000 more from seed 778.

Quality of an image set: Fréchet distance (FD) and improved precision / recall (k = 3) in the
penultimate features of the bed's *evaluation* classifier (``<bed>-eval-classifier``, never the
guidance one). Quality of a 2-D set: exact W1 (POT) to the reference.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from . import metrics
from .nets.checkpoint import load_network

__all__ = ["reference_set", "eval_classifier", "guidance_classifier", "quality", "BEDS", "bed_of_model"]

BEDS = ("gmm2d", "digits", "shapes")
_MODEL_BED = {"gmm2d-mlp": "gmm2d", "digits-unet": "digits", "shapes-unet": "shapes"}


def bed_of_model(name: str, sample_shape: tuple[int, ...] | None = None) -> str | None:
    """The test bed of a bundled model name, or guessed from a sample shape; None if unknown."""
    if name in _MODEL_BED:
        return _MODEL_BED[name]
    if sample_shape == (1, 8, 8):
        return "digits"
    if sample_shape == (1, 32, 32):
        return "shapes"
    if sample_shape == (2,):
        return "gmm2d"
    return None


def reference_set(bed: str, which: str = "heldout") -> torch.Tensor:
    """Reference data of ``bed``: ``which`` = 'heldout' (what samples are scored against) or 'train' (the floor)."""
    if which not in ("heldout", "train"):
        raise ValueError(f"which: expected 'heldout' or 'train', got {which!r}")
    seed = 777 if which == "heldout" else 778
    if bed == "digits":
        from .data.digits import load_digits_split

        return load_digits_split(which)[0]
    if bed == "shapes":
        from .data.shapes import sample_shapes

        return sample_shapes(2000, torch.Generator().manual_seed(seed))[0]
    if bed == "gmm2d":
        from .data.gmm2d import sample_gmm2d

        return sample_gmm2d(2000, torch.Generator().manual_seed(seed))
    raise ValueError(f"bed: expected one of {BEDS}, got {bed!r}")


@lru_cache(maxsize=4)
def eval_classifier(bed: str) -> torch.nn.Module:
    """The bundled independent evaluation classifier of ``bed`` ('digits' or 'shapes')."""
    return load_network(f"{bed}-eval-classifier")


@lru_cache(maxsize=4)
def guidance_classifier(bed: str) -> torch.nn.Module:
    """The bundled guidance classifier of ``bed`` ('digits' or 'shapes')."""
    return load_network(f"{bed}-classifier")


@lru_cache(maxsize=8)
def _reference_features(bed: str, which: str) -> torch.Tensor:
    return metrics.classifier_features(eval_classifier(bed), reference_set(bed, which))


def quality(bed: str, samples: torch.Tensor, reference: str = "heldout") -> dict[str, float]:
    """Quality of ``samples`` against the bed's reference set.

    Images: ``{"fd", "precision", "recall"}`` in evaluation-classifier features.
    gmm2d: ``{"w1"}`` exact W1 against 2000 reference draws (first 2000 samples used).
    """
    if not torch.isfinite(samples).all():
        raise ValueError("samples: contain NaN or Inf")
    if bed == "gmm2d":
        ref = reference_set(bed, reference)
        return {"w1": metrics.wasserstein1_exact(samples[:2000], ref)}
    feats = metrics.classifier_features(eval_classifier(bed), samples.clamp(-1, 1))
    ref = _reference_features(bed, reference)
    p, r = metrics.precision_recall(ref, feats, k=3)
    return {"fd": metrics.frechet_distance(feats, ref), "precision": p, "recall": r}
