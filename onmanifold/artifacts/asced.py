"""ASCED in one plugin: the streaming detector, then TTC (or State Replacement) at ``n_c`` with its mask.

This is the one place where the detector and a correction meet. Per step, in order: the detector
(:class:`~onmanifold.artifacts.StreamingArtifactDetector`) observes, and at the start of step ``n_c`` closes its
window (``M`` of the batch, :attr:`~StreamingArtifactDetector.current`); the correction then asks its mask
source, which is this plugin's :meth:`AbnormalScoreCorrection.detected_mask`, and re-noises inside ``M_d``.
Neither of the two knows the other.

    asced = AbnormalScoreCorrection()                       # settings scaled to the run's image height
    x = DDIMSampler(schedule, 25).sample(model, shape=(3, 64, 64), num_samples=8, seed=0, plugins=[asced])
    asced.detector.results().flagged, asced.corrector.corrected

Reference: H. Cao, Z. Zhao, I. Patras, S. Gong, CVPR 2025 (arXiv 2503.16218), Alg. 1.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..sampler import RunContext, SamplerPlugin, StepState
from .config import CorrectionConfig, DetectorConfig
from .correction import StateReplacement, TrajectoryAwareCorrection
from .detector import DetectionResult, StreamingArtifactDetector
from .reference import ReferenceChangeStatistics

__all__ = ["AbnormalScoreCorrection"]

MaskTransform = Callable[[DetectionResult, Sequence[int]], torch.Tensor]


class AbnormalScoreCorrection(SamplerPlugin):
    """ASCED: :class:`StreamingArtifactDetector` followed by TTC at ``n_c`` on the detected mask.

    Usable with any eps-model the sampler accepts, e.g. a diffusers ``UNet2DModel`` through
    :func:`onmanifold.model.as_eps_model`.

    Args:
        detector: a :class:`DetectorConfig` or ``"auto"`` (:meth:`DetectorConfig.for_resolution` of the run's height).
        correction: a :class:`CorrectionConfig` or ``"auto"`` (:meth:`CorrectionConfig.for_resolution`); its
            correction step must be the step where the detector's window closes (same ``tc_frac``, ``tc_rule``).
        method: ``"ttc"`` (ASCED) or ``"state_replacement"`` (the baseline, from ``x0_hat_{n_d}``).
        seed: base seed of the correction noise (default: the run's).
        mask_transform: ``(result, sample_indices) -> M`` replaces the detected ``M`` handed to the correction
            (controls such as a moved or a whole-image mask); default: ``result.mask``.
        reference: the detector's :class:`~onmanifold.artifacts.ReferenceChangeStatistics` for
            ``normalization="reference"`` (beyond the paper, docs/methods/asced.md#V1).

    After a run: ``detector.results()`` (the detection) and ``corrector.corrected`` / ``corrector.corrected_area``.
    """

    def __init__(self, detector: DetectorConfig | str = "auto", correction: CorrectionConfig | str = "auto", method: str = "ttc",
                 seed: int | None = None, mask_transform: MaskTransform | None = None,
                 reference: ReferenceChangeStatistics | None = None) -> None:
        if method not in ("ttc", "state_replacement"):
            raise ValueError(f"method: expected 'ttc' or 'state_replacement', got {method!r}")
        if mask_transform is not None and not callable(mask_transform):
            raise TypeError(f"mask_transform: expected a callable (result, sample_indices) -> mask, got {type(mask_transform).__name__}")
        self.detector = StreamingArtifactDetector(detector, reference)
        if method == "ttc":
            self.corrector = TrajectoryAwareCorrection(self.detected_mask, correction, seed)
        else:
            td_frac = detector.td_frac if isinstance(detector, DetectorConfig) else DetectorConfig.td_frac
            self.corrector = StateReplacement(self.detected_mask, correction, seed, td_frac=td_frac)
        self.method = method
        self.mask_transform = mask_transform

    def detected_mask(self, sample_indices: Sequence[int]) -> torch.Tensor:
        """The correction's mask source: ``M`` of the batch the detector closed at ``n_c`` (through ``mask_transform``)."""
        res = self.detector.current
        if res is None:
            raise RuntimeError("detected_mask: the detector has not closed its window at the correction step")
        if list(res.sample_indices) != list(sample_indices):
            raise RuntimeError(f"detected_mask: the detector's batch {res.sample_indices[:3]}... differs from {list(sample_indices)[:3]}...")
        return res.mask if self.mask_transform is None else self.mask_transform(res, sample_indices)

    def setup(self, run: RunContext) -> None:
        self.detector.setup(run)
        self.corrector.setup(run)
        if self.detector.n_c != self.corrector.n_c:
            raise ValueError(f"correction.tc_frac: the correction step n_c = {self.corrector.n_c} must be where the detector's window "
                             f"closes (n_c = {self.detector.n_c}); give both configs the same tc_frac and tc_rule")

    def before_model(self, state: StepState) -> None:
        self.detector.before_model(state)
        self.corrector.before_model(state)

    def after_step(self, state: StepState) -> None:
        self.detector.after_step(state)
        self.corrector.after_step(state)

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        self.detector.finish(x0, sample_indices)
        self.corrector.finish(x0, sample_indices)
