"""The f_n curves of ASCED's phase analysis: the detector's per-step test on every step pair, recorded.

For every step pair ``(n-1, n)``, ``n = 1 .. N-1``, and every sample (:func:`~onmanifold.artifacts.detector.step_flags`):

    f_n          = |flag_n| / (H W)                 share of pixels flagged by steps 1-5, before union and filters
    f_n^filtered = |artifact_mask(flag_n)| / (H W)  the same after the component filters applied to that pair alone

The mean of ``f_n`` over samples is the paper's Fig. 7 histogram and the input of
:func:`~onmanifold.artifacts.phases.phase_boundaries`. This recorder observes only; it is independent of the
detector (which runs the test inside its window alone), so a run can record curves with or without a detector.
"""

from __future__ import annotations

import torch

from ..sampler import RunContext, SamplerPlugin, StepState
from .config import DetectorConfig
from .detector import artifact_mask, frame_of, step_flags

__all__ = ["FlagFractionMonitor"]


class FlagFractionMonitor(SamplerPlugin):
    """Records ``f_n`` (and ``f_n`` after the component filters) of every sample and step pair.

    Args:
        config: the detector settings of the per-step test (a :class:`DetectorConfig`, or ``"auto"`` for
            :meth:`DetectorConfig.for_resolution` of the run's sample height, resolved in :meth:`setup`).
        keep_flag_maps: also keep every pair's flag map (analysis against a ground-truth mask; ``N - 1`` maps per sample).

    After a run: :attr:`flag_fraction` and :attr:`flag_fraction_filtered` ``(num_samples, N-1)``, :attr:`flag_maps`
    ``(num_samples, N-1, H, W)``, all of the last run only (reset in :meth:`setup`).
    """

    def __init__(self, config: DetectorConfig | str = "auto", keep_flag_maps: bool = False) -> None:
        if not (isinstance(config, DetectorConfig) or config == "auto"):
            raise TypeError(f"config: expected a DetectorConfig or 'auto', got {type(config).__name__}")
        self.requested_config = config
        self.config: DetectorConfig | None = config if isinstance(config, DetectorConfig) else None
        self.keep_flag_maps = bool(keep_flag_maps)
        self.num_steps: int | None = None
        self._runs: dict[str, list[torch.Tensor]] = {"f": [], "f_filtered": [], "maps": []}
        self._prev: torch.Tensor | None = None
        self._batch: dict[str, list[torch.Tensor]] = {"f": [], "f_filtered": [], "maps": []}

    def setup(self, run: RunContext) -> None:
        if self.requested_config == "auto":
            self.config = DetectorConfig.for_resolution(int(run.sample_shape[-2]))
        self.num_steps = run.sampler.num_steps
        self._runs = {"f": [], "f_filtered": [], "maps": []}

    def before_model(self, state: StepState) -> None:
        if state.position == 0:
            self._prev = None
            self._batch = {"f": [], "f_filtered": [], "maps": []}

    def after_step(self, state: StepState) -> None:
        frame = frame_of(state.x0_hat, self.config, state.eps, state.coeffs.abar_t)
        if self._prev is not None:
            flag, _ = step_flags(self._prev, frame, self.config)
            self._batch["f"].append(flag.flatten(1).float().mean(1))
            self._batch["f_filtered"].append(artifact_mask(flag, self.config).flatten(1).float().mean(1))
            if self.keep_flag_maps:
                self._batch["maps"].append(flag.clone())
        self._prev = frame

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        B = len(sample_indices)
        for name in ("f", "f_filtered"):
            steps = self._batch[name]
            self._runs[name].append(torch.stack(steps, 1) if steps else torch.zeros(B, 0, device=x0.device))
        if self.keep_flag_maps:
            maps = self._batch["maps"]
            self._runs["maps"].append(torch.stack(maps, 1) if maps else torch.zeros(B, 0, *x0.shape[-2:], dtype=torch.bool, device=x0.device))
        self._prev = None

    def _run_result(self, name: str) -> torch.Tensor:
        if not self._runs[name]:
            raise RuntimeError(f"{name}: nothing sampled yet")
        return torch.cat(self._runs[name])

    @property
    def flag_fraction(self) -> torch.Tensor:
        """``f_n`` per sample, ``(num_samples, N-1)`` for ``n = 1 .. N-1``."""
        return self._run_result("f")

    @property
    def flag_fraction_filtered(self) -> torch.Tensor:
        """``f_n`` after the component filters applied to that pair's flags alone, ``(num_samples, N-1)``."""
        return self._run_result("f_filtered")

    @property
    def flag_maps(self) -> torch.Tensor:
        """Every pair's flag map ``(num_samples, N-1, H, W)`` bool (``keep_flag_maps=True``)."""
        if not self.keep_flag_maps:
            raise RuntimeError("flag_maps: the monitor was built without keep_flag_maps=True")
        return self._run_result("maps")
