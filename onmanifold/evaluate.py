"""Evaluation on the test beds: reference sets, the evaluation classifiers and a quality summary.

* ``digits``: reference = the held-out split (400 images); train floor = the training split.
* ``shapes``: reference = 2000 procedural shapes from seed 777 (never used in training, which draws
  from seed 0's stream); train floor = 2000 shapes from seed 778.
* ``gmm2d``: reference = 2000 exact mixture draws from seed 777; floor = 2000 more from seed 778.
* ``mosaic``: reference = 1000 mosaics (the 'reference' split), floor = 1000 more ('floor'); the evaluation
  classifier sees *tiles* (:class:`TiledFeatures`): every 64x64 mosaic gives its 16 tiles' features, so
  FD and precision / recall are over tiles (16 rows per image, image-major).

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

__all__ = ["reference_set", "eval_classifier", "guidance_classifier", "quality", "TiledFeatures", "feature_rows", "BEDS", "bed_of_model"]

BEDS = tuple(TESTBEDS)


def reference_set(bed: str, which: str = "heldout") -> torch.Tensor:
    """Reference data of ``bed``: ``which`` = 'heldout' (what samples are scored against) or 'train' (the floor).

    The splits and their seeds live in :mod:`onmanifold.testbeds` ('reference' and 'floor').
    """
    if which not in ("heldout", "train"):
        raise ValueError(f"which: expected 'heldout' or 'train', got {which!r}")
    return get_testbed(bed).reference_set("reference" if which == "heldout" else "floor")


class TiledFeatures(torch.nn.Module):
    """A tile-level classifier applied to every tile of an image.

    ``features(x)`` ``(B, C, H, W) -> (B, m d)``: the ``m`` tiles' features of each image side by side (one row per
    image, as :func:`onmanifold.metrics.classifier_features` expects); :meth:`rows` turns them into ``(B m, d)``, one
    row per tile, image-major, which is what the Fréchet distance and precision / recall are computed over (a
    bootstrap over images takes whole groups of ``m`` rows). ``split`` cuts a batch into its tiles, image-major
    (mosaic: :func:`onmanifold.data.mosaic.split_tiles`); ``forward`` gives the per-tile logits.
    """

    def __init__(self, classifier: torch.nn.Module, split) -> None:
        super().__init__()
        self.classifier, self.split = classifier, split

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self.split(x)).reshape(x.shape[0], -1)

    def rows(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, m d) -> (B m, d)``: one row per tile."""
        return features.reshape(-1, self.classifier.feature_dim)

    def forward(self, x: torch.Tensor, head: int | None = None):
        return self.classifier(self.split(x), head)


def feature_rows(bed: str, features: torch.Tensor) -> torch.Tensor:
    """The rows FD and precision / recall are computed over: the features themselves, or one row per tile (mosaic)."""
    classifier = eval_classifier(bed)
    return classifier.rows(features) if isinstance(classifier, TiledFeatures) else features


@lru_cache(maxsize=4)
def eval_classifier(bed: str) -> torch.nn.Module:
    """The bundled independent evaluation classifier of ``bed`` ('digits', 'shapes' or 'shapes-latent', whose images are shapes;
    'mosaic': the tile classifier as :class:`TiledFeatures`): the registry's ``eval_classifier``."""
    name = get_testbed(bed).eval_classifier if bed in TESTBEDS else None
    network = load_network(name or f"{bed}-eval-classifier")
    if bed == "mosaic":
        from .data.mosaic import split_tiles

        return TiledFeatures(network, split_tiles)
    return network


@lru_cache(maxsize=4)
def guidance_classifier(bed: str) -> torch.nn.Module:
    """The bundled guidance classifier of ``bed`` ('digits', 'shapes' or 'shapes-latent'): the registry's ``guidance_classifier``."""
    name = get_testbed(bed).guidance_classifier if bed in TESTBEDS else None
    return load_network(name or f"{bed}-classifier")


@lru_cache(maxsize=8)
def _reference_features(bed: str, which: str) -> torch.Tensor:
    return feature_rows(bed, metrics.classifier_features(eval_classifier(bed), reference_set(bed, which)))


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
    feats = feature_rows(bed, metrics.classifier_features(eval_classifier(bed), samples.clamp(-1, 1)))
    ref = _reference_features(bed, reference)
    p, r = metrics.precision_recall(ref, feats, k=3)
    return {"fd": metrics.frechet_distance(feats, ref), "precision": p, "recall": r}
