"""Diffusion Posterior Sampling (DPS), the loss-guidance baseline.

    x_{t-1} = mu + sigma_t z - zeta * grad_{x_t} L(x0_hat(x_t))

with ``L_b = ||y_b - A(x0_hat_b)||_2`` for inverse problems (or any per-sample loss), the gradient
taken through the network (a full VJP). Guided at every step including the last (``sigma = 0``), as
in the DPS code (docs/methods/dsg.md#D10). Optional guidance time window (docs/methods/dsg.md#D19) and
time travel (docs/methods/dsg.md#D20), shared with DSG (:mod:`onmanifold.guidance.steps`).

References:
    H. Chung, J. Kim, M. T. Mccann, M. L. Klasky, J. C. Ye. "Diffusion Posterior Sampling for General
    Noisy Inverse Problems". ICLR 2023.
"""

from __future__ import annotations

import math
from typing import Callable

from ..sampler import RunContext, SamplerPlugin, StepState
from .steps import check_guidance_window, check_time_travel, check_time_travel_run, in_window, travel, window_message

__all__ = ["DiffusionPosteriorSampling"]


class DiffusionPosteriorSampling(SamplerPlugin):
    """DPS: subtract ``zeta * grad_{x_t} L`` from the sampler's step.

    Args:
        loss: per-sample loss on ``x0_hat`` (:mod:`onmanifold.losses`).
        zeta: step size ``zeta >= 0`` (official configs: 0.5 inpainting, 0.3 SR x4 and deblur; tune per model).
        guidance_window: ``(t_lo, t_hi)``: guide only steps whose scheduled training time lies in
            ``[t_lo, t_hi]`` (docs/methods/dsg.md#D19); None (default) guides every step. A window that
            guides no step of the run is refused when sampling starts.
        time_travel: ``r >= 1``: take every guided step ``r`` times, re-noising its output back to ``x_t``
            with the forward transition in between (docs/methods/dsg.md#D20); 1 (default) is no time travel.
    """

    update_mode = "displace"  # x_prev <- x_prev - zeta g

    def __init__(self, loss: Callable, zeta: float, guidance_window: tuple[int, int] | None = None, time_travel: int = 1) -> None:
        if isinstance(zeta, bool) or not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta >= 0):
            raise ValueError(f"zeta: expected a finite step size >= 0, got {zeta!r}")
        self.loss = loss
        self.zeta = float(zeta)
        self.guidance_window = check_guidance_window(guidance_window)
        self.time_travel = check_time_travel(time_travel)

    def setup(self, run: RunContext) -> None:
        w = self.guidance_window
        if w is not None and not any(w[0] <= t <= w[1] for t in run.sampler.timesteps):
            raise ValueError(window_message(w, run.sampler.timesteps))
        if self.time_travel > 1 and self.zeta > 0:
            check_time_travel_run(self, run)

    def is_guided(self, state: StepState) -> bool:
        """``zeta > 0`` and the step's time in the guidance window (every step without one)."""
        return self.zeta > 0 and in_window(self.guidance_window, state)

    def needs_grad(self, state: StepState) -> bool:
        return self.is_guided(state)

    def update(self, state: StepState) -> None:
        if not self.is_guided(state):
            return
        travel(state, self.time_travel, self._guide)

    def _guide(self, state: StepState) -> None:
        g, _ = state.loss_gradient(self.loss)
        state.x_prev = state.x_prev.detach() - self.zeta * g
