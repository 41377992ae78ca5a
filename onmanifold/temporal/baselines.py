"""Baselines of Temporal Alignment Guidance, each a sampler plugin (docs/methods/tag.md#B2 to #B6).

* :class:`EpsilonScaling` — Ning et al., "Elucidating the Exposure Bias in Diffusion Models", ICLR 2024.
* :class:`TimeCorrectionSampler` — Jung et al., "Conditional Synthesis of 3D Molecules with Time
  Correction Sampler", NeurIPS 2024 (TCS; the project's reading, docs/methods/tag.md#D16).
* :class:`TimeShiftSampler` — Li et al., "Alleviating Exposure Bias in Diffusion Models through
  Sampling with Shifted Time Steps", ICLR 2024 (the project's matching rule, docs/methods/tag.md#D17).
* :class:`LangevinCorrector` — Song et al., "Score-Based Generative Modeling through Stochastic
  Differential Equations", ICLR 2021 (the corrector of the PC sampler, signal-to-noise step rule).

Timestep Guidance and Self-Guidance are not implemented: the TAG paper leaves their perturbed
time / noise level unstated, so any choice would be ours, not theirs (docs/methods/tag.md#D19).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..device import at_least_float32
from ..sampler import DDIMSampler, SamplerPlugin, StepState, RunContext
from .guidance import check_predictor, select_condition
from .predictor import input_dtype

__all__ = ["EpsilonScaling", "TimeCorrectionSampler", "TimeShiftSampler", "LangevinCorrector", "image_variance"]


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class EpsilonScaling(SamplerPlugin):
    """Epsilon Scaling: divide the network's ``eps`` by ``lambda_t = k * t + b`` before ``x0_hat`` is formed.

    ``x0_hat`` is then computed (and clamped) from the scaled ``eps`` and ``eps`` re-derived from it,
    as the ADM-ES code does. ``t`` is the training step. ADM-ES default ``k = 0`` (constant
    ``lambda = b``); typical ``b``: 1.017 (CIFAR-10, 100 steps) .. 1.004. Under loss guidance the loss
    sees the ``x0_hat`` of the scaled ``eps`` (project choice, docs/methods/tag.md#D15).
    """

    def __init__(self, b: float = 1.017, k: float = 0.0) -> None:
        for name, v in (("b", b), ("k", k)):
            if not (isinstance(v, (int, float)) and math.isfinite(v)):
                raise ValueError(f"{name}: expected a finite number, got {v!r}")
        self.b, self.k = float(b), float(k)

    def scale(self, t: int) -> float:
        lam = self.k * t + self.b
        if lam <= 0:
            raise ValueError(f"EpsilonScaling: lambda_t = k * t + b = {lam} <= 0 at t = {t}; expected a positive scale")
        return lam

    def after_model(self, state: StepState) -> None:
        lam = self.scale(state.t)
        if lam != 1.0:
            with torch.set_grad_enabled(state.x_t_graph is not None):
                state.set_eps(state.eps / lam)


class TimeCorrectionSampler(SamplerPlugin):
    """TCS: re-project the landed state to the intended time through the time the predictor sees.

    After the (guided) step lands at ``x~`` (nominal ``t_prev``): ``t~ = argmax phi(x~)``,
    ``x0_hat = (x~ - sqrt(1 - abar_t~) eps(x~, t~)) / sqrt(abar_t~)`` (clamped like the sampler's),
    ``x_prev = sqrt(abar_{t_prev}) x0_hat + sqrt(1 - abar_{t_prev}) eps(x~, t~)``. One extra network call per
    step; skipped after the last step. ``gate``: correct only samples with ``|t~ - t_prev| > gate``
    (default 0: every sample whose predicted time differs; where ``t~ = t_prev`` the re-projection is
    the identity up to clamping).

    :attr:`extra_model_calls` counts the extra network calls of the last run (reset in :meth:`setup`).
    """

    def __init__(self, predictor: Any, gate: int = 0, condition: Any = None) -> None:
        if not isinstance(gate, int) or gate < 0:
            raise ValueError(f"gate: expected an integer >= 0, got {gate!r}")
        self.predictor, self.gate, self.condition = predictor, gate, condition
        self.extra_model_calls = 0

    def setup(self, run: RunContext) -> None:
        check_predictor(self.predictor, run.sampler, run.device)
        self.extra_model_calls = 0

    @torch.no_grad()
    def after_step(self, state: StepState) -> None:
        if state.t_prev < 0:
            return
        x = state.x_prev
        t_hat = self.predictor(x.to(input_dtype(self.predictor, x)), select_condition(self.condition, state)).argmax(dim=1)
        hit = (t_hat - state.t_prev).abs() > self.gate
        if not bool(hit.any()):
            return
        self.extra_model_calls += 1
        # x0_hat at t~ clamped like the sampler's, but the network's eps kept (docs/methods/tag.md#D16): re-deriving eps from the
        # clamped x0 would divide the clamping residual by sqrt(1 - abar_t~)
        eps, x0, _, _ = state.model_at(x, t_hat)
        a_p = state.coeffs.abar_prev
        x_new = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps
        state.x_prev = torch.where(_per_sample(hit, x).bool(), x_new, x)


def image_variance(x: torch.Tensor) -> float:
    """Mean over images of the within-image pixel variance (the ``v_data`` of :class:`TimeShiftSampler`)."""
    return float(x.reshape(x.shape[0], -1).var(dim=1).mean())


class TimeShiftSampler(SamplerPlugin):
    """Time-Shift Sampler: call the network at the time whose noise level matches the state's variance.

    At each step with nominal ``t >= cutoff`` (after the first), the state's variance ``v`` over
    (C, H, W) picks ``t* = argmin_{|k - t| <= window // 2} |v - (abar_k v_data + 1 - abar_k)|`` per sample;
    the network call and ``x0_hat``/``eps_hat``/``mu`` use ``abar_{t*}``, while ``sigma`` and ``abar_prev``
    stay the nominal step's (project reading of the matching rule, docs/methods/tag.md#D17). Official TS-DPM
    settings: ``window`` 5 / ``cutoff`` 550 (F-PNDM, 100 steps), 30 / 300 (DPM-Solver, 5 steps), T = 1000.

    Args:
        data_var: ``v_data``, the data's mean within-image pixel variance (:func:`image_variance`).
        window: width ``w`` of the search window in training steps.
        cutoff: shift only while ``t >= cutoff`` (training steps).

    :attr:`shifts` holds the mean ``|t* - t|`` of every shifted step of the last run (reset in :meth:`setup`).
    """

    def __init__(self, data_var: float, window: int = 5, cutoff: int = 550) -> None:
        if not (isinstance(data_var, (int, float)) and math.isfinite(data_var) and data_var >= 0):
            raise ValueError(f"data_var: expected a finite variance >= 0, got {data_var!r}")
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"window: expected an integer >= 0, got {window!r}")
        if not isinstance(cutoff, int) or cutoff < 0:
            raise ValueError(f"cutoff: expected an integer training step >= 0, got {cutoff!r}")
        self.data_var, self.window, self.cutoff = float(data_var), window, cutoff
        self.shifts: list[float] = []

    def setup(self, run: RunContext) -> None:
        self.shifts = []

    def before_model(self, state: StepState) -> None:
        if state.position == 0 or state.t < self.cutoff or self.window < 2:
            return
        T = state.sampler.schedule.T
        half = self.window // 2
        ks = torch.arange(max(state.t - half, 0), min(state.t + half, T - 1) + 1, device=state.x_t.device)
        a = state.sampler.schedule.abar(ks).double()
        expected = a * self.data_var + 1 - a  # (K,)
        v = state.x_t.reshape(state.batch_size, -1).double().var(dim=1)  # (B,)
        t_star = ks[(v[:, None] - expected[None]).abs().argmin(dim=1)]
        self.shifts.append(float((t_star - state.t).abs().float().mean()))
        state.set_time_per_sample(t_star)


class LangevinCorrector(SamplerPlugin):
    """Langevin corrector before each step's network call (PC sampler, Song et al. 2021, Alg. 5 for VP).

    ``x <- x + delta s(x, t) + sqrt(2 delta) z``, ``s = -eps(x, t) / sqrt(1 - abar_t)``,
    ``delta = 2 alpha_t (r ||z|| / ||s||)^2`` per sample with ``alpha_t = 1 - beta_t`` and the
    signal-to-noise ratio ``r`` (0.16 in the paper for CIFAR-10). ``steps`` corrector steps, one extra
    network call each (:attr:`extra_model_calls`, of the last run: reset in :meth:`setup`).
    """

    def __init__(self, snr: float = 0.16, steps: int = 1) -> None:
        if not (isinstance(snr, (int, float)) and math.isfinite(snr) and snr >= 0):
            raise ValueError(f"snr: expected a finite ratio >= 0, got {snr!r}")
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps: expected an integer >= 0, got {steps!r}")
        self.snr, self.steps = float(snr), steps
        self.extra_model_calls = 0

    def setup(self, run: RunContext) -> None:
        self.extra_model_calls = 0

    def before_model(self, state: StepState) -> None:
        if self.snr == 0 or self.steps == 0:
            return
        a = state.abar_at(state.t)
        alpha = 1.0 - float(state.sampler.schedule.betas[state.t])
        x = state.x_t
        for _ in range(self.steps):
            self.extra_model_calls += 1
            s = -state.model_at(x, state.t).eps / math.sqrt(1 - a)  # the score at the nominal step time
            z = state.randn_like(x)
            zn = at_least_float32(z).reshape(z.shape[0], -1).norm(dim=1)  # norms of half-precision runs in float32
            sn = at_least_float32(s).reshape(s.shape[0], -1).norm(dim=1).clamp_min(1e-12)
            delta = _per_sample(2 * alpha * (self.snr * zn / sn) ** 2, x)
            x = x + delta * s + (2 * delta).sqrt() * z
        state.x_t = x
