"""Diffusion with Spherical Gaussian constraint (DSG).

The reverse transition ``N(mu, sigma_t^2 I)`` concentrates on the sphere ``S(mu, r)``,
``r = sqrt(n) sigma_t`` (``n = C H W``; Prop. 4.3: ``||z||/sqrt(n) = 1 +- O(1/sqrt(2n))``). DSG
keeps every guided iterate exactly on it. Linearising the loss at ``x_t`` and minimising
``g^T x`` on the sphere gives ``x* = mu - r g/||g||``; the guidance rate ``g_r`` mixes it with the
step's own noise and projects back:

    d_s = sigma_t z,    d* = -r g / ||g||,    d_m = d_s + g_r (d* - d_s)
    x_{t-1} = mu + r d_m / ||d_m||

Only every ``k``-th step is guided (``i % k == 0``, ``i`` counting the respaced chain from
``N-1`` down to 0); the others are plain steps with no gradient. DSG has no step size, so it is
invariant to any positive rescaling of each sample's loss.

Project decisions, each with its reason in ``docs/methods/dsg.md``: per-sample radius and norms
(docs/methods/dsg.md#D2); linear mixing of the raw drawn noise ``sigma z``, not slerp
(docs/methods/dsg.md#D3); a deterministic sampler is refused and the step with ``sigma = 0`` (the
last) is unguided (docs/methods/dsg.md#D5); a zero per-sample gradient falls back to the plain step
and a non-finite loss or gradient raises (docs/methods/dsg.md#D7); no last-step push
(docs/methods/dsg.md#D8).

References:
    L. Yang, S. Ding, Y. Cai, J. Yu, J. Wang, Y. Shi. "Guidance with Spherical Gaussian Constraint
    for Conditional Diffusion". ICML 2024 (arXiv 2402.03201).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..sampler import DDIMSampler, SamplerPlugin, StepState, RunContext

__all__ = ["SphericalGaussianGuidance", "dsg_update", "DETERMINISTIC_SAMPLER_MESSAGE"]

DETERMINISTIC_SAMPLER_MESSAGE = "eta: DSG needs a stochastic sampler (sigma_t > 0); use DDPM or DDIM with eta > 0 (the paper uses eta = 1)"


def _norm_b(x: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast over the sample dimensions."""
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))


def dsg_update(mu: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor, grad: torch.Tensor, guidance_rate: float) -> torch.Tensor:
    """One DSG step, a pure tensor function usable with any scheduler exposing ``(mu, sigma, noise)``.

    ``x_{t-1} = mu + r d_m/||d_m||`` with ``r = sqrt(n) sigma`` (per sample; ``r_b = ||sigma_b||`` for a
    per-element ``sigma``), ``d_m = sigma z + g_r (-r g/||g|| - sigma z)``. Samples whose gradient
    is exactly zero get the plain step ``mu + sigma z``.
    """
    if not (0.0 <= guidance_rate <= 1.0):
        raise ValueError(f"guidance_rate: expected a value in [0, 1], got {guidance_rate}")
    n = mu[0].numel()
    sigma_t = torch.as_tensor(sigma, dtype=mu.dtype)
    d_s = sigma_t * noise
    if sigma_t.dim() == 0:
        r = torch.full((mu.shape[0],) + (1,) * (mu.dim() - 1), math.sqrt(n) * float(sigma_t), dtype=mu.dtype)
    else:  # per-element sigma: r_b = ||sigma_b||_2 (= sqrt(n) sigma when constant)
        r = _norm_b(sigma_t.expand_as(mu))
    gn = _norm_b(grad)
    ok = gn > 0
    d_star = -r * grad / torch.where(ok, gn, torch.ones_like(gn))
    d_m = d_s + guidance_rate * (d_star - d_s)
    x_new = mu + r * d_m / _norm_b(d_m).clamp_min(torch.finfo(mu.dtype).tiny)
    return torch.where(ok, x_new, mu + d_s)


class SphericalGaussianGuidance(SamplerPlugin):
    """DSG as a sampler plugin (the ``update`` point).

    Args:
        loss: per-sample loss on ``x0_hat`` (:mod:`onmanifold.losses`), any positive scale.
        guidance_rate: ``g_r`` in [0, 1] (paper Table 3: 0.2 inpainting; 0.1-0.2 SR and deblur).
        interval: ``k >= 1``, guide the steps with ``i % k == 0``; a ``k`` that guides no step of the run
            (``k >= N`` guides only the unguided last step) is refused when sampling starts.
    """

    update_mode = "replace"  # x_prev <- mu + r d_m / ||d_m||, from the plain step's mu and noise

    def __init__(self, loss: Callable, guidance_rate: float = 0.2, interval: int = 1) -> None:
        if isinstance(guidance_rate, bool) or not (isinstance(guidance_rate, (int, float)) and 0.0 <= guidance_rate <= 1.0):
            raise ValueError(f"guidance_rate: expected a value in [0, 1], got {guidance_rate!r}")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"interval: expected an integer k >= 1, got {interval!r}")
        self.loss = loss
        self.guidance_rate = float(guidance_rate)
        self.interval = interval

    def setup(self, run: RunContext) -> None:
        if not run.sampler.stochastic:
            raise ValueError(DETERMINISTIC_SAMPLER_MESSAGE)
        sampler = run.sampler
        guided = [p for p in range(sampler.num_steps) if (sampler.num_steps - 1 - p) % self.interval == 0 and sampler.coefficients(p).sigma > 0]
        if not guided:  # would be bit-identical to unguided sampling: refuse rather than ignore the guidance
            raise ValueError(
                f"interval: k = {self.interval} guides no step of this {sampler.num_steps}-step chain (steps with i % k == 0 and "
                f"sigma_i > 0, i counting down from {sampler.num_steps - 1}); use k <= {max(sampler.num_steps - 1, 1)}"
            )

    def is_guided(self, state: StepState) -> bool:
        """``i % k == 0`` and ``sigma_i > 0``."""
        return state.index % self.interval == 0 and state.sigma > 0

    def needs_grad(self, state: StepState) -> bool:
        return self.is_guided(state)

    def update(self, state: StepState) -> None:
        if not self.is_guided(state):
            return
        g, _ = state.loss_gradient(self.loss)
        # noise_std: sigma_t, or the per-element std of a learned variance (radius r_b = ||sigma_b||)
        state.x_prev = dsg_update(state.mu.detach(), state.noise_std, state.noise, g, self.guidance_rate)
