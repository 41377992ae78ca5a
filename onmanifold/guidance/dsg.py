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
(docs/methods/dsg.md#D8); an optional guidance time window (docs/methods/dsg.md#D19) and time travel
(docs/methods/dsg.md#D20); ``sigma`` as a scalar, per sample or per element (docs/methods/dsg.md#D21).

References:
    L. Yang, S. Ding, Y. Cai, J. Yu, J. Wang, Y. Shi. "Guidance with Spherical Gaussian Constraint
    for Conditional Diffusion". ICML 2024 (arXiv 2402.03201).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..sampler import RunContext, SamplerPlugin, StepState
from .steps import check_guidance_window, check_time_travel, check_time_travel_run, in_window, travel, window_message

__all__ = ["SphericalGaussianGuidance", "dsg_update", "DETERMINISTIC_SAMPLER_MESSAGE"]

DETERMINISTIC_SAMPLER_MESSAGE = "eta: DSG needs a stochastic sampler (sigma_t > 0); use DDPM or DDIM with eta > 0 (the paper uses eta = 1)"


def _norm_b(x: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast over the sample dimensions."""
    return x.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.dim() - 1)))


def _sigma_like(sigma: float | torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``sigma`` as a tensor that broadcasts per sample over ``mu`` (docs/methods/dsg.md#D2, #D21).

    A scalar is shared; a 1-D ``sigma`` is one value per sample and must have ``B`` entries (never
    broadcast over the last sample dimension); a tensor with ``mu``'s number of dimensions must
    broadcast to ``mu`` (``(B, 1, 1, 1)``, per element ``(B, C, H, W)``, ...). Anything else raises
    ``ValueError`` naming ``sigma``.
    """
    s = torch.as_tensor(sigma, dtype=mu.dtype, device=mu.device)
    if s.dim() == 0:
        return s
    if s.dim() == 1 and mu.dim() > 1:
        if s.shape[0] != mu.shape[0]:
            raise ValueError(f"sigma: a 1-D sigma holds one value per sample, expected {mu.shape[0]} values, got {s.shape[0]}")
        return s.reshape(-1, *([1] * (mu.dim() - 1)))
    if s.dim() != mu.dim() or torch.broadcast_shapes(s.shape, mu.shape) != mu.shape:
        raise ValueError(f"sigma: expected a scalar, one value per sample ({mu.shape[0]},) or a tensor broadcastable to "
                         f"{tuple(mu.shape)} with as many dimensions, got shape {tuple(s.shape)}")
    return s


def dsg_update(mu: torch.Tensor, sigma: float | torch.Tensor, noise: torch.Tensor, grad: torch.Tensor, guidance_rate: float) -> torch.Tensor:
    """One DSG step, a pure tensor function usable with any scheduler exposing ``(mu, sigma, noise)``.

    ``x_{t-1} = mu + r d_m/||d_m||`` with ``r = sqrt(n) sigma`` (per sample; ``r_b = ||sigma_b||`` for a
    per-element ``sigma``), ``d_m = sigma z + g_r (-r g/||g|| - sigma z)``. Samples whose gradient
    is exactly zero get the plain step ``mu + sigma z``.

    ``sigma``: a scalar, a ``(B,)`` tensor (one value per sample) or a tensor broadcastable to ``mu``
    with as many dimensions (``(B, 1, 1, 1)`` or per element); docs/methods/dsg.md#D21.
    """
    if not (0.0 <= guidance_rate <= 1.0):
        raise ValueError(f"guidance_rate: expected a value in [0, 1], got {guidance_rate}")
    if mu.dtype not in (torch.float32, torch.float64):  # half precision: the norms and the step in float32 (docs/methods/dsg.md#D2)
        s = sigma.float() if torch.is_tensor(sigma) else sigma
        return dsg_update(mu.float(), s, noise.float(), grad.float(), guidance_rate).to(mu.dtype)
    n = mu[0].numel()
    sigma_t = _sigma_like(sigma, mu)
    d_s = sigma_t * noise
    if sigma_t.dim() == 0:
        r = torch.full((mu.shape[0],) + (1,) * (mu.dim() - 1), math.sqrt(n) * float(sigma_t), dtype=mu.dtype, device=mu.device)
    else:  # per-sample or per-element sigma: r_b = ||sigma_b||_2 (= sqrt(n) sigma_b when constant over the sample)
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
        guidance_window: ``(t_lo, t_hi)``: guide only steps whose scheduled training time lies in
            ``[t_lo, t_hi]`` (docs/methods/dsg.md#D19); None (default) guides every step the interval picks. A
            window that guides no step of the run is refused when sampling starts.
        time_travel: ``r >= 1``: take every guided step ``r`` times, re-noising its output back to ``x_t``
            with the forward transition in between (docs/methods/dsg.md#D20); 1 (default) is no time travel.
    """

    update_mode = "replace"  # x_prev <- mu + r d_m / ||d_m||, from the plain step's mu and noise

    def __init__(self, loss: Callable, guidance_rate: float = 0.2, interval: int = 1,
                 guidance_window: tuple[int, int] | None = None, time_travel: int = 1) -> None:
        if isinstance(guidance_rate, bool) or not (isinstance(guidance_rate, (int, float)) and 0.0 <= guidance_rate <= 1.0):
            raise ValueError(f"guidance_rate: expected a value in [0, 1], got {guidance_rate!r}")
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"interval: expected an integer k >= 1, got {interval!r}")
        self.loss = loss
        self.guidance_rate = float(guidance_rate)
        self.interval = interval
        self.guidance_window = check_guidance_window(guidance_window)
        self.time_travel = check_time_travel(time_travel)

    def setup(self, run: RunContext) -> None:
        if not run.sampler.stochastic:
            raise ValueError(DETERMINISTIC_SAMPLER_MESSAGE)
        sampler = run.sampler
        by_interval = [p for p in range(sampler.num_steps) if (sampler.num_steps - 1 - p) % self.interval == 0 and sampler.coefficients(p).sigma > 0]
        if not by_interval:  # would be bit-identical to unguided sampling: refuse rather than ignore the guidance
            raise ValueError(
                f"interval: k = {self.interval} guides no step of this {sampler.num_steps}-step chain (steps with i % k == 0 and "
                f"sigma_i > 0, i counting down from {sampler.num_steps - 1}); use k <= {max(sampler.num_steps - 1, 1)}"
            )
        w = self.guidance_window
        if w is not None and not any(w[0] <= sampler.timesteps[p] <= w[1] for p in by_interval):
            raise ValueError(window_message(w, [sampler.timesteps[p] for p in by_interval]))
        if self.time_travel > 1:
            check_time_travel_run(self, run)

    def is_guided(self, state: StepState) -> bool:
        """``i % k == 0``, ``sigma_i > 0`` and the step's time in the guidance window."""
        return state.index % self.interval == 0 and state.sigma > 0 and in_window(self.guidance_window, state)

    def needs_grad(self, state: StepState) -> bool:
        return self.is_guided(state)

    def update(self, state: StepState) -> None:
        if not self.is_guided(state):
            return
        travel(state, self.time_travel, self._guide)

    def _guide(self, state: StepState) -> None:
        g, _ = state.loss_gradient(self.loss)
        # noise_std: sigma_t, or the per-element std of a learned variance (radius r_b = ||sigma_b||)
        state.x_prev = dsg_update(state.mu.detach(), state.noise_std, state.noise, g, self.guidance_rate)
