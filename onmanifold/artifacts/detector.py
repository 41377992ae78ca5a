"""ASCED's streaming artifact detector: abnormal step-to-step changes of ``x0_hat`` (Cao et al., CVPR 2025).

The detector watches the clean-image estimate of every DDIM step and flags the pixels whose change between
adjacent steps is abnormally large *relative to the rest of the same image*. With ``n`` = steps completed
(``n = 0`` the noisiest), frame ``n`` is, in grey levels,

    F_n = 127.5 * (x0_hat_n + 1)                               (quantity="x0", the default, as the code)
    F_n = 127.5 * (-sqrt((1 - abar_t) / abar_t) * eps_theta)   (quantity="weighted_score" = w(t) s, ablation)
    F_n = trunc(clamp(127.5 * (x0_hat_n + 1), 0, 255))         (quantize=True, uint8 as the official code)

and for each step pair ``(n-1, n)`` of one sample (statistics never pooled across the batch):

    1. D   = |F_n - F_{n-1}|                                   (C, H, W)
    2. D  <- Gaussian blur with sigma over H, W                (image_ops.gaussian_blur_reflect)
    3. med = median(D), mad = median(|D - med|)                (over all C H W values)
    4. thr = max(med + k * 1.4826 * mad, a_min)                (robust z-test, k = 3)
    5. flag(i, j) = max_c D(c, i, j) > thr
    6. inside the window n_d < n < n_c:  U <- U or flag,  Z <- max(Z, (max_c D - med) / (1.4826 mad + 1e-6))

Finalisation at ``n = n_c``: 4-connected components of ``U`` kept iff ``A_min < area < A_max`` (strict) and the
component contains a full ``w x w`` block; ``M`` = their union; the image is flagged iff ``M`` is non-empty.
``Z`` (the running robust z-map) is the pixel score used for AUROC. The correction blends inside ``M`` dilated by
``r`` (:meth:`DetectionResult.dilated`, :class:`~onmanifold.artifacts.CorrectionConfig`). Steps 1-9 are the
official code's ``get_artifact_mask`` (docs/methods/asced.md#R3; the project's decisions D1-D9 there); settings in
:class:`~onmanifold.artifacts.DetectorConfig`.

Beyond the paper (docs/methods/asced.md#V1): with ``DetectorConfig(normalization="reference")`` steps 3-6 compare each
pixel's change ``D_n(i, j) = max_c D(c, i, j)`` with the median ``mu_n(i, j)`` and MAD ``s_n(i, j)`` of normal
trajectories' change at that step and pixel (:class:`~onmanifold.artifacts.ReferenceChangeStatistics`), with
``"batch"`` with those of the batch's samples (pooled across the batch, which the paper's test never does):

    thr(i, j) = max(mu_n(i, j) + k * 1.4826 * s_n(i, j), a_min),   flag(i, j) = D_n(i, j) > thr(i, j),
    Z <- max(Z, (D_n(i, j) - mu_n(i, j)) / (1.4826 s_n(i, j) + 1e-6))

same ``k``, window, union, component filters and z-map semantics. With ``mu_n = med`` and ``s_n = mad`` of the image
the variant is the paper's test, bit for bit. The pieces (frames, change maps, the threshold test) live in
:mod:`onmanifold.artifacts.change`.

Streaming: per sample only the previous frame, ``U`` and ``Z`` are kept, and only inside the window, so the
memory does not grow with the number of steps (docs/methods/asced.md#D8). The per-step fractions ``f_n`` of every step (the phases) are
recorded by :class:`~onmanifold.artifacts.FlagFractionMonitor`, not here.

References:
    H. Cao, Z. Zhao, I. Patras, S. Gong. "Temporal Score Analysis for Understanding and Correcting
    Diffusion Artifacts". CVPR 2025, pp. 7707-7716 (arXiv 2503.16218). Official code: YuCao16/ASCED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..sampler import RunContext, SamplerPlugin, StepState
from .change import MIN_NORMAL_SAMPLES, change_map, frame_of, normal_change_statistics, pixel_change, threshold_test
from .config import DetectorConfig, check_window
from .image_ops import dilate_mask, filter_components, robust_median_mad
from .reference import ReferenceChangeStatistics

__all__ = ["StreamingArtifactDetector", "DetectionResult", "frame_of", "step_flags", "artifact_mask"]


def step_flags(f_prev: torch.Tensor, f_cur: torch.Tensor, config: DetectorConfig,
               normal: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-6 of one step pair: ``(flag (B, H, W) bool, z (B, H, W) float64)`` (module docstring).

    ``config.normalization`` chooses the centre and spread: ``"per-image"`` the image's ``(med, mad)`` over all its
    ``C H W`` change values (the paper's test); ``"batch"`` the per-pixel median and MAD over the batch's samples
    (at least 3); ``"reference"`` the given ``normal = (mu_n, s_n)``, each ``(H, W)``
    (:meth:`ReferenceChangeStatistics.of_pair`). ``z = (max_c D - centre) / (1.4826 spread + 1e-6)`` is the robust
    z-map (the AUROC score).
    """
    d = change_map(f_prev, f_cur, config)
    dmax = pixel_change(d)
    if config.normalization == "per-image":
        if normal is not None:
            raise ValueError("normal: the per-image test compares with the image's own median and MAD; give normal only "
                             "with config.normalization='reference'")
        med, mad = robust_median_mad(d)
        return threshold_test(dmax, med[:, None, None], mad[:, None, None], config.k, config.a_min)
    if config.normalization == "batch":
        if normal is not None:
            raise ValueError("normal: normalization 'batch' takes the statistics from the batch; give normal only with 'reference'")
        if dmax.shape[0] < MIN_NORMAL_SAMPLES:
            raise ValueError(f"config.normalization: 'batch' takes the median and MAD over the batch's samples and needs at least "
                             f"{MIN_NORMAL_SAMPLES} per batch, got {dmax.shape[0]}; sample larger batches or use 'reference'")
        normal = normal_change_statistics(dmax, config.pool_pixels)
    elif normal is None:
        raise ValueError("normal: config.normalization='reference' compares with normal trajectories' (median, MAD) of the "
                         "step pair: pass ReferenceChangeStatistics.of_pair(n)")
    center, scale = normal
    if tuple(center.shape) != tuple(dmax.shape[1:]) or tuple(scale.shape) != tuple(dmax.shape[1:]):
        raise ValueError(f"normal: expected a median and MAD of shape {tuple(dmax.shape[1:])}, got {tuple(center.shape)} and {tuple(scale.shape)}")
    return threshold_test(dmax, center, scale, config.k, config.a_min)


def artifact_mask(union: torch.Tensor, config: DetectorConfig) -> torch.Tensor:
    """Steps 7-9: ``M``, the components of ``union`` (B, H, W) inside the area band with a full ``w x w`` block."""
    return filter_components(union, config.area_min, config.area_max, config.min_width)


@dataclass
class DetectionResult:
    """Detector output for a batch or a run (all indexed like ``sample_indices``)."""

    sample_indices: list[int]
    mask: torch.Tensor  # (B, H, W) bool, M
    union: torch.Tensor  # (B, H, W) bool, U before the component filters
    z_map: torch.Tensor  # (B, H, W) float32 running robust z-map over the window (0 if the window is empty)

    @property
    def flagged(self) -> torch.Tensor:
        """Image-level decision ``M != empty`` (B,) bool."""
        return self.mask.flatten(1).any(dim=1)

    def dilated(self, radius: int) -> torch.Tensor:
        """``M_d``: ``M`` dilated by a ``(2r+1)`` box (the region TTC re-noises)."""
        return dilate_mask(self.mask, radius)

    @classmethod
    def concatenate(cls, results: Sequence["DetectionResult"]) -> "DetectionResult":
        """Batches of one run, in order, as one result."""
        if not results:
            raise ValueError("results: expected at least one batch")
        cat = lambda name: torch.cat([getattr(r, name) for r in results])  # noqa: E731
        return cls(sum((list(r.sample_indices) for r in results), []), cat("mask"), cat("union"), cat("z_map"))


class StreamingArtifactDetector(SamplerPlugin):
    """ASCED's detector as an ``after_step`` observer (module docstring).

    Args:
        config: a :class:`DetectorConfig`, or ``"auto"`` for :meth:`DetectorConfig.for_resolution` of the run's
            sample height (resolved in :meth:`setup`, once per run; with a ``reference``, its
            ``normalization="reference"`` and the reference's ``pool_pixels``).
        reference: the :class:`ReferenceChangeStatistics` of ``normalization="reference"`` (beyond the paper,
            docs/methods/asced.md#V1); moved to the run's device once, in :meth:`setup`. Required by that
            normalization and refused by the others.

    The detector closes its window at the start of step ``n_c`` (or at the end of the batch if the window never
    closes): from then on :attr:`current` holds the batch's :class:`DetectionResult` (what
    :class:`~onmanifold.artifacts.AbnormalScoreCorrection` hands to TTC). After sampling, :meth:`results` holds
    the run's batches, concatenated; :meth:`setup` starts a new run (results are never accumulated across runs).
    Without a sampler, :meth:`begin`, :meth:`observe` and :meth:`finalize` run it on given frames.

    Refused with a ``ValueError`` naming the setting: images too small for the config's blur or components
    (:meth:`DetectorConfig.check_image_size`), a window outside the run's trajectory
    (:func:`~onmanifold.artifacts.config.check_window`), a reference that does not describe the run.
    """

    def __init__(self, config: DetectorConfig | str = "auto", reference: ReferenceChangeStatistics | None = None) -> None:
        if not (isinstance(config, DetectorConfig) or config == "auto"):
            raise TypeError(f"config: expected a DetectorConfig or 'auto', got {type(config).__name__}")
        if reference is not None and not isinstance(reference, ReferenceChangeStatistics):
            raise TypeError(f"reference: expected a ReferenceChangeStatistics or None, got {type(reference).__name__}")
        self.requested_config = config
        self.config: DetectorConfig | None = config if isinstance(config, DetectorConfig) else None
        self.reference = reference
        if self.config is not None:
            self._check_normalization(self.config)
        self.n_d = self.n_c = self.num_steps = None
        self._batches: list[DetectionResult] = []
        self._start_batch([])

    def _check_normalization(self, config: DetectorConfig) -> None:
        if config.normalization == "reference" and self.reference is None:
            raise ValueError("reference: config.normalization='reference' compares each pixel's change with normal trajectories; "
                             "pass reference=ReferenceChangeStatistics.from_real_data(...)")
        if config.normalization != "reference" and self.reference is not None:
            raise ValueError(f"reference: given, but config.normalization is {config.normalization!r}; set normalization='reference' "
                             "to use it")

    # ------------------------------------------------------------------ lifecycle
    def setup(self, run: RunContext) -> None:
        if len(run.sample_shape) < 3:
            raise ValueError(f"sample_shape: the detector watches images (channels, height, width), got {tuple(run.sample_shape)}")
        height, width = int(run.sample_shape[-2]), int(run.sample_shape[-1])
        if self.requested_config == "auto":
            extra = {} if self.reference is None else dict(normalization="reference", pool_pixels=self.reference.config.pool_pixels)
            self.config = DetectorConfig.for_resolution(height, **extra)
        self._check_normalization(self.config)
        self.config.check_image_size(height, width)
        self.num_steps = run.sampler.num_steps
        self.n_d, self.n_c = self.config.steps_of(run.sampler)
        check_window(self.n_d, self.n_c, self.num_steps, explicit=not self.config.is_default_window)
        if self.reference is not None:
            self.reference.check_run(self.config, self.num_steps, (self.n_d, self.n_c), (height, width), run.sampler.timesteps)
            self.reference = self.reference.to(run.device)
        self._batches = []
        self._start_batch([])

    def begin(self, num_steps: int, sample_indices: Sequence[int] = (), config: DetectorConfig | None = None) -> None:
        """Start a batch by hand (frames fed to :meth:`observe`, no sampler); ``tc_rule="fraction"`` only."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps: expected an integer >= 2, got {num_steps!r}")
        if config is not None:
            self.config = config
        if self.config is None:
            raise ValueError("config: begin() needs a DetectorConfig (the detector was built with 'auto')")
        if self.config.tc_rule != "fraction":
            raise ValueError("config.tc_rule: begin() computes n_c from tc_frac only; use a sampler for 'alpha_bar'")
        self._check_normalization(self.config)
        self.num_steps = num_steps
        self.n_d, self.n_c = self.config.window(num_steps)
        check_window(self.n_d, self.n_c, num_steps, explicit=not self.config.is_default_window)
        self._start_batch(sample_indices)

    def _start_batch(self, sample_indices: Sequence[int]) -> None:
        self.prev_frame: torch.Tensor | None = None
        self.union: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.current: DetectionResult | None = None
        self._indices = list(sample_indices)
        self._shape: tuple[int, int, int] | None = None
        self._last_n = -1

    def before_model(self, state: StepState) -> None:
        if state.position == 0:
            self._start_batch(state.sample_indices)
        if state.position == self.n_c:
            self.finalize()

    def after_step(self, state: StepState) -> None:
        self.observe(state.x0_hat, state.position, eps=state.eps, abar_t=state.coeffs.abar_t)

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        self._batches.append(self.current if self.current is not None else self.finalize())

    # ------------------------------------------------------------------ streaming core
    def observe(self, x0_hat: torch.Tensor, n: int, eps: torch.Tensor | None = None, abar_t: float | None = None) -> None:
        """Observe frame ``n`` (frames arrive in order ``0, 1, 2, ...`` within a batch): inside the window, steps 1-6
        on the pair ``(n-1, n)``; the frame is kept as the next pair's previous frame while ``n_d <= n < n_c``."""
        if self.config is None or self.n_c is None:
            raise RuntimeError("observe: call begin() or run the detector in a sampler first")
        if n != self._last_n + 1:
            raise ValueError(f"n: frames must arrive in order, expected {self._last_n + 1}, got {n}")
        if x0_hat.dim() != 4:
            raise ValueError(f"x0_hat: expected a (batch, channels, height, width) frame, got shape {tuple(x0_hat.shape)}")
        if self._shape is None:  # the batch's first frame: the images must fit the config and the reference (setup checks a run's)
            self.config.check_image_size(int(x0_hat.shape[-2]), int(x0_hat.shape[-1]))
            if self.reference is not None:
                self.reference.check_run(self.config, self.num_steps, (self.n_d, self.n_c), tuple(x0_hat.shape[-2:]))
                self.reference = self.reference.to(x0_hat.device)
        self._last_n = n
        self._shape = (int(x0_hat.shape[0]), int(x0_hat.shape[-2]), int(x0_hat.shape[-1]))
        self._device = x0_hat.device
        if not (self.n_d <= n < self.n_c):
            return
        frame = frame_of(x0_hat, self.config, eps, abar_t)
        if self.prev_frame is not None and n > self.n_d:
            normal = self.reference.of_pair(n) if self.config.normalization == "reference" else None
            flag, z = step_flags(self.prev_frame, frame, self.config, normal)
            self.union = flag if self.union is None else (self.union | flag)
            self.z = z if self.z is None else torch.maximum(self.z, z)
        self.prev_frame = frame

    def finalize(self) -> DetectionResult:
        """Steps 7-9 on the window's union; sets and returns :attr:`current` (idempotent within a batch)."""
        if self.current is not None:
            return self.current
        if self._shape is None:
            raise RuntimeError("finalize: no frame observed yet in this batch")
        union = self.union if self.union is not None else torch.zeros(self._shape, dtype=torch.bool, device=self._device)
        z = self.z.float() if self.z is not None else torch.zeros(self._shape, device=self._device)
        self.current = DetectionResult(list(self._indices), artifact_mask(union, self.config), union.clone(), z)
        return self.current

    def results(self) -> DetectionResult:
        """The last run's result: every batch, concatenated in sampling order."""
        if not self._batches:
            raise RuntimeError("results: nothing sampled yet")
        return DetectionResult.concatenate(self._batches)
