"""ASCED's Trajectory-aware Targeted Correction (TTC) and its baselines (Cao et al., CVPR 2025).

TTC, once, at step ``n_c`` *before the model call*, for every sample whose mask ``M`` is non-empty:

    x_re    = sqrt(abar_{t_{n_c}}) (x0' + gamma xi) + sqrt(1 - abar_{t_{n_c}}) eps,     xi, eps ~ N(0, I) fresh
    x_{n_c} <- M_d * x_re + (1 - M_d) * x_{n_c}                                         (hard binary blend)

with ``M_d`` = ``M`` dilated by an ``r``-pixel box and ``x0' = x0_hat_{n_c - 1}``, the previous step's clean
estimate (the official code's ``reverse_step = 1``, no extra network call). Outside ``M_d`` the state is
untouched bit for bit. ``gamma xi`` is *added* to ``x0'`` (the printed Eq. 6 multiplies; docs/methods/asced.md#D11). ``gamma = 0`` by
default (code). Settings: :class:`~onmanifold.artifacts.CorrectionConfig`.

Why "trajectory-aware": DDIM with eta = 0 gives ``x_{n_c} = sqrt(abar) x0_hat_{n_c-1} + sqrt(1 - abar)
eps_hat_{n_c-1}`` exactly, so inside the mask TTC keeps the current clean estimate and only swaps the model's
noise component for fresh noise. With ``M_d = 1``, ``gamma = 0`` and ``eps := eps_hat_{n_c-1}`` it is the
identity (tested).

The mask comes from a *mask source*, a callable ``sample_indices -> M (B, H, W) bool`` asked once per batch
at ``n_c``: :class:`GroundTruthMasks` (oracle + TTC), or the detector's mask, which
:class:`~onmanifold.artifacts.AbnormalScoreCorrection` hands over (the corrections never reach into the detector).

Baselines:

* :class:`StateReplacement`: the same re-noising with ``x0' = x0_hat_{n_d}`` ("before the artifact appeared";
  the code's ``reverse_step = n_c - n_d``), ``replace_from`` selects another frame.
* :class:`ScoreClipping` (the paper names it, no formula; project definition): for ``n_d < n <= n_c``, every
  sample, no mask: ``Delta = x0_hat_n - x0_hat_{n-1}``, ``c = max(med + k 1.4826 mad, a_min) / 127.5`` of
  ``127.5 |Delta|``, ``x0_hat_n <- x0_hat_{n-1} + clamp(Delta, -c, c)``, then ``eps_hat`` and the step mean
  are re-derived from it.
* Oracle + TTC: TTC with a ground-truth mask (:class:`GroundTruthMasks`) instead of the detector's.

Project decisions (docs/methods/asced.md#D12, docs/methods/asced.md#D13): eta at the correction step ``eta_c = 0`` (ablation 1; it is applied to the whole batch's step
``n_c``, as the sampler's ``sigma`` is one number per step; the override is written into ``state.coeffs`` and is
lost if a later plugin changes ``state.t`` at the same step). Correction noise: ``xi`` then ``eps`` drawn for
every sample from its own generator seeded by ``(seed, sample index, "asced-correction")``, separate from the
trajectory's, so all TTC variants share ``eps`` and unflagged samples equal plain DDIM bit for bit; ``seed`` is
the run's (``0`` when the run draws from one batch ``generator`` and has no seed) unless given.

References:
    H. Cao, Z. Zhao, I. Patras, S. Gong. "Temporal Score Analysis for Understanding and Correcting
    Diffusion Artifacts". CVPR 2025 (arXiv 2503.16218), Eq. 6 and Alg. 1; official code YuCao16/ASCED.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..random import generator_for
from ..sampler import RunContext, SamplerPlugin, StepState
from .config import CorrectionConfig, DetectorConfig
from .image_ops import dilate_mask, robust_threshold

__all__ = [
    "MaskSource",
    "correction_generators",
    "correction_noise",
    "ttc_renoise",
    "TrajectoryAwareCorrection",
    "StateReplacement",
    "ScoreClipping",
    "GroundTruthMasks",
]

MaskSource = Callable[[Sequence[int]], torch.Tensor]  # sample_indices -> M (B, H, W) bool, asked at n_c


def correction_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample: :func:`onmanifold.random.generator_for` ``(seed, index, "asced-correction")``
    (numpy ``SeedSequence([seed, index, crc32("asced-correction")])``)."""
    return [generator_for(seed, i, "asced-correction") for i in indices]


def correction_noise(seed: int, indices: Sequence[int], sample_shape: Sequence[int], dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(xi, eps)`` ``(B, *sample_shape)``: per sample ``xi`` then ``eps`` from :func:`correction_generators`, drawn on
    the CPU and moved to ``device`` (one transfer per correction; the same numbers on every device)."""
    xi, eps = [], []
    for g in correction_generators(seed, indices):
        xi.append(torch.randn(tuple(sample_shape), generator=g, dtype=dtype))
        eps.append(torch.randn(tuple(sample_shape), generator=g, dtype=dtype))
    xi, eps = torch.stack(xi), torch.stack(eps)
    return (xi, eps) if device is None else (xi.to(device), eps.to(device))


def ttc_renoise(x_t: torch.Tensor, x0_prime: torch.Tensor, mask: torch.Tensor, abar_t: float, eps: torch.Tensor,
                xi: torch.Tensor | None = None, gamma: float = 0.0) -> torch.Tensor:
    """``M * (sqrt(abar) (x0' + gamma xi) + sqrt(1 - abar) eps) + (1 - M) * x_t``, a pure function.

    ``mask`` is ``(B, H, W)`` or ``(B, 1 or C, H, W)`` bool, broadcast over channels; outside it ``x_t`` is
    returned bit for bit (``torch.where``).
    """
    if not (0.0 < abar_t <= 1.0):
        raise ValueError(f"abar_t: expected a value in (0, 1], got {abar_t}")
    if x0_prime.shape != x_t.shape or eps.shape != x_t.shape:
        raise ValueError(f"x0_prime, eps: expected the shape of x_t {tuple(x_t.shape)}, got {tuple(x0_prime.shape)} and {tuple(eps.shape)}")
    if mask.dim() == x_t.dim() - 1:
        mask = mask[:, None]
    mask = mask.bool().expand_as(x_t)
    if gamma != 0 and xi is None:
        raise ValueError("xi: gamma > 0 needs the perturbation noise xi")
    src = x0_prime if (gamma == 0 or xi is None) else x0_prime + gamma * xi
    x_re = math.sqrt(abar_t) * src + math.sqrt(1.0 - abar_t) * eps
    return torch.where(mask, x_re.to(x_t.dtype), x_t)


class GroundTruthMasks:
    """A mask source for oracle + TTC: ``masks[i - first_index]`` for sample index ``i`` (``(num, H, W)`` bool)."""

    def __init__(self, masks: torch.Tensor, first_index: int = 0) -> None:
        if not torch.is_tensor(masks) or masks.dim() not in (3, 4):
            raise ValueError(f"masks: expected a (num_samples, H, W) bool tensor, got {getattr(masks, 'shape', type(masks))}")
        self.masks = (masks[:, 0] if masks.dim() == 4 else masks).bool()
        self.first_index = int(first_index)

    def __call__(self, sample_indices: Sequence[int]) -> torch.Tensor:
        rows = [int(i) - self.first_index for i in sample_indices]
        if min(rows) < 0 or max(rows) >= self.masks.shape[0]:
            raise ValueError(f"sample_indices: {sample_indices[0]}..{sample_indices[-1]} outside the {self.masks.shape[0]} ground-truth masks from {self.first_index}")
        return self.masks[rows]


class TrajectoryAwareCorrection(SamplerPlugin):
    """TTC at step ``n_c`` (module docstring) as a ``before_model`` plugin.

    Args:
        masks: a mask source, ``sample_indices -> M (B, H, W) bool`` (:class:`GroundTruthMasks`, or what
            :class:`~onmanifold.artifacts.AbnormalScoreCorrection` passes: the detector's mask); ``M`` is dilated
            by the config's ``r`` here.
        config: a :class:`CorrectionConfig`, or ``"auto"`` for :meth:`CorrectionConfig.for_resolution` of the run's
            sample height (resolved in :meth:`setup`).
        seed: base seed of the correction generators; default: the run's seed.

    After a run, :attr:`corrected` ``(num_samples,)`` bool and :attr:`corrected_area` (pixels of ``M_d``), of that
    run only (reset in :meth:`setup`).
    """

    def __init__(self, masks: MaskSource, config: CorrectionConfig | str = "auto", seed: int | None = None) -> None:
        if not callable(masks):
            raise TypeError(f"masks: expected a mask source (sample_indices -> (B, H, W) bool), got {type(masks).__name__}; "
                            "to correct with the detector's mask use AbnormalScoreCorrection")
        if not (isinstance(config, CorrectionConfig) or config == "auto"):
            raise TypeError(f"config: expected a CorrectionConfig or 'auto', got {type(config).__name__}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed: expected an integer or None, got {seed!r}")
        self.mask_source = masks
        self.requested_config = config
        self.config: CorrectionConfig | None = config if isinstance(config, CorrectionConfig) else None
        self.seed = seed
        self.n_c: int | None = None
        self._run_seed = 0 if seed is None else seed
        self._corrected: list[torch.Tensor] = []
        self._area: list[torch.Tensor] = []
        self._start_batch()

    # ------------------------------------------------------------------ lifecycle
    def setup(self, run: RunContext) -> None:
        if self.requested_config == "auto":
            self.config = CorrectionConfig.for_resolution(int(run.sample_shape[-2]))
        self.n_c = self.config.step_of(run.sampler)
        self._run_seed = self.seed if self.seed is not None else (run.seed if run.seed is not None else 0)
        self._corrected, self._area = [], []
        self._resolve_source_frame(run)
        self._start_batch()

    def _resolve_source_frame(self, run: RunContext) -> None:
        self.source_frame = self.n_c - 1  # x0' = x0_hat_{n_c - 1}

    def _start_batch(self) -> None:
        self._source_x0: torch.Tensor | None = None
        self._done = False

    def before_model(self, state: StepState) -> None:
        if state.position == 0:
            self._start_batch()
        if state.position == self.n_c:
            self.correct(state, self.mask_source(state.sample_indices))

    def after_step(self, state: StepState) -> None:
        if self.n_c is not None and state.position == self.source_frame:
            self._source_x0 = state.x0_hat.detach().clone()

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        if not self._done:  # the correction step was never reached (N <= n_c)
            self._corrected.append(torch.zeros(len(sample_indices), dtype=torch.bool, device=x0.device))
            self._area.append(torch.zeros(len(sample_indices), dtype=torch.long, device=x0.device))

    # ------------------------------------------------------------------ the correction
    def correction_noise(self, state: StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """``(xi, eps)`` of this batch (:func:`correction_noise` with the run's seed)."""
        return correction_noise(self._run_seed, state.sample_indices, state.x_t.shape[1:], state.x_t.dtype, state.x_t.device)

    def source_x0(self, state: StepState) -> torch.Tensor:
        """``x0'``: the cached ``x0_hat_{n_c-1}``, or ``x0_hat(x_{n_c})`` (one extra model call) with ``x0_source="current"``."""
        if self.config.x0_source == "current":
            return state.model_at(state.x_t, state.t).x0_hat.detach()
        if self._source_x0 is None:
            raise RuntimeError(f"TTC: frame n_c - 1 = {self.n_c - 1} was not observed (n_c must be >= 1)")
        return self._source_x0

    def correct(self, state: StepState, mask: torch.Tensor) -> None:
        """Apply TTC to ``state.x_t`` with the mask ``M`` (B, H, W) of this batch: only inside ``M_d``, only for
        samples with a non-empty ``M``; then the correction step's eta."""
        expected = (state.batch_size, *state.x_t.shape[-2:])
        if not torch.is_tensor(mask) or tuple(mask.shape) != expected:
            raise ValueError(f"mask_source: expected a {expected} bool mask, got {getattr(mask, 'shape', type(mask))}")
        m = mask.to(state.x_t.device).bool()  # a mask source may hold its masks on the CPU (ground truth): one transfer
        hit = m.flatten(1).any(1)
        md = dilate_mask(m, self.config.dilation) & hit[:, None, None]
        xi, eps = self.correction_noise(state)
        if bool(hit.any()):
            state.x_t = ttc_renoise(state.x_t, self.source_x0(state), md, state.coeffs.abar_t, eps, xi, self.config.gamma)
        if self.config.eta_c is not None and self.config.eta_c != state.sampler.eta:
            state.coeffs = state.sampler.schedule.step_coefficients(state.t, state.t_prev, self.config.eta_c)
        self._corrected.append(hit.clone())
        self._area.append(md.flatten(1).sum(1))
        self._done = True

    @property
    def corrected(self) -> torch.Tensor:
        """Per sample of the last run: was the sample corrected (mask non-empty at ``n_c``)."""
        return torch.cat(self._corrected) if self._corrected else torch.zeros(0, dtype=torch.bool)

    @property
    def corrected_area(self) -> torch.Tensor:
        """Per sample of the last run: pixels of the correction mask ``M_d`` (0 when not corrected)."""
        return torch.cat(self._area) if self._area else torch.zeros(0, dtype=torch.long)


class StateReplacement(TrajectoryAwareCorrection):
    """The State Replacement baseline: TTC's mask, noise and ``gamma``, with ``x0' = x0_hat`` of frame ``replace_from``
    (default ``n_d = round(td_frac N)``, the oldest window frame; the code's ``reverse_step = n_c - n_d``).

    Args:
        masks, config, seed: as :class:`TrajectoryAwareCorrection` (``config.x0_source`` must be ``"previous"``).
        replace_from: the frame ``n`` whose ``x0_hat`` is re-noised, ``0 <= n < n_c``.
        td_frac: ``n_d`` when ``replace_from`` is None (the detector's ``td_frac``).
    """

    def __init__(self, masks: MaskSource, config: CorrectionConfig | str = "auto", seed: int | None = None,
                 replace_from: int | None = None, td_frac: float = DetectorConfig.td_frac) -> None:
        if replace_from is not None and (isinstance(replace_from, bool) or not isinstance(replace_from, int) or replace_from < 0):
            raise ValueError(f"replace_from: expected a frame n >= 0 or None, got {replace_from!r}")
        if isinstance(td_frac, bool) or not isinstance(td_frac, (int, float)) or not (0.0 <= td_frac <= 1.0):
            raise ValueError(f"td_frac: expected a fraction in [0, 1], got {td_frac!r}")
        super().__init__(masks, config, seed)
        self.replace_from = replace_from
        self.td_frac = float(td_frac)

    def _resolve_source_frame(self, run: RunContext) -> None:
        if self.config.x0_source != "previous":
            raise ValueError(f"config.x0_source: State Replacement re-noises a cached frame, expected 'previous', got {self.config.x0_source!r}")
        frame = min(int(round(self.td_frac * run.sampler.num_steps)), self.n_c) if self.replace_from is None else self.replace_from
        if not (0 <= frame < self.n_c):
            raise ValueError(f"replace_from: expected a frame in [0, n_c = {self.n_c}), got {frame}")
        self.source_frame = frame

    def source_x0(self, state: StepState) -> torch.Tensor:
        """``x0'``: the cached ``x0_hat`` of frame ``replace_from`` (default ``n_d``)."""
        if self._source_x0 is None:
            raise RuntimeError(f"State Replacement: frame {self.source_frame} was not observed")
        return self._source_x0


class ScoreClipping(SamplerPlugin):
    """The Score Clipping baseline (module docstring): per-pixel clipping of ``x0_hat`` changes for ``n_d < n <= n_c``.

    Args:
        config: the detector settings it uses: ``k``, ``a_min`` (the threshold) and ``td_frac``, ``tc_frac``,
            ``tc_rule`` (the window); none of them depends on the resolution. Default: :class:`DetectorConfig`.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        if config is not None and not isinstance(config, DetectorConfig):
            raise TypeError(f"config: expected a DetectorConfig or None, got {type(config).__name__}")
        self.config = config if config is not None else DetectorConfig()
        self.n_d = self.n_c = None
        self._prev: torch.Tensor | None = None

    def setup(self, run: RunContext) -> None:
        self.n_d, self.n_c = self.config.steps_of(run.sampler)

    def before_model(self, state: StepState) -> None:
        if state.position == 0:
            self._prev = None

    def after_model(self, state: StepState) -> None:
        n = state.position
        if not (self.n_d < n <= self.n_c) or self._prev is None:
            return
        x0 = state.x0_hat.detach()
        delta = x0 - self._prev
        thr, _, _ = robust_threshold(127.5 * delta.abs().double(), self.config.k, self.config.a_min)
        c = (thr / 127.5).to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        x0_new = self._prev + torch.maximum(torch.minimum(delta, c), -c)
        state.x0_hat, state.eps_hat, state.mu = state.predict(state.x_t, x0=x0_new)

    def after_step(self, state: StepState) -> None:
        if self.n_d is not None and state.position >= self.n_d:
            self._prev = state.x0_hat.detach().clone()
