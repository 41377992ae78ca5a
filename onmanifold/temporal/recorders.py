"""The time-gap diagnostic (TAG paper, Def. F.1), usable with any method.

    TG = (1 / |S|) sum_{t in S} | argmax_k phi(x_t)_k - t |

over the visited sampler times ``S`` (training-step units), averaged over samples, plus the per-step
curve ``TG_t`` (mean and standard deviation over samples). Recorded on the state *entering* each step,
:attr:`~onmanifold.sampler.StepState.x_entering` (after any injected corruption; before TAG's ``pre``
move or any other correction of that step, so a correction never grades itself). A diagnostic, not a quality metric (the paper says so); grade TAG
runs with an independently trained predictor as well, since TAG ascends the very predictor that
scores the gap.
"""

from __future__ import annotations

from typing import Any

import torch

from ..sampler import DDIMSampler, SamplerPlugin, StepState, RunContext
from .guidance import check_predictor, select_condition
from .predictor import input_dtype

__all__ = ["TimeGapRecorder"]


class TimeGapRecorder(SamplerPlugin):
    """Record ``|argmax_k phi(x)_k - t|`` per sample at every step (memory: a few numbers per step).

    Args:
        predictor: a time predictor ``(x, cond) -> (B, T)`` logits.
        condition: labels of a conditional predictor (``(N, K)``, one row per sample of the run).

    It grades :attr:`~onmanifold.sampler.StepState.x_entering`, so its place in the plugin list does not
    matter: corruptions (``perturb`` point) are included, TAG's ``pre`` move is not. What it reports
    (:meth:`curve`, :meth:`mean`, :meth:`per_sample`) is of the last run (reset in :meth:`setup`).
    """

    def __init__(self, predictor: Any, condition: Any = None) -> None:
        self.predictor = predictor
        self.condition = condition
        self.reset()

    def reset(self) -> None:
        self._sum: dict[int, float] = {}
        self._sumsq: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._per_sample: dict[int, list[float]] = {}

    def setup(self, run: RunContext) -> None:
        check_predictor(self.predictor, run.sampler, run.device)
        self.reset()  # the curve of this run only

    @torch.no_grad()
    def before_model(self, state: StepState) -> None:
        x = state.x_entering  # after the perturbations, before any correction of this step
        logits = self.predictor(x.to(input_dtype(self.predictor, x)), select_condition(self.condition, state))
        gap = (logits.argmax(dim=1) - state.t).abs().double().cpu()  # a few numbers per step: one transfer
        self._sum[state.t] = self._sum.get(state.t, 0.0) + float(gap.sum())
        self._sumsq[state.t] = self._sumsq.get(state.t, 0.0) + float((gap**2).sum())
        self._count[state.t] = self._count.get(state.t, 0) + gap.numel()
        for i, g in zip(state.sample_indices, gap.tolist()):
            self._per_sample.setdefault(i, []).append(g)

    def curve(self) -> list[dict]:
        """Per visited step (descending ``t``): ``{"t", "mean", "sd", "n"}``."""
        out = []
        for t in sorted(self._count, reverse=True):
            n = self._count[t]
            m = self._sum[t] / n
            var = max(self._sumsq[t] / n - m * m, 0.0)
            out.append({"t": t, "mean": m, "sd": var**0.5, "n": n})
        return out

    def mean(self) -> float:
        """TG: the mean over steps of the per-step mean gap (each step weighs the same)."""
        c = self.curve()
        if not c:
            raise RuntimeError("TimeGapRecorder: nothing recorded yet")
        return sum(r["mean"] for r in c) / len(c)

    def per_sample(self) -> dict[int, float]:
        """Each sample's gap averaged over the steps it visited."""
        return {i: sum(v) / len(v) for i, v in self._per_sample.items()}
