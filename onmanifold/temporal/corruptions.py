"""Perturbations of the reverse process that push samples off the manifold (TAG experiments).

Both act at the start of each step, before TAG and before the network call (the App. E.2
order, docs/methods/tag.md#D13); they use the sampler's ``perturb`` point, which runs
before every ``before_model`` plugin, so :attr:`~onmanifold.sampler.StepState.x_entering` includes them.

* :class:`NoiseInjection` — the corrupted reverse process of Sec. 3.4: ``x_t <- x_t + sigma z``,
  ``z ~ N(0, I)`` from the per-sample generators, at every step.
* :class:`LinearDrift` — the toy's drift ``v = -rate * x`` (Sec. 2): ``x_t <- x_t - rate * x_t`` at every step.
"""

from __future__ import annotations

import math

from ..sampler import SamplerPlugin, StepState

__all__ = ["NoiseInjection", "LinearDrift"]


class NoiseInjection(SamplerPlugin):
    """Add ``sigma * z`` to the state entering every step (``sigma`` in data units; data in [-1, 1])."""

    def __init__(self, sigma: float) -> None:
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma: expected a finite noise std >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def perturb(self, state: StepState) -> None:
        if self.sigma > 0:
            state.x_t = state.x_t + self.sigma * state.randn_like(state.x_t)


class LinearDrift(SamplerPlugin):
    """Move the state entering every step by the drift ``-rate * x`` (TAG toy: ``rate = 0.01``)."""

    def __init__(self, rate: float = 0.01) -> None:
        if not (isinstance(rate, (int, float)) and math.isfinite(rate)):
            raise ValueError(f"rate: expected a finite number, got {rate!r}")
        self.rate = float(rate)

    def perturb(self, state: StepState) -> None:
        if self.rate != 0:
            state.x_t = state.x_t - self.rate * state.x_t
