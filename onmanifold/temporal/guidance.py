"""Temporal Alignment Guidance as a sampler plugin.

Temporal Alignment Guidance (TAG; Park, Jung, Bae, Yun, arXiv 2510.11057, 2025) adds the time-linked
score of a time predictor ``phi`` to the sampler's score,

    TAG(x, t) = grad log p_t(x) + omega_t * grad_x log p_phi(t | x),    omega_t = omega0 * (1 - abar_t),

i.e. approximate sampling from ``p_t(x) p(t | x)^omega``: a state that looks like another time is
pulled back toward the manifold of the intended time ``t`` (always the solver's current *training*
step, never the respaced count). With exact marginals the TLS is ``s_t - E_{gamma}[s_k]``
(Theorem 3.3; :func:`~onmanifold.temporal.predictor.time_linked_score_closed_form`).

Placements (docs/methods/tag.md#R4 and #D3; every result records its placement):

* ``pre`` (default, Alg. 1): before the network call, ``x_t <- x_t + omega_t TLS(x_t, t)``; the model
  call, any guidance gradient and the step then happen at the moved point. Under loss guidance the
  state entering a step already contains the previous step's guidance move, so the TLS sees a
  condition-shifted point for free (docs/methods/tag.md#D5).
* ``post`` (App. E.2, Alg. 2): after the step, ``x_prev <- x_prev + omega0 (1 - abar_{t_prev})
  TLS(x_prev, t_prev)``; skipped after the last step (the state is clean).
* ``inline`` (App. B.3): ``x_prev <- x_prev + omega_t TLS(x', t)`` at the update point, with the
  condition-shifted time point ``x'`` (Prop. B.1, stop-gradient):

  - ``shift="guided"`` (default): ``x' = x_t + d`` where ``d`` is the displacement the guidance
    plugins listed *before* TAG gave this step (``x_prev`` after them minus the unguided
    ``mu + sigma z``). For DPS ``d = -zeta g``, exactly the paper's ``x' = x_t - eta_t^2 g`` with its
    undetermined ``eta_t^2 := rho_t = zeta`` (docs/methods/tag.md#D4); for DSG it is DSG's own move. Without
    guidance ``x' = x_t``.
  - ``shift="losses"`` with ``shift_losses=[(loss_k, eta2_k), ...]``: ``x' = x_t - sum_k eta2_k g_k``,
    all ``g_k`` from ``x0_hat(x_t)`` (the single-condition predictor ``p(t | x', c_K)`` of Sec. 4.2
    is given the other conditions' losses).
  - ``shift="sequential"`` with ``shift_losses``: Prop. B.2's sequential shift for an unconditional
    predictor: ``x^(1) = x_t - eta2_1 g_1``; for ``k >= 2`` ``x0_hat`` is recomputed at ``x^(k-1)``
    (one extra network call per extra condition), ``g_k = grad l_k(x0_hat(x^(k-1)))``,
    ``x^(k) = x^(k-1) - eta2_k g_k``; the TLS is taken at ``x^(K)``.
  - ``shift="none"``: ``x' = x_t`` (a predictor conditioned on every guided attribute, Sec. 4.2).

``omega0 = 0`` is a bit-for-bit no-op (no predictor call at all).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from ..sampler import DDIMSampler, SamplerPlugin, StepState, RunContext
from .predictor import time_linked_score

__all__ = ["TemporalAlignmentGuidance", "select_condition", "check_predictor"]

PLACEMENTS = ("pre", "post", "inline")
SHIFTS = ("guided", "none", "losses", "sequential")


def select_condition(condition: Any, state: StepState) -> Any:
    """The rows of a per-sample condition tensor for this batch (a ``(N, K)`` tensor indexed by ``state.rows``)."""
    if condition is None:
        return None
    c = torch.as_tensor(condition, dtype=torch.long, device=state.x_t.device)
    if c.dim() == 0:
        return c.expand(state.batch_size)[:, None]
    if c.dim() == 1:
        c = c[:, None]
    if c.shape[0] == 1:
        return c.expand(state.batch_size, -1)
    if int(state.rows.max()) >= c.shape[0]:
        raise ValueError(f"condition: has {c.shape[0]} rows but the run draws sample positions up to {int(state.rows.max())}")
    return c[state.rows]


def check_predictor(predictor: Any, sampler: DDIMSampler, device: torch.device | None = None) -> None:
    """Fail early when the predictor's class count or ``abar`` differs from the sampler's schedule, or (with
    ``device``, the run's) when its weights live on another device than the run."""
    if device is not None:
        from ..device import same_device, model_placement

        where, _ = model_placement(predictor)
        if where is not None and not same_device(where, device):
            raise ValueError(f"predictor: the time predictor's weights are on {where} but the run is on {device}; "
                             f"move it there first (predictor.to({str(device)!r}))")
    check = getattr(predictor, "check_schedule", None)
    if check is not None:
        check(sampler.schedule)
        return
    n = getattr(predictor, "num_timesteps", None)
    if n is not None and int(n) != sampler.schedule.T:
        raise ValueError(f"time predictor: it classifies {n} training steps but the sampler's schedule has T = {sampler.schedule.T}")


class TemporalAlignmentGuidance(SamplerPlugin):
    """Temporal Alignment Guidance: ascend ``log p_phi(t | x)`` with strength ``omega_t = omega0 (1 - abar_t)``.

    Args:
        predictor: a time predictor ``(x, cond) -> (B, T)`` logits
            (:class:`~onmanifold.temporal.predictor.TimePredictor`, :class:`~onmanifold.temporal.predictor.ExactTimePosterior`).
        omega0: strength ``>= 0`` (the paper tunes it per task: 0.2 .. 200; choose it on validation seeds).
        placement: ``"pre"`` (default), ``"post"`` or ``"inline"`` (module docstring).
        condition: labels of a conditional predictor: a ``(N, K)`` LongTensor with one row per sample
            of the run (or one row for all), passed as ``cond`` to ``predictor``.
        shift, shift_losses: the condition-shifted time point of the ``inline`` placement (module docstring).

    Counters ``predictor_calls`` and ``extra_model_calls`` record the cost of the last run (reported apart
    from NFE; reset in :meth:`setup`).
    """

    def __init__(
        self,
        predictor: Callable,
        omega0: float,
        placement: str = "pre",
        condition: Any = None,
        shift: str = "guided",
        shift_losses: Sequence[tuple[Callable, float]] = (),
    ) -> None:
        if not (isinstance(omega0, (int, float)) and not isinstance(omega0, bool) and math.isfinite(omega0) and omega0 >= 0):
            raise ValueError(f"omega0: expected a finite strength >= 0, got {omega0!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
        if shift not in SHIFTS:
            raise ValueError(f"shift: expected one of {SHIFTS}, got {shift!r}")
        shift_losses = list(shift_losses)
        if shift != "guided" and placement != "inline":
            raise ValueError(f"shift: {shift!r} defines the time point of the inline placement; got placement {placement!r}")
        if shift in ("losses", "sequential") and not shift_losses:
            raise ValueError(f"shift_losses: shift={shift!r} needs a list of (loss, eta2) pairs")
        for k, pair in enumerate(shift_losses):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and callable(pair[0]) and math.isfinite(float(pair[1])) and float(pair[1]) >= 0):
                raise ValueError(f"shift_losses[{k}]: expected (loss, eta2 >= 0), got {pair!r}")
        if getattr(predictor, "conditions", None) and condition is None:
            raise ValueError(f"condition: the predictor is conditional on {predictor.conditions}; pass their labels")
        self.predictor = predictor
        self.omega0 = float(omega0)
        self.placement = placement
        self.condition = condition
        self.shift = shift
        self.shift_losses = [(loss, float(e)) for loss, e in shift_losses]
        self.predictor_calls = 0
        self.extra_model_calls = 0

    @property
    def update_mode(self) -> str | None:
        """``"displace"`` under the inline placement (``x_prev <- x_prev + omega_t TLS(x', t)``), else None."""
        return "displace" if self.placement == "inline" else None

    # ------------------------------------------------------------------ helpers
    def omega(self, abar: float) -> float:
        """``omega0 * (1 - abar)``."""
        return self.omega0 * (1.0 - abar)

    def tls(self, x: torch.Tensor, t: int, state: StepState) -> torch.Tensor:
        self.predictor_calls += 1
        return time_linked_score(self.predictor, x, t, select_condition(self.condition, state))

    def setup(self, run: RunContext) -> None:
        check_predictor(self.predictor, run.sampler, run.device)
        self.predictor_calls = 0
        self.extra_model_calls = 0
        if self.placement == "inline" and self.shift == "guided":
            plugins = list(run.plugins)
            if any(p is self for p in plugins):
                later = plugins[run.position_of(self) + 1:]
                movers = [type(p).__name__ for p in later if p.update_mode is not None]
                if movers:
                    raise ValueError(
                        f"plugins: TemporalAlignmentGuidance(placement='inline') must come after the guidance plugins it shifts by; move it after {movers}"
                    )

    def needs_grad(self, state: StepState) -> bool:
        return self.omega0 > 0 and self.placement == "inline" and self.shift in ("losses", "sequential")

    # ------------------------------------------------------------------ placements
    def before_model(self, state: StepState) -> None:
        if self.omega0 == 0 or self.placement != "pre":
            return
        w = self.omega(state.coeffs.abar_t)
        if w == 0:
            return
        state.x_t = state.x_t + w * self.tls(state.x_t, state.t, state)

    def update(self, state: StepState) -> None:
        if self.omega0 == 0 or self.placement != "inline":
            return
        w = self.omega(state.coeffs.abar_t)
        if w == 0:
            return
        x_point = self._time_point(state)
        state.x_prev = state.x_prev + w * self.tls(x_point, state.t, state)

    def after_step(self, state: StepState) -> None:
        if self.omega0 == 0 or self.placement != "post" or state.t_prev < 0:
            return
        w = self.omega(state.coeffs.abar_prev)
        if w == 0:
            return
        state.x_prev = state.x_prev + w * self.tls(state.x_prev, state.t_prev, state)

    def _time_point(self, state: StepState) -> torch.Tensor:
        x = state.x_t.detach()
        if self.shift == "none":
            return x
        if self.shift == "guided":
            unguided = state.mu.detach() if state.noise is None else state.mu.detach() + state.sigma * state.noise
            return x + (state.x_prev.detach() - unguided)
        if self.shift == "losses":
            for loss, eta2 in self.shift_losses:
                g, _ = state.loss_gradient(loss)
                x = x - eta2 * g
            return x
        # sequential shift (Prop. B.2): g_1 at x_t (shared with the guidance), then x0_hat recomputed at each shifted point
        for k, (loss, eta2) in enumerate(self.shift_losses):
            g = state.loss_gradient(loss)[0] if k == 0 else self._gradient_at(state, x, loss)
            x = x - eta2 * g
        return x

    def _gradient_at(self, state: StepState, x: torch.Tensor, loss: Callable) -> torch.Tensor:
        self.extra_model_calls += 1
        return state.loss_gradient_at(loss, x)[0]  # the same x0_hat the step's own loss gradient uses
