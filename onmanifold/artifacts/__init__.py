"""ASCED (Cao et al., CVPR 2025): streaming artifact detection, trajectory-aware correction, phases.

One module per responsibility:

* ``config``: :class:`DetectorConfig` and :class:`CorrectionConfig` (defaults = the official code at 256x256,
  ``for_resolution(height)`` scales them);
* ``image_ops``: blur, median/MAD threshold, connected components, dilation, opening (pure functions);
* ``change``: frames, change maps, the robust threshold test and the statistics of normal change (steps 1-6);
* ``detector``: :class:`StreamingArtifactDetector` and its :class:`DetectionResult`;
* ``reference``: :class:`ReferenceChangeStatistics`, normal trajectories' change per step and pixel, for the
  normalised detector (``DetectorConfig(normalization="reference")``; beyond the paper, docs/methods/asced.md#V1);
* ``monitor``: :class:`FlagFractionMonitor`, the per-step flag fractions ``f_n`` of a run;
* ``correction``: TTC, State Replacement, Score Clipping and :class:`GroundTruthMasks` (oracle mask source);
* ``asced``: :class:`AbnormalScoreCorrection`, the one plugin that wires the detector's mask to TTC;
* ``phases``: the f_n curve's Profiling / Mutation / Refinement boundaries; ``ground_truth``: shapes ground-truth masks.
* ``calibration``: flag rates inside / outside a ground-truth mask per step and the window they choose.
"""

from .asced import AbnormalScoreCorrection
from .calibration import WindowCalibration, calibrate_window
from .config import NORMALIZATIONS, CorrectionConfig, DetectorConfig
from .correction import (
    GroundTruthMasks,
    ScoreClipping,
    StateReplacement,
    TrajectoryAwareCorrection,
    correction_generators,
    correction_noise,
    ttc_renoise,
)
from .detector import DetectionResult, StreamingArtifactDetector, artifact_mask, frame_of, step_flags
from .ground_truth import gt_artifact_mask
from .image_ops import dilate_mask, filter_components
from .monitor import FlagFractionMonitor
from .phases import monitored_phases, phase_boundaries, phase_of_steps, plot_phase_histogram
from .reference import ReferenceChangeStatistics

__all__ = [
    "calibrate_window",
    "WindowCalibration",
    "DetectorConfig",
    "CorrectionConfig",
    "StreamingArtifactDetector",
    "DetectionResult",
    "ReferenceChangeStatistics",
    "NORMALIZATIONS",
    "FlagFractionMonitor",
    "TrajectoryAwareCorrection",
    "StateReplacement",
    "ScoreClipping",
    "GroundTruthMasks",
    "AbnormalScoreCorrection",
    "correction_generators",
    "correction_noise",
    "ttc_renoise",
    "frame_of",
    "step_flags",
    "artifact_mask",
    "filter_components",
    "dilate_mask",
    "gt_artifact_mask",
    "phase_boundaries",
    "phase_of_steps",
    "monitored_phases",
    "plot_phase_histogram",
]
