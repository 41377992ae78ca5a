"""ASCED (Cao et al., CVPR 2025): streaming artifact detection, trajectory-aware correction, phases.

``detector``: :class:`StreamingArtifactDetector` and :class:`ASCEDConfig`; ``correction``: TTC, State
Replacement, Score Clipping and the one-plugin :class:`AbnormalScoreCorrection`; ``phases``: the f_n curve
and its Profiling / Mutation / Refinement boundaries; ``ground_truth``: shapes ground-truth masks.
"""

from .correction import (
    AbnormalScoreCorrection,
    GroundTruthMasks,
    ScoreClipping,
    StateReplacement,
    TrajectoryAwareCorrection,
    correction_generators,
    ttc_renoise,
)
from .detector import ASCEDConfig, DetectionResult, StreamingArtifactDetector, dilate_mask, filter_components, frame_of, step_flags
from .ground_truth import gt_artifact_mask
from .phases import phase_boundaries, phase_of_steps, plot_phase_histogram

__all__ = [
    "ASCEDConfig",
    "StreamingArtifactDetector",
    "DetectionResult",
    "TrajectoryAwareCorrection",
    "StateReplacement",
    "ScoreClipping",
    "GroundTruthMasks",
    "AbnormalScoreCorrection",
    "correction_generators",
    "ttc_renoise",
    "frame_of",
    "step_flags",
    "filter_components",
    "dilate_mask",
    "gt_artifact_mask",
    "phase_boundaries",
    "phase_of_steps",
    "plot_phase_histogram",
]
