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
from .testbeds import TESTBEDS, bed_of_model, get_testbed

__all__ = ["reference_set", "eval_classifier", "guidance_classifier", "quality", "BEDS", "bed_of_model"]

BEDS = tuple(TESTBEDS)


def reference_set(bed: str, which: str = "heldout") -> torch.Tensor:
    """Reference data of ``bed``: ``which`` = 'heldout' (what samples are scored against) or 'train' (the floor).

    The splits and their seeds live in :mod:`onmanifold.testbeds` ('reference' and 'floor').
    """
    if which not in ("heldout", "train"):
        raise ValueError(f"which: expected 'heldout' or 'train', got {which!r}")
    return get_testbed(bed).reference_set("reference" if which == "heldout" else "floor")


@lru_cache(maxsize=4)
def eval_classifier(bed: str) -> torch.nn.Module:
    """The bundled independent evaluation classifier of ``bed`` ('digits', 'shapes' or 'shapes-latent', whose images are shapes):
    the registry's ``eval_classifier``."""
    name = get_testbed(bed).eval_classifier if bed in TESTBEDS else None
    return load_network(name or f"{bed}-eval-classifier")


@lru_cache(maxsize=4)
def guidance_classifier(bed: str) -> torch.nn.Module:
    """The bundled guidance classifier of ``bed`` ('digits', 'shapes' or 'shapes-latent'): the registry's ``guidance_classifier``."""
    name = get_testbed(bed).guidance_classifier if bed in TESTBEDS else None
    return load_network(name or f"{bed}-classifier")


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
