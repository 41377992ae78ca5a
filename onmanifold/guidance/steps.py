"""Which steps a loss guidance guides, and how often it takes them: the guidance time window and time travel.

Shared by DSG and DPS (:mod:`onmanifold.guidance.dsg`, :mod:`onmanifold.guidance.dps`).

* **Guidance time window** ``(t_lo, t_hi)``: only steps whose scheduled training time ``t`` satisfies
  ``t_lo <= t <= t_hi`` (both ends included) are guided; every other step is the plain step, with no
  gradient and no loss call (docs/methods/dsg.md#D19). The official FaceID guidance ("guide only
  ``t > 100``") is ``(101, T - 1)``.
* **Time travel** ``r`` (FreeDoM's "time-travel strategy", the official DSG style-guidance code's
  ``repeat``): a guided step is taken ``r`` times. After each take but the last, its output is
  re-noised back to the step's time with the forward transition

      x_t' = sqrt(abar_t / abar_prev) x_prev + sqrt(1 - abar_t / abar_prev) n,    n ~ N(0, I)

  and the step (network call, plain step with a fresh ``z``, guided move) is taken again from
  ``x_t'``; the last take is the step's output. ``r = 1`` is no time travel (docs/methods/dsg.md#D20).

References:
    J. Yu, Y. Wang, C. Zhao, B. Ghanem, J. Zhang. "FreeDoM: Training-Free Energy-Guided Conditional
    Diffusion Model". ICCV 2023 (time travel). L. Yang et al. "Guidance with Spherical Gaussian
    Constraint for Conditional Diffusion". ICML 2024 (time window and repeats in its non-linear setups).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..sampler import RunContext, SamplerPlugin, StepState

__all__ = ["check_guidance_window", "check_time_travel", "in_window", "window_message", "renoise", "travel", "check_time_travel_run"]


def check_guidance_window(window: Sequence[int] | None) -> tuple[int, int] | None:
    """``None`` or a pair of integers ``0 <= t_lo <= t_hi``; anything else raises ``ValueError`` naming ``guidance_window``."""
    if window is None:
        return None
    ok = (isinstance(window, (tuple, list)) and len(window) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in window))
    if not ok or window[0] < 0 or window[0] > window[1]:
        raise ValueError(f"guidance_window: expected (t_lo, t_hi), two integer training times with 0 <= t_lo <= t_hi, got {window!r}")
    return int(window[0]), int(window[1])


def check_time_travel(repeats: int) -> int:
    """An integer ``r >= 1``; anything else raises ``ValueError`` naming ``time_travel``."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"time_travel: expected an integer r >= 1 (1: no time travel), got {repeats!r}")
    return repeats


def in_window(window: tuple[int, int] | None, state: StepState) -> bool:
    """True when the step's scheduled time lies in the window (always without a window).

    The scheduled time ``sampler.timesteps[position]``, not ``state.t``: a plugin that shifts a step's
    time (TAG's baselines) does not move the step in or out of the window.
    """
    if window is None:
        return True
    t = state.sampler.timesteps[state.position]
    return window[0] <= t <= window[1]


def window_message(window: tuple[int, int], timesteps: Sequence[int]) -> str:
    return (f"guidance_window: ({window[0]}, {window[1]}) guides no step of this run (its guided steps would need t_lo <= t <= t_hi "
            f"among the times {_span(timesteps)}); widen it or drop it")


def _span(timesteps: Sequence[int]) -> str:
    ts = list(timesteps)
    return f"{ts[0]}, {ts[1]}, ..., {ts[-1]}" if len(ts) > 3 else ", ".join(str(t) for t in ts)


def renoise(state: StepState, x_prev: torch.Tensor) -> torch.Tensor:
    """The forward transition from the step's end back to its start (docs/methods/dsg.md#D20):

        x_t' = sqrt(abar_t / abar_prev) x_prev + sqrt(1 - abar_t / abar_prev) n,   n from the per-sample generators.
    """
    ratio = state.coeffs.abar_t / state.coeffs.abar_prev
    return math.sqrt(ratio) * x_prev + math.sqrt(1.0 - ratio) * state.randn_like(x_prev)


def travel(state: StepState, repeats: int, guide: Callable[[StepState], None]) -> None:
    """Take a guided step ``repeats`` times (time travel); ``guide(state)`` moves the plain ``x_prev`` it finds.

    The first take is the loop's own (its network call, its ``z``); each further take re-noises the
    previous output (:func:`renoise`), calls :meth:`StepState.reenter` (network call with a gradient,
    fresh plain step) and ``guide`` again. Random numbers come from the per-sample generators in the
    order ``n``, ``z`` per repeat (docs/methods/dsg.md#D20).
    """
    guide(state)
    for _ in range(repeats - 1):
        x_again = renoise(state, state.x_prev.detach())
        state.reenter(x_again, grad=True)
        guide(state)


def check_time_travel_run(plugin: SamplerPlugin, run: RunContext) -> None:
    """Refuse a run in which time travel would repeat only part of a step (docs/methods/dsg.md#D20).

    A repeat re-runs the network call and this plugin's move only; another plugin that changes the
    model output (``after_model``) or moves ``x_prev`` at the ``update`` point would apply to the
    first take only, so such a plugin in the same run raises ``ValueError`` naming it.
    """
    for other in run.plugins:
        if other is plugin:
            continue
        name = type(other).__name__
        if type(other).after_model is not SamplerPlugin.after_model:
            raise ValueError(f"time_travel: {name} changes the model output at after_model, which a repeated step would not redo; "
                             f"time travel runs without it (time_travel=1 to combine them)")
        if other.update_mode is not None:
            raise ValueError(f"time_travel: {name} also moves x_prev at the update point, which a repeated step would not redo; "
                             f"time travel runs without it (time_travel=1 to combine them)")
