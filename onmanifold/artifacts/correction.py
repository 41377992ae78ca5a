"""ASCED's Trajectory-aware Targeted Correction (TTC) and its baselines (Cao et al., CVPR 2025; docs/methods/asced.md#R4, docs/methods/asced.md#B1).

TTC, once, at step ``n_c`` *before the model call*, for every sample whose mask is non-empty:

    x_re    = sqrt(abar_{t_{n_c}}) (x0' + gamma xi) + sqrt(1 - abar_{t_{n_c}}) eps,     xi, eps ~ N(0, I) fresh
    x_{n_c} <- M_d * x_re + (1 - M_d) * x_{n_c}                                         (hard binary blend)

with ``x0' = x0_hat_{n_c - 1}``, the previous step's clean estimate (the official code's ``reverse_step = 1``,
no extra network call). Outside ``M_d`` the state is untouched bit for bit. ``gamma xi`` is *added* to ``x0'``
(the printed Eq. 6 multiplies; docs/methods/asced.md#D11). ``gamma = 0`` by default (code).

Why "trajectory-aware": DDIM with eta = 0 gives ``x_{n_c} = sqrt(abar) x0_hat_{n_c-1} + sqrt(1 - abar)
eps_hat_{n_c-1}`` exactly, so inside the mask TTC keeps the current clean estimate and only swaps the model's
noise component for fresh noise. With ``M_d = 1``, ``gamma = 0`` and ``eps := eps_hat_{n_c-1}`` it is the
identity (tested).

Baselines:

* :class:`StateReplacement`: the same re-noising with ``x0' = x0_hat_{n_d}`` ("before the artifact appeared";
  the code's ``reverse_step = n_c - n_d``), ``replace_from`` selects another frame.
* :class:`ScoreClipping` (the paper names it, no formula; project definition): for ``n_d < n <= n_c``, every
  sample, no mask: ``Delta = x0_hat_n - x0_hat_{n-1}``, ``c = max(med + k 1.4826 mad, a_min) / 127.5`` of
  ``127.5 |Delta|``, ``x0_hat_n <- x0_hat_{n-1} + clamp(Delta, -c, c)``, then ``eps_hat`` and the step mean
  are re-derived from it.
* Oracle + TTC: TTC with a ground-truth mask (:class:`GroundTruthMasks`) instead of the detector's.

Decisions [D]: eta at the correction step ``eta_c = 0`` (ablation 1; it is applied to the whole batch's step
``n_c``, as the sampler's ``sigma`` is one number per step; the override is written into ``state.coeffs`` and is
lost if a later plugin changes ``state.t`` at the same step). Correction noise: ``xi`` then ``eps`` drawn for
every sample from its own generator seeded by ``(seed, sample index, "asced-correction")``, separate from the
trajectory's, so all TTC variants share ``eps`` and unflagged samples equal plain DDIM bit for bit.

References:
    H. Cao, Z. Zhao, I. Patras, S. Gong. "Temporal Score Analysis for Understanding and Correcting
    Diffusion Artifacts". CVPR 2025 (arXiv 2503.16218), Eq. 6 and Alg. 1; official code YuCao16/ASCED.
"""

from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import torch

from ..random import generator_for
from ..sampler import DDIMSampler, SamplerPlugin, StepState, RunContext
from .detector import ROBUST_SCALE, ASCEDConfig, StreamingArtifactDetector, dilate_mask, robust_median_mad

__all__ = [
    "CORRECTION_STREAM",
    "correction_generators",
    "ttc_renoise",
    "TrajectoryAwareCorrection",
    "StateReplacement",
    "ScoreClipping",
    "GroundTruthMasks",
    "AbnormalScoreCorrection",
]

CORRECTION_STREAM = zlib.crc32(b"asced-correction")  # the third word of the correction generators' seed


def correction_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One generator per sample: :func:`onmanifold.random.generator_for` ``(seed, index, "asced-correction")``
    (numpy ``SeedSequence([seed, index, crc32("asced-correction")])``)."""
    return [generator_for(seed, i, "asced-correction") for i in indices]


def ttc_renoise(x_t: torch.Tensor, x0_prime: torch.Tensor, mask: torch.Tensor, abar_t: float, eps: torch.Tensor,
                xi: torch.Tensor | None = None, gamma: float = 0.0) -> torch.Tensor:
    """``M * (sqrt(abar) (x0' + gamma xi) + sqrt(1 - abar) eps) + (1 - M) * x_t`` (docs/methods/asced.md#R4), a pure function.

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
    src = x0_prime if (gamma == 0 or xi is None) else x0_prime + gamma * xi
    if gamma != 0 and xi is None:
        raise ValueError("xi: gamma > 0 needs the perturbation noise xi")
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
        mask_source: a :class:`StreamingArtifactDetector` (its ``M_d`` at ``n_c``; put the detector in the
            plugin list too) or a callable ``sample_indices -> (B, H, W)`` bool mask ``M`` (oracle; dilated
            by the config's ``r`` here).
        config: the settings (``tc_frac``, ``gamma``, ``eta_c``, ``dilation``, ``x0_source``); default: the
            detector's config, else :meth:`ASCEDConfig.for_resolution` of the image height.
        seed: base seed of the correction generators; default: the sampler's ``seed``.
        source: ``"previous"`` (``x0_hat_{n_c-1}``, or ``x0_hat(x_{n_c})`` when ``config.x0_source == "current"``)
            or ``"anchor"`` (``x0_hat`` of frame ``replace_from``, default ``n_d``: State Replacement).

    After sampling, :attr:`corrected` ``(num_samples,)`` bool and :attr:`corrected_area` (pixels of ``M_d``).
    """

    def __init__(self, mask_source: StreamingArtifactDetector | Callable, config: ASCEDConfig | None = None,
                 seed: int | None = None, source: str = "previous", replace_from: int | None = None) -> None:
        if not (isinstance(mask_source, StreamingArtifactDetector) or callable(mask_source)):
            raise TypeError(f"mask_source: expected a StreamingArtifactDetector or a callable, got {type(mask_source).__name__}")
        if config is not None and not isinstance(config, ASCEDConfig):
            raise TypeError(f"config: expected an ASCEDConfig or None, got {type(config).__name__}")
        if source not in ("previous", "anchor"):
            raise ValueError(f"source: expected 'previous' or 'anchor', got {source!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed: expected an integer or None, got {seed!r}")
        if replace_from is not None and (isinstance(replace_from, bool) or not isinstance(replace_from, int) or replace_from < 0):
            raise ValueError(f"replace_from: expected a frame n >= 0 or None, got {replace_from!r}")
        self.mask_source = mask_source
        self.given_config = config
        self.config = config
        self.seed = seed
        self.source = source
        self.replace_from = replace_from
        self._corrected: list[torch.Tensor] = []
        self._area: list[torch.Tensor] = []
        self.n_d = self.n_c = None

    # ------------------------------------------------------------------ lifecycle
    def setup(self, run: RunContext) -> None:
        self.sampler = run.sampler
        self.n_d = self.n_c = None
        if self.config is not None:
            self._resolve(run.sampler)

    def _resolve(self, sampler: DDIMSampler) -> None:
        self.n_d, self.n_c = self.config.steps_of(sampler)
        if self.source == "anchor":
            frame = self.anchor_frame
            if not (0 <= frame < self.n_c):
                raise ValueError(f"replace_from: expected a frame in [0, n_c = {self.n_c}), got {frame}")

    @property
    def anchor_frame(self) -> int:
        return self.n_d if self.replace_from is None else self.replace_from

    def before_model(self, state: StepState) -> None:
        if state.position == 0:
            self._prev_x0 = self._anchor = None
            self._done = False
            if self.config is None:
                det = self.mask_source if isinstance(self.mask_source, StreamingArtifactDetector) else None
                self.config = (det.config if det is not None and det.config is not None
                               else ASCEDConfig.for_resolution(int(state.x_t.shape[-2])))
                self._resolve(state.sampler)
            elif self.n_c is None:
                self._resolve(state.sampler)
        if state.position != self.n_c:
            return
        self.correct(state)

    def after_step(self, state: StepState) -> None:
        if self.n_c is None:
            return
        if state.position == self.n_c - 1:
            self._prev_x0 = state.x0_hat.detach().clone()
        if self.source == "anchor" and state.position == self.anchor_frame:
            self._anchor = state.x0_hat.detach().clone()

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        if not getattr(self, "_done", False):  # the correction step was never reached (N <= n_c)
            self._corrected.append(torch.zeros(len(sample_indices), dtype=torch.bool))
            self._area.append(torch.zeros(len(sample_indices), dtype=torch.long))

    # ------------------------------------------------------------------ the correction
    def masks(self, state: StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M_d (B, H, W) bool, hit (B,) bool)`` of this batch at ``n_c``."""
        if isinstance(self.mask_source, StreamingArtifactDetector):
            res = self.mask_source.finalize()
            if res.sample_indices and list(res.sample_indices) != list(state.sample_indices):
                raise RuntimeError("mask_source: the detector's batch differs from the sampler's; put the detector in the same plugin list")
            return res.correction_mask, res.flagged
        m = self.mask_source(state.sample_indices)
        if not torch.is_tensor(m) or m.shape != (state.batch_size, *state.x_t.shape[-2:]):
            raise ValueError(f"mask_source: expected a ({state.batch_size}, {state.x_t.shape[-2]}, {state.x_t.shape[-1]}) bool mask, got {getattr(m, 'shape', type(m))}")
        m = m.bool()
        return dilate_mask(m, self.config.dilation), m.flatten(1).any(1)

    def correction_noise(self, state: StepState) -> tuple[torch.Tensor, torch.Tensor]:
        """``(xi, eps)`` per sample from the correction generators (``xi`` first, then ``eps``)."""
        seed = self.seed if self.seed is not None else getattr(state.rng, "seed", 0)
        shape = tuple(state.x_t.shape[1:])
        xi, eps = [], []
        for g in correction_generators(seed, state.sample_indices):
            xi.append(torch.randn(shape, generator=g, dtype=state.x_t.dtype))
            eps.append(torch.randn(shape, generator=g, dtype=state.x_t.dtype))
        return torch.stack(xi), torch.stack(eps)

    def source_x0(self, state: StepState) -> torch.Tensor:
        """``x0'``: the cached previous frame, the anchor frame, or ``x0_hat(x_{n_c})`` (one extra model call)."""
        if self.source == "anchor":
            if self._anchor is None:
                raise RuntimeError(f"State Replacement: frame {self.anchor_frame} was not observed")
            return self._anchor
        if self.config.x0_source == "current":
            return state.model_at(state.x_t, state.t).x0_hat.detach()
        if self._prev_x0 is None:
            raise RuntimeError(f"TTC: frame n_c - 1 = {self.n_c - 1} was not observed (n_c must be >= 1)")
        return self._prev_x0

    def correct(self, state: StepState) -> None:
        """Apply TTC to ``state.x_t`` (only where ``M_d`` is set, only for samples with a non-empty mask)."""
        md, hit = self.masks(state)
        md = md & hit[:, None, None]
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
        """Per sample: was the sample corrected (mask non-empty at ``n_c``)."""
        return torch.cat(self._corrected) if self._corrected else torch.zeros(0, dtype=torch.bool)

    @property
    def corrected_area(self) -> torch.Tensor:
        """Per sample: pixels of the correction mask ``M_d`` (0 when not corrected)."""
        return torch.cat(self._area) if self._area else torch.zeros(0, dtype=torch.long)


class StateReplacement(TrajectoryAwareCorrection):
    """The State Replacement baseline: TTC's mask, noise and ``gamma``, with ``x0' = x0_hat`` of frame ``replace_from``
    (default ``n_d``, the oldest window frame; the code's ``reverse_step = n_c - n_d``)."""

    def __init__(self, mask_source, config: ASCEDConfig | None = None, seed: int | None = None, replace_from: int | None = None) -> None:
        super().__init__(mask_source, config, seed, source="anchor", replace_from=replace_from)


class ScoreClipping(SamplerPlugin):
    """The Score Clipping baseline (module docstring): per-pixel clipping of ``x0_hat`` changes for ``n_d < n <= n_c``.

    Args:
        config: ``k``, ``a_min``, ``td_frac``, ``tc_frac``; default :meth:`ASCEDConfig.for_resolution` of the height.
    """

    def __init__(self, config: ASCEDConfig | None = None) -> None:
        if config is not None and not isinstance(config, ASCEDConfig):
            raise TypeError(f"config: expected an ASCEDConfig or None, got {type(config).__name__}")
        self.config = config
        self.n_d = self.n_c = None

    def setup(self, run: RunContext) -> None:
        self.sampler = run.sampler
        if self.config is not None:
            self.n_d, self.n_c = self.config.steps_of(run.sampler)

    def before_model(self, state: StepState) -> None:
        if state.position == 0:
            self._prev = None
            if self.config is None:
                self.config = ASCEDConfig.for_resolution(int(state.x_t.shape[-2]))
            if self.n_c is None:
                self.n_d, self.n_c = self.config.steps_of(state.sampler)

    def after_model(self, state: StepState) -> None:
        n = state.position
        if not (self.n_d < n <= self.n_c) or self._prev is None:
            return
        x0 = state.x0_hat.detach()
        delta = x0 - self._prev
        med, mad = robust_median_mad(127.5 * delta.abs().double())
        thr = (med + self.config.k * ROBUST_SCALE * mad).clamp_min(self.config.a_min)
        c = (thr / 127.5).to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        x0_new = self._prev + torch.maximum(torch.minimum(delta, c), -c)
        state.x0_hat, state.eps_hat, state.mu = state.predict(state.x_t, x0=x0_new)

    def after_step(self, state: StepState) -> None:
        if self.n_d is not None and state.position >= self.n_d:
            self._prev = state.x0_hat.detach().clone()


class AbnormalScoreCorrection(SamplerPlugin):
    """ASCED in one plugin: the streaming detector followed by TTC at ``n_c`` (docs/methods/asced.md#R5).

    Usable with any eps-model the sampler accepts, e.g. a diffusers ``UNet2DModel`` through
    :func:`onmanifold.model.as_eps_model`::

        asced = AbnormalScoreCorrection()                       # parameters scaled to the image height
        x = DDIMSampler(schedule, 25).sample(model, shape=(3, 64, 64), num_samples=8, seed=0, plugins=[asced])
        asced.detector.results().flagged, asced.corrector.corrected

    Args:
        config: an :class:`ASCEDConfig` or ``"auto"`` (:meth:`ASCEDConfig.for_resolution`).
        method: ``"ttc"`` (ASCED) or ``"state_replacement"`` (the baseline, from ``x0_hat_{n_d}``).
        monitor: record ``f_n`` on every step (phases).
        seed: base seed of the correction noise (default: the sampler's).
    """

    def __init__(self, config: ASCEDConfig | str = "auto", method: str = "ttc", monitor: bool = False, seed: int | None = None) -> None:
        if method not in ("ttc", "state_replacement"):
            raise ValueError(f"method: expected 'ttc' or 'state_replacement', got {method!r}")
        self.detector = StreamingArtifactDetector(config, monitor=monitor)
        cls = TrajectoryAwareCorrection if method == "ttc" else StateReplacement
        self.corrector = cls(self.detector, config if isinstance(config, ASCEDConfig) else None, seed)
        self.method = method

    def setup(self, run: RunContext) -> None:
        self.detector.setup(run)
        self.corrector.setup(run)

    def before_model(self, state: StepState) -> None:
        self.detector.before_model(state)
        self.corrector.before_model(state)

    def after_step(self, state: StepState) -> None:
        self.detector.after_step(state)
        self.corrector.after_step(state)

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        self.detector.finish(x0, sample_indices)
        self.corrector.finish(x0, sample_indices)
