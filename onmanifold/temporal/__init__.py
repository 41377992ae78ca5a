"""Temporal Alignment Guidance (Park, Jung, Bae, Yun, arXiv 2510.11057, 2025) and its baselines.

* :mod:`~onmanifold.temporal.predictor` — time predictors ``p_phi(t | x)``, the time-linked score, the exact oracle.
* :mod:`~onmanifold.temporal.guidance` — :class:`TemporalAlignmentGuidance` (placements pre / post / inline).
* :mod:`~onmanifold.temporal.recorders` — :class:`TimeGapRecorder`, the time-gap diagnostic.
* :mod:`~onmanifold.temporal.baselines` — Epsilon Scaling, TCS, Time-Shift Sampler, Langevin corrector.
* :mod:`~onmanifold.temporal.corruptions` — per-step noise injection and linear drift (the paper's perturbations).
* :mod:`~onmanifold.temporal.sweep` — the omega0 grid and the validation-seed selection rule.
"""

from .baselines import EpsilonScaling, LangevinCorrector, TimeCorrectionSampler, TimeShiftSampler, image_variance
from .corruptions import LinearDrift, NoiseInjection
from .guidance import TemporalAlignmentGuidance
from .predictor import (
    ExactTimePosterior,
    TimePredictor,
    load_time_predictor,
    predictor_accuracy,
    time_linked_score,
    time_linked_score_closed_form,
)
from .recorders import TimeGapRecorder
from .sweep import choose_omega, omega_grid

__all__ = [
    "TemporalAlignmentGuidance",
    "TimePredictor",
    "ExactTimePosterior",
    "time_linked_score",
    "time_linked_score_closed_form",
    "load_time_predictor",
    "predictor_accuracy",
    "TimeGapRecorder",
    "EpsilonScaling",
    "TimeCorrectionSampler",
    "TimeShiftSampler",
    "LangevinCorrector",
    "image_variance",
    "NoiseInjection",
    "LinearDrift",
    "omega_grid",
    "choose_omega",
]
