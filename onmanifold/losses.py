"""Per-sample guidance losses ``L_b(x0_hat) >= 0`` for loss guidance (DPS, DSG, TFG-style label guidance).

A loss is called as ``loss(x0_hat, rows)`` and returns shape ``(B,)``; ``rows`` (positions of the
batch in the whole run, :attr:`StepState.rows`) select the per-sample measurements or targets.
Any plain callable ``x0_hat -> (B,)`` works too.

Devices: a loss follows ``x0_hat``: its data (measurement ``y``, targets, reference features) moves to
``x0_hat``'s device the first time it is called there (one transfer, :func:`onmanifold.device.buffer_on`);
the networks it wraps (classifier, feature net, decoder) must already be there. Residual norms and
cross-entropies of half-precision runs are taken in float32 at least.

* :class:`MeasurementLoss` — ``L_b = ||y_b - A(x0_hat_b)||_2`` (un-squared residual norm; DPS's
  squared loss with step ``zeta / (2 ||y - A x0||)`` is the same update; docs/methods/dsg.md#D6).
* :class:`ClassifierLoss` — ``L_b = -log softmax(f(x0_hat_b))[c_b]`` (label guidance).
* :class:`FeatureLoss` — ``L_b = ||phi(x0_hat_b) - phi_ref_b||_2`` (feature guidance).
* :class:`DecodedLoss` — ``L(D(z0_hat))``: a loss through a decoder (latent diffusion, e.g. a diffusers
  ``AutoencoderKL``'s ``decode``), so DPS and DSG guide latents with pixel-space losses.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .device import at_least_float32, buffer_on
from .operators import Operator

__all__ = ["GuidanceLoss", "MeasurementLoss", "ClassifierLoss", "FeatureLoss", "DecodedLoss", "SumOfLosses", "call_loss"]


class GuidanceLoss(nn.Module):
    """Base class: ``forward(x0_hat, rows=None) -> (B,)`` per-sample losses."""

    def forward(self, x0: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def call_loss(loss: Callable, x0: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Call a :class:`GuidanceLoss` with rows, a plain callable without."""
    return loss(x0, rows) if isinstance(loss, GuidanceLoss) else loss(x0)


def _select(t: torch.Tensor, rows: torch.Tensor | None, n: int, name: str) -> torch.Tensor:
    out = t if rows is None else t[rows]
    if out.shape[0] != n:
        raise ValueError(f"{name}: has {out.shape[0]} rows for a batch of {n}; pass rows= or one row per sample")
    return out


class MeasurementLoss(GuidanceLoss):
    """``L_b = ||y_b - A(x0_hat_b)||_2`` for a measurement ``y`` with one row per sample of the run."""

    def __init__(self, operator: Operator, y: torch.Tensor) -> None:
        super().__init__()
        if not torch.is_tensor(y) or y.dim() < 2:
            raise ValueError(f"y: expected a tensor (N, ...) with one measurement per sample, got {getattr(y, 'shape', type(y))}")
        if not torch.isfinite(y).all():
            bad = torch.nonzero(~torch.isfinite(y.flatten(1)).all(1)).flatten().tolist()
            raise ValueError(f"y: the measurement contains NaN or Inf (samples {bad[:10]})")
        self.operator = operator
        self.register_buffer("y", y.float())

    def forward(self, x0: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        y = _select(buffer_on(self, "y", x0.device), rows, x0.shape[0], "y")
        ax = self.operator(x0, rows)
        if ax.shape != y.shape:
            raise ValueError(f"y: shape {tuple(y.shape)} does not match A(x0_hat) of shape {tuple(ax.shape)}")
        return (y - ax).flatten(1).norm(dim=1)


class ClassifierLoss(GuidanceLoss):
    """Cross-entropy of a classifier on ``x0_hat`` for target labels ``(N,)`` (or one int for all).

    Sees the unclamped Tweedie estimate (``clamp_x0 = False``), as the official FaceID/style code does.
    """

    clamp_x0 = False

    def __init__(self, classifier: nn.Module, target: torch.Tensor | int, head: int | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.head = head
        if isinstance(target, int):
            self.target = target
        else:
            self.register_buffer("target", torch.as_tensor(target, dtype=torch.long))

    def forward(self, x0: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        out = self.classifier(x0) if self.head is None else self.classifier(x0, head=self.head)
        logits = out[0] if isinstance(out, list) else out
        if isinstance(self.target, int):
            tgt = torch.full((x0.shape[0],), self.target, dtype=torch.long, device=x0.device)
        else:
            tgt = _select(buffer_on(self, "target", x0.device), rows, x0.shape[0], "target")
        if int(tgt.max()) >= logits.shape[1] or int(tgt.min()) < 0:
            raise ValueError(f"target: labels must be in [0, {logits.shape[1] - 1}]")
        return F.cross_entropy(at_least_float32(logits), tgt, reduction="none")


class SumOfLosses(GuidanceLoss):
    """``L_b = sum_k w_k L^k_b``: several conditions guided at once (TFG-style multi-condition guidance).

    The parts must agree on whether they see the clamped ``x0_hat`` (``clamp_x0``); rows are passed on.
    """

    def __init__(self, losses: list, weights: list[float] | None = None) -> None:
        super().__init__()
        losses = list(losses)
        if not losses:
            raise ValueError("losses: expected at least one loss")
        weights = [1.0] * len(losses) if weights is None else [float(w) for w in weights]
        if len(weights) != len(losses):
            raise ValueError(f"weights: expected {len(losses)} weights, got {len(weights)}")
        clamps = {getattr(l, "clamp_x0", True) for l in losses}
        if len(clamps) != 1:
            raise ValueError("losses: mixes losses on the clamped and on the unclamped x0_hat; guide them separately")
        self.clamp_x0 = clamps.pop()
        self.parts = losses
        self.weights = weights

    def forward(self, x0: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return sum(w * call_loss(l, x0, rows) for w, l in zip(self.weights, self.parts))


class FeatureLoss(GuidanceLoss):
    """``L_b = ||phi(x0_hat_b) - ref_b||_2`` with ``phi = feature_net.features`` (or the callable itself); unclamped ``x0_hat``."""

    clamp_x0 = False

    def __init__(self, feature_net: Callable, reference_features: torch.Tensor) -> None:
        super().__init__()
        self.phi = getattr(feature_net, "features", feature_net)
        self.net = feature_net if isinstance(feature_net, nn.Module) else None
        self.register_buffer("ref", reference_features.detach().float())

    def forward(self, x0: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        ref = buffer_on(self, "ref", x0.device)
        ref = ref if ref.shape[0] == 1 else _select(ref, rows, x0.shape[0], "reference_features")
        return (self.phi(x0) - ref).flatten(1).norm(dim=1)


class DecodedLoss(GuidanceLoss):
    """``L(decoder(z0_hat))``: evaluate a pixel-space loss on the decoded latent Tweedie estimate.

    ``decoder``: ``z -> x`` (a loaded latent model's ``decode``; for a bare diffusers ``AutoencoderKL``:
    ``lambda z: vae.decode(z / scale).sample``). Gradients flow through the decoder to the latent.

    The wrapper carries its inner loss's settings: ``clamp_x0`` is the inner loss's (a classifier or
    feature loss asks for the unclamped Tweedie estimate, a measurement loss for the sampler's), so the
    sampler and :class:`SumOfLosses` treat the decoded loss as they treat the inner one. A latent
    model's ``x0_hat`` is never clamped in either case: latents have no data range
    (:class:`~onmanifold.latent.LatentDiffusionModel`).
    """

    def __init__(self, loss: Callable, decoder: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss: expected a callable x0 -> (B,) losses, got {type(loss).__name__}")
        if not callable(decoder):
            raise TypeError(f"decoder: expected a callable z -> x, got {type(decoder).__name__}")
        self.loss = loss
        self.decoder = decoder

    @property
    def clamp_x0(self) -> bool:
        """The inner loss's ``clamp_x0`` (True, the sampler's default, when it does not say)."""
        return getattr(self.loss, "clamp_x0", True)

    def forward(self, z0: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return call_loss(self.loss, self.decoder(z0), rows)
