"""The ``gmm2d`` test bed (TAG's toy): ``1/2 N((10, 10), I) + 1/2 N((-10, -10), I)``.

Its noised marginals stay mixtures, ``p_t = 1/2 sum_j N(sqrt(abar_t) mu_j, (abar_t s^2 + 1 - abar_t) I)``,
so the exact score is known at every ``t`` (:class:`onmanifold.model.GaussianMixtureModel`).
The diffusion schedule for this bed is linear with ``T = 100``, betas 1e-3 .. 0.2 (docs/methods/tag.md#D14),
for which ``sqrt(abar_99) * ||mu|| ~ 3e-3``.
"""

from __future__ import annotations

import torch

__all__ = ["GMM2D_MEANS", "GMM2D_STD", "GMM2D_WEIGHTS", "gmm2d_schedule", "sample_gmm2d"]

GMM2D_MEANS = torch.tensor([[10.0, 10.0], [-10.0, -10.0]])
GMM2D_STD = 1.0
GMM2D_WEIGHTS = torch.tensor([0.5, 0.5])


def gmm2d_schedule():
    """The toy's schedule: linear betas 1e-3 .. 0.2 over T = 100 steps."""
    from ..schedule import NoiseSchedule

    return NoiseSchedule.linear(100, 1e-3, 0.2)


def sample_gmm2d(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` exact draws ``(n, 2)`` from the mixture."""
    if n < 1:
        raise ValueError(f"n: expected a positive integer, got {n}")
    comp = torch.randint(0, 2, (n,), generator=generator)
    return GMM2D_MEANS[comp] + GMM2D_STD * torch.randn(n, 2, generator=generator)
