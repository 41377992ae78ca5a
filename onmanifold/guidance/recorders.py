"""The sphere-deviation recorder (DSG's manifold-deviation diagnostic), usable with any method.

    rho_i = ||x_{t-1} - mu_i|| / (sqrt(n) sigma_i)      per sample, on every step with sigma_i > 0

Unguided sampling gives ``rho ~ 1 +- 1/sqrt(2n)``; DSG gives exactly 1; DPS gives > 1.
(Yang et al., ICML 2024, section 4; docs/methods/dsg.md#R5.)
"""

from __future__ import annotations

import math

import torch

from ..sampler import RunContext, SamplerPlugin, StepState

__all__ = ["SphereDeviationRecorder"]


class SphereDeviationRecorder(SamplerPlugin):
    """Records ``rho`` per step (observes only; put it after the guidance plugins).

    After sampling, :meth:`curve` gives per step ``(index, t, mean, std, count)`` pooled over all
    batches, and :attr:`values` the raw per-sample ratios by step index, of the last run (reset in
    :meth:`setup`).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.values: dict[int, list[torch.Tensor]] = {}
        self.t_of: dict[int, int] = {}

    def setup(self, run: RunContext) -> None:
        self.reset()

    def after_step(self, state: StepState) -> None:
        if state.sigma <= 0:
            return
        n = state.x_prev[0].numel()
        rho = (state.x_prev - state.mu.detach()).flatten(1).norm(dim=1) / (math.sqrt(n) * state.sigma)
        self.values.setdefault(state.index, []).append(rho.double())
        self.t_of[state.index] = state.t

    def curve(self) -> list[dict]:
        out = []
        for i in sorted(self.values, reverse=True):
            v = torch.cat(self.values[i])
            out.append({"index": i, "t": self.t_of[i], "mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0, "count": int(v.numel())})
        return out

    def all_ratios(self) -> torch.Tensor:
        """Every recorded ratio, concatenated."""
        return torch.cat([torch.cat(v) for v in self.values.values()]) if self.values else torch.empty(0)
