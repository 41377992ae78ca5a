"""ASCED's streaming artifact detector: abnormal step-to-step changes of ``x0_hat`` (Cao et al., CVPR 2025).

The detector watches the clean-image estimate of every DDIM step and flags the pixels whose change between
adjacent steps is abnormally large *relative to the rest of the same image*. With ``n`` = steps completed
(``n = 0`` the noisiest), frame ``n`` is, in grey levels,

    F_n = 127.5 * (x0_hat_n + 1)                               (quantity="x0", the default [C])
    F_n = 127.5 * (-sqrt((1 - abar_t) / abar_t) * eps_theta)   (quantity="weighted_score" = w(t) s, ablation)
    F_n = trunc(clamp(127.5 * (x0_hat_n + 1), 0, 255))         (quantize=True, uint8 as the official code [C])

and for each step pair ``(n-1, n)`` of one sample (statistics never pooled across the batch [C]):

    1. D   = |F_n - F_{n-1}|                                   (C, H, W)
    2. D  <- Gaussian blur with sigma over H, W (radius int(4 sigma + 0.5), scipy 'reflect' boundary)
    3. med = median(D), mad = median(|D - med|)                (interpolating median over all C H W values)
    4. thr = max(med + k * 1.4826 * mad, a_min)                (robust z-test, k = 3)
    5. flag(i, j) = max_c D(c, i, j) > thr
    6. inside the window n_d < n < n_c:  U <- U or flag,  Z <- max(Z, (max_c D - med) / (1.4826 mad + 1e-6))

Finalisation at ``n = n_c`` (:meth:`StreamingArtifactDetector.finalize`): 4-connected components of ``U``
kept iff ``A_min < area < A_max`` (strict) and the component contains a full ``w x w`` block; ``M`` = their
union; the image is flagged iff ``M`` is non-empty; the correction mask ``M_d`` is ``M`` dilated by an
``r``-pixel box. ``Z`` (the running robust z-map) is the pixel score used for AUROC.

Streaming: per sample only the previous ``x0_hat`` (and its frame), ``U``, ``Z``, optionally the anchor
``x0_hat_{n_d}`` (State Replacement) and one scalar ``f_n`` per step in monitor mode are kept, so the
memory does not grow with the number of steps. ``keep_flag_maps=True`` (analysis only, for the phase
curves split by a ground-truth mask) additionally keeps every step's flag map.

Project decisions (docs/methods/asced.md#D1 to docs/methods/asced.md#D6): float frames by default, uint8 only in
``quantize`` mode; ``a_min = 1`` grey level guards ``mad = 0`` (0 in code-faithful mode); the blur mixes
channels only with ``blur_channels=True`` (a quirk of the code); spatial parameters scaled by
``s = H / 256`` with floors (:meth:`ASCEDConfig.for_resolution`); ``n_d = round(0.24 N)`` (the paper does
not state T_d), ``n_c = round(0.48 N)`` (paper Fig. 8).

References:
    H. Cao, Z. Zhao, I. Patras, S. Gong. "Temporal Score Analysis for Understanding and Correcting
    Diffusion Artifacts". CVPR 2025, pp. 7707-7716 (arXiv 2503.16218). Official code: YuCao16/ASCED.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..sampler import DDIMSampler, SamplerPlugin, StepState, RunContext

__all__ = [
    "ASCEDConfig",
    "StreamingArtifactDetector",
    "DetectionResult",
    "frame_of",
    "step_flags",
    "gaussian_blur_reflect",
    "robust_median_mad",
    "filter_components",
    "dilate_mask",
    "TC_ALPHA_BAR",
]

ROBUST_SCALE = 1.4826  # 1.4826 * MAD estimates the standard deviation of a Gaussian
TC_ALPHA_BAR = 0.0778  # abar at t = 500 of ADM's linear schedule: the paper's T_c for N = 25 (tc_rule="alpha_bar")


@dataclass(frozen=True)
class ASCEDConfig:
    """Every knob of ASCED's detector and correction (docs/methods/asced.md#D5; defaults = the official code at 256x256).

    Args:
        sigma: Gaussian blur std in pixels (0 disables).
        k: robust threshold multiplier (``med + k * 1.4826 * mad``).
        a_min: floor of the threshold in grey levels (guards ``mad = 0``).
        area_min, area_max: a component is kept iff ``area_min < area < area_max`` (strict).
        min_width: ``w``, a component must contain a full ``w x w`` block (1 disables).
        dilation: ``r``, the correction mask is ``M`` dilated by a ``(2r+1)`` box.
        td_frac, tc_frac: ``n_d = round(td_frac N)``, ``n_c = round(tc_frac N)``.
        tc_rule: ``"fraction"`` (``n_c = round(tc_frac N)``) or ``"alpha_bar"`` (the step whose ``abar`` is
            closest to :data:`TC_ALPHA_BAR`, for other schedules).
        quantize: uint8 frames as the official code (truncation toward zero).
        blur_channels: blur across channels too (the code's quirk; moot for one channel).
        quantity: ``"x0"`` (clipped ``x0_hat``) or ``"weighted_score"`` (``w(t) s``, ablation).
        gamma: TTC perturbation, ``x0' + gamma * xi`` is re-noised (0 in the code).
        eta_c: DDIM eta of the correction step (``None``: keep the sampler's eta).
        x0_source: ``"previous"`` (cached ``x0_hat_{n_c - 1}``, no extra call) or ``"current"``
            (``x0_hat(x_{n_c})``, one extra network call, paper-literal).
    """

    sigma: float = 2.0
    k: float = 3.0
    a_min: float = 1.0
    area_min: int = 100
    area_max: int = 10_000
    min_width: int = 5
    dilation: int = 5
    td_frac: float = 0.24
    tc_frac: float = 0.48
    tc_rule: str = "fraction"
    quantize: bool = False
    blur_channels: bool = False
    quantity: str = "x0"
    gamma: float = 0.0
    eta_c: float | None = 0.0
    x0_source: str = "previous"

    def __post_init__(self) -> None:
        def num(name: str, lo: float, strict: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= lo if strict else v < lo):
                raise ValueError(f"{name}: expected a finite number {'>' if strict else '>='} {lo}, got {v!r}")

        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")

        num("sigma", 0.0)
        num("k", 0.0, strict=True)
        num("a_min", 0.0)
        num("gamma", 0.0)
        integer("area_min", 0)
        integer("area_max", 1)
        integer("min_width", 1)
        integer("dilation", 0)
        if self.area_max <= self.area_min + 1:
            raise ValueError(f"area_max: expected > area_min + 1 (strict band), got area_min={self.area_min}, area_max={self.area_max}")
        for name in ("td_frac", "tc_frac"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {v!r}")
        if self.td_frac > self.tc_frac:
            raise ValueError(f"td_frac: expected <= tc_frac ({self.tc_frac}), got {self.td_frac}")
        if self.tc_rule not in ("fraction", "alpha_bar"):
            raise ValueError(f"tc_rule: expected 'fraction' or 'alpha_bar', got {self.tc_rule!r}")
        if self.quantity not in ("x0", "weighted_score"):
            raise ValueError(f"quantity: expected 'x0' or 'weighted_score', got {self.quantity!r}")
        if self.x0_source not in ("previous", "current"):
            raise ValueError(f"x0_source: expected 'previous' or 'current', got {self.x0_source!r}")
        if self.eta_c is not None:
            num("eta_c", 0.0)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_resolution(cls, height: int, **overrides) -> "ASCEDConfig":
        """The spatial parameters scaled from the code's 256x256 values by ``s = height / 256`` (docs/methods/asced.md#D5).

        ``sigma = max(2 s, 0.5)``, ``area_min = max(1, round(100 s^2))``, ``area_max = round(10000 s^2)``,
        ``min_width = max(1, round(5 s))`` except 2 at 17..63 px (32x32: removes the 1-px streaks of
        sub-pixel edge shifts), ``dilation = round(5 s)``. 32x32 -> (0.5, 2, 156, 2, 1); 8x8 -> (0.5, 1, 10, 1, 0).
        ``area_max`` is raised to ``area_min + 2`` when the rule leaves no room (tiny images).
        """
        if isinstance(height, bool) or not isinstance(height, (int, np.integer)) or height < 1:
            raise ValueError(f"height: expected a positive integer image height, got {height!r}")
        s = height / 256.0
        width = max(1, round(5 * s))
        if width == 1 and 16 < height < 64:
            width = 2
        area_min = max(1, round(100 * s * s))
        params = dict(
            sigma=max(2.0 * s, 0.5),
            area_min=area_min,
            area_max=max(round(10_000 * s * s), area_min + 2),
            min_width=width,
            dilation=round(5 * s),
        )
        params.update(overrides)
        return cls(**params)

    @classmethod
    def code_faithful(cls, **overrides) -> "ASCEDConfig":
        """The official code's settings: 256x256 spatial values, uint8 frames, channel-mixing blur, ``a_min = 0``."""
        params = dict(sigma=2.0, area_min=100, area_max=10_000, min_width=5, dilation=5, quantize=True, blur_channels=True, a_min=0.0)
        params.update(overrides)
        return cls(**params)

    def with_(self, **changes) -> "ASCEDConfig":
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise ValueError(f"{bad[0]}: not an ASCEDConfig field (expected one of {sorted(known)})")
        return replace(self, **changes)

    # ------------------------------------------------------------------ steps
    def detection_start(self, num_steps: int) -> int:
        """``n_d = round(td_frac * N)``."""
        return int(round(self.td_frac * num_steps))

    def correction_step(self, num_steps: int, abar_of_steps: Sequence[float] | None = None) -> int:
        """``n_c``: ``round(tc_frac N)``, or with ``tc_rule="alpha_bar"`` the step whose ``abar`` is closest to 0.0778."""
        if self.tc_rule == "alpha_bar":
            if abar_of_steps is None:
                raise ValueError("abar_of_steps: tc_rule='alpha_bar' needs the abar of every sampling step")
            return int(np.argmin([abs(float(a) - TC_ALPHA_BAR) for a in abar_of_steps]))
        return int(round(self.tc_frac * num_steps))

    def steps_of(self, sampler: DDIMSampler) -> tuple[int, int]:
        """``(n_d, n_c)`` for a sampler (``n_d`` is capped at ``n_c``)."""
        N = sampler.num_steps
        n_c = self.correction_step(N, [sampler.schedule.alphas_cumprod[t] for t in sampler.timesteps])
        return min(self.detection_start(N), n_c), n_c


# ---------------------------------------------------------------------------------------------- pure functions
def frame_of(x0_hat: torch.Tensor, config: ASCEDConfig, eps: torch.Tensor | None = None, abar_t: float | None = None) -> torch.Tensor:
    """Frame ``F_n`` of a step in grey levels (float32): see the module docstring for the three variants."""
    if config.quantity == "weighted_score":
        if eps is None or abar_t is None:
            raise ValueError("eps, abar_t: quantity='weighted_score' needs the model's eps and abar_t")
        f = 127.5 * (-math.sqrt((1.0 - abar_t) / abar_t) * eps.detach().float())
        return f
    f = 127.5 * (x0_hat.detach().float() + 1.0)
    if config.quantize:
        f = f.clamp(0.0, 255.0).to(torch.uint8).float()  # uint8 conversion truncates toward zero
    return f


def _gauss_kernel(sigma: float) -> torch.Tensor:
    """scipy's ``_gaussian_kernel1d`` (order 0) in float64: ``exp(-x^2 / (2 sigma^2))`` normalised, radius int(4 sigma + 0.5)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (sigma * sigma) * x * x)
    return torch.from_numpy(phi / phi.sum())


def _reflect_index(n: int, radius: int) -> torch.Tensor:
    """Indices of scipy's 'reflect' padding (``d c b a | a b c d | d c b a``, any radius, periodic)."""
    i = np.arange(-radius, n + radius) % (2 * n)
    i = np.where(i >= n, 2 * n - 1 - i, i)
    return torch.from_numpy(i)


def _blur_dim(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    radius = (kernel.numel() - 1) // 2
    xp = x.index_select(dim, _reflect_index(x.shape[dim], radius))
    win = xp.unfold(dim, kernel.numel(), 1)  # (..., n, K) along dim
    return (win * kernel.to(x.dtype)).sum(-1)


def gaussian_blur_reflect(d: torch.Tensor, sigma: float, blur_channels: bool = False) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` over H and W (and C if ``blur_channels``), scipy 'reflect' boundary.

    Matches ``scipy.ndimage.gaussian_filter(mode='reflect', truncate=4)`` up to float rounding; ``sigma = 0``
    returns the input.
    """
    if sigma <= 0:
        return d
    k = _gauss_kernel(sigma)
    out = _blur_dim(_blur_dim(d, k, 2), k, 3)
    if blur_channels:
        out = _blur_dim(out, k, 1)
    return out


def robust_median_mad(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample interpolating median and MAD over all non-batch values: ``med = q_0.5(D)``, ``mad = q_0.5(|D - med|)``."""
    flat = d.flatten(1)
    med = torch.quantile(flat, 0.5, dim=1)
    mad = torch.quantile((flat - med[:, None]).abs(), 0.5, dim=1)
    return med, mad


def step_flags(f_prev: torch.Tensor, f_cur: torch.Tensor, config: ASCEDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step test (docs/methods/asced.md#R3) of one step pair: ``(flag (B, H, W) bool, z (B, H, W) float64)``.

    ``z = (max_c D - med) / (1.4826 mad + 1e-6)`` is the robust z-map (the AUROC score).
    """
    d = (f_cur - f_prev).abs().double()
    d = gaussian_blur_reflect(d, config.sigma, config.blur_channels)
    med, mad = robust_median_mad(d)
    thr = (med + config.k * ROBUST_SCALE * mad).clamp_min(config.a_min)
    dmax = d.amax(dim=1)
    flag = dmax > thr[:, None, None]
    z = (dmax - med[:, None, None]) / (ROBUST_SCALE * mad[:, None, None] + 1e-6)
    return flag, z


def filter_components(union: torch.Tensor, config: ASCEDConfig) -> torch.Tensor:
    """docs/methods/asced.md#R3, filters: 4-connected components of ``union`` (B, H, W) kept iff ``A_min < area < A_max`` and
    they contain a full ``w x w`` block; returns their union ``M`` (B, H, W) bool.

    The block test: a ``w x w`` window entirely inside ``union`` lies inside one component (a square is
    4-connected), so a component passes iff some full window's top-left pixel carries its label.
    """
    from scipy import ndimage

    u = union.bool()
    if u.dim() != 3:
        raise ValueError(f"union: expected a (batch, height, width) mask, got shape {tuple(u.shape)}")
    w = config.min_width
    if w > 1:
        full = F.avg_pool2d(u[:, None].double(), w, stride=1)[:, 0] * (w * w) > (w * w - 0.5)
    out = np.zeros(tuple(u.shape), dtype=bool)
    un = u.numpy()
    for b in range(un.shape[0]):
        if not un[b].any():
            continue
        labels, count = ndimage.label(un[b])  # 4-connectivity (scipy's default structure)
        area = np.bincount(labels.ravel(), minlength=count + 1)
        keep = (area > config.area_min) & (area < config.area_max)
        keep[0] = False
        if w > 1:
            fb = full[b].numpy()
            wide = np.zeros(count + 1, dtype=bool)
            wide[np.unique(labels[: fb.shape[0], : fb.shape[1]][fb])] = True
            keep &= wide
        out[b] = keep[labels]
    return torch.from_numpy(out)


def dilate_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary box dilation of ``(B, H, W)`` by ``radius`` pixels (``max_pool2d(2r+1, stride 1, padding r)``)."""
    if radius <= 0:
        return mask.bool().clone()
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


# ---------------------------------------------------------------------------------------------- the plugin
@dataclass
class DetectionResult:
    """Detector output for a batch (all indexed like ``sample_indices``)."""

    sample_indices: list[int]
    mask: torch.Tensor  # (B, H, W) bool, M
    correction_mask: torch.Tensor  # (B, H, W) bool, M_d = M dilated by r
    union: torch.Tensor  # (B, H, W) bool, U before the component filters
    z_map: torch.Tensor  # (B, H, W) float32 running robust z-map over the window (0 if the window is empty)

    @property
    def flagged(self) -> torch.Tensor:
        """Image-level decision ``M != empty`` (B,) bool."""
        return self.mask.flatten(1).any(dim=1)


class StreamingArtifactDetector(SamplerPlugin):
    """ASCED's detector as an ``after_step`` observer (module docstring; docs/methods/asced.md#R3).

    Args:
        config: an :class:`ASCEDConfig`, or ``"auto"`` for :meth:`ASCEDConfig.for_resolution` of the first
            batch's height.
        monitor: also run the per-step test outside the window and record ``f_n`` (fraction of flagged pixels
            before union and filters) and ``f_n`` after the component filters, for ``n = 1 .. N-1``.
        keep_anchor: keep ``x0_hat`` of frame ``anchor_step`` (default ``n_d``) for State Replacement.
        keep_flag_maps: monitor mode only; keep every step's flag map (analysis of phases against ground truth).

    After sampling: :meth:`results` concatenates every batch's :class:`DetectionResult` (sorted as sampled);
    :attr:`flag_fraction` ``(num_samples, N-1)`` and :attr:`flag_fraction_filtered` hold ``f_n`` per sample.
    The detector finalises itself at the start of step ``n_c`` (or at the end of the batch if the window
    never closes); :meth:`finalize` may be called earlier by a correction plugin (idempotent).
    """

    def __init__(self, config: ASCEDConfig | str = "auto", monitor: bool = False, keep_anchor: bool = False,
                 anchor_step: int | None = None, keep_flag_maps: bool = False) -> None:
        if not (isinstance(config, ASCEDConfig) or config == "auto"):
            raise TypeError(f"config: expected an ASCEDConfig or 'auto', got {type(config).__name__}")
        if keep_flag_maps and not monitor:
            raise ValueError("keep_flag_maps: needs monitor=True")
        if anchor_step is not None and (isinstance(anchor_step, bool) or not isinstance(anchor_step, int) or anchor_step < 0):
            raise ValueError(f"anchor_step: expected a step n >= 0 or None, got {anchor_step!r}")
        self.requested_config = config
        self.config: ASCEDConfig | None = config if isinstance(config, ASCEDConfig) else None
        self.monitor = bool(monitor)
        self.keep_anchor = bool(keep_anchor) or anchor_step is not None
        self.anchor_step = anchor_step
        self.keep_flag_maps = bool(keep_flag_maps)
        self.n_d = self.n_c = None
        self.num_steps = None
        self._batches: list[DetectionResult] = []
        self._fractions: list[torch.Tensor] = []
        self._fractions_filtered: list[torch.Tensor] = []
        self._flag_maps: list[torch.Tensor] = []
        self._reset_batch()

    # ------------------------------------------------------------------ lifecycle
    def setup(self, run: RunContext) -> None:
        self.sampler = run.sampler
        self.num_steps = run.sampler.num_steps
        if self.config is not None:
            self._resolve_steps()

    def _resolve_steps(self) -> None:
        self.n_d, self.n_c = self.config.steps_of(self.sampler)
        if self.anchor_step is not None and not (0 <= self.anchor_step < max(self.n_c, 1)):
            raise ValueError(f"anchor_step: expected a frame in [0, n_c = {self.n_c}), got {self.anchor_step}")

    def _reset_batch(self) -> None:
        self.prev_x0: torch.Tensor | None = None
        self.prev_frame: torch.Tensor | None = None
        self.anchor: torch.Tensor | None = None
        self.union: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.result: DetectionResult | None = None
        self._indices: list[int] = []
        self._frac: list[torch.Tensor] = []
        self._frac_f: list[torch.Tensor] = []
        self._maps: list[torch.Tensor] = []
        self._last_n = -1

    def begin(self, num_steps: int, sample_indices: Sequence[int] = (), config: ASCEDConfig | None = None) -> None:
        """Start a batch by hand (offline or synthetic trajectories fed to :meth:`observe`, no sampler).

        ``n_d``, ``n_c`` follow the config's fractions of ``num_steps`` (``tc_rule="fraction"`` only).
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps: expected an integer >= 2, got {num_steps!r}")
        if config is not None:
            self.config = config
        if self.config is None:
            raise ValueError("config: begin() needs an ASCEDConfig (the detector was built with 'auto')")
        if self.config.tc_rule != "fraction":
            raise ValueError("config.tc_rule: begin() computes n_c from tc_frac only; use a sampler for 'alpha_bar'")
        self.num_steps = num_steps
        n_c = self.config.correction_step(num_steps)
        self.n_d, self.n_c = min(self.config.detection_start(num_steps), n_c), n_c
        self._reset_batch()
        self._indices = list(sample_indices)

    @property
    def anchor_frame(self) -> int:
        """The frame kept for State Replacement (``n_d`` unless ``anchor_step`` was given)."""
        return self.n_d if self.anchor_step is None else self.anchor_step

    def before_model(self, state: StepState) -> None:
        if state.position == 0:
            self._reset_batch()
            self._indices = list(state.sample_indices)
            if self.config is None:  # "auto": scale from the first batch's height
                self.config = ASCEDConfig.for_resolution(int(state.x_t.shape[-2]))
                self._resolve_steps()
        if state.position == self.n_c:
            self.finalize()

    def after_step(self, state: StepState) -> None:
        self.observe(state.x0_hat, state.position, eps=state.eps, abar_t=state.coeffs.abar_t)

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        if self.result is None:
            self.finalize()
        self._batches.append(self.result)
        if self.monitor:
            B = len(sample_indices)
            self._fractions.append(torch.stack(self._frac, 1) if self._frac else torch.zeros(B, 0))
            self._fractions_filtered.append(torch.stack(self._frac_f, 1) if self._frac_f else torch.zeros(B, 0))
            if self.keep_flag_maps:
                self._flag_maps.append(torch.stack(self._maps, 1) if self._maps else torch.zeros(B, 0, *x0.shape[-2:], dtype=torch.bool))

    # ------------------------------------------------------------------ streaming core
    def observe(self, x0_hat: torch.Tensor, n: int, eps: torch.Tensor | None = None, abar_t: float | None = None) -> None:
        """Observe frame ``n`` (docs/methods/asced.md#D8; named ``observe`` because ``update`` is a sampler point): anchor copy at ``n = anchor_frame``; the per-step test on ``(n-1, n)``
        inside the window (or always in monitor mode); then ``prev <- x0_hat``.

        Frames must arrive in order ``0, 1, 2, ...`` within a batch.
        """
        if self.config is None:
            self.config = ASCEDConfig.for_resolution(int(x0_hat.shape[-2]))
            self._resolve_steps()
        if n != self._last_n + 1:
            raise ValueError(f"n: frames must arrive in order, expected {self._last_n + 1}, got {n}")
        self._last_n = n
        x0 = x0_hat.detach()
        frame = frame_of(x0, self.config, eps, abar_t)
        if self.keep_anchor and n == self.anchor_frame:
            self.anchor = x0.clone()
        in_window = self.n_d < n < self.n_c
        if self.prev_frame is not None and (in_window or self.monitor):
            flag, z = step_flags(self.prev_frame, frame, self.config)
            if self.monitor:
                self._frac.append(flag.flatten(1).float().mean(1))
                self._frac_f.append(filter_components(flag, self.config).flatten(1).float().mean(1))
                if self.keep_flag_maps:
                    self._maps.append(flag.clone())
            if in_window:
                self.union = flag if self.union is None else (self.union | flag)
                self.z = z if self.z is None else torch.maximum(self.z, z)
        self.prev_x0 = x0.clone()
        self.prev_frame = frame

    def finalize(self) -> DetectionResult:
        """The filters of docs/methods/asced.md#R3 on the union of the window; idempotent within a batch."""
        if self.result is not None:
            return self.result
        if self.prev_frame is None:
            raise RuntimeError("finalize: no frame observed yet in this batch")
        B, H, W = self.prev_frame.shape[0], self.prev_frame.shape[-2], self.prev_frame.shape[-1]
        union = self.union if self.union is not None else torch.zeros(B, H, W, dtype=torch.bool)
        mask = filter_components(union, self.config)
        z = self.z.float() if self.z is not None else torch.zeros(B, H, W)
        self.result = DetectionResult(list(self._indices), mask, dilate_mask(mask, self.config.dilation), union.clone(), z)
        return self.result

    # ------------------------------------------------------------------ results
    def results(self) -> DetectionResult:
        """Every finished batch's result, concatenated."""
        if not self._batches:
            raise RuntimeError("results: nothing sampled yet")
        cat = lambda name: torch.cat([getattr(r, name) for r in self._batches])  # noqa: E731
        return DetectionResult(sum((r.sample_indices for r in self._batches), []), cat("mask"), cat("correction_mask"), cat("union"), cat("z_map"))

    @property
    def flag_fraction(self) -> torch.Tensor:
        """``f_n`` per sample, ``(num_samples, N-1)`` for ``n = 1 .. N-1`` (monitor mode)."""
        if not self.monitor:
            raise RuntimeError("flag_fraction: the detector was not in monitor mode")
        return torch.cat(self._fractions)

    @property
    def flag_fraction_filtered(self) -> torch.Tensor:
        """``f_n`` after the component filters applied to that step's flags alone (monitor mode)."""
        if not self.monitor:
            raise RuntimeError("flag_fraction_filtered: the detector was not in monitor mode")
        return torch.cat(self._fractions_filtered)

    @property
    def flag_maps(self) -> torch.Tensor:
        """Every step's flag map ``(num_samples, N-1, H, W)`` bool (``keep_flag_maps=True``)."""
        if not self.keep_flag_maps:
            raise RuntimeError("flag_maps: the detector was built without keep_flag_maps=True")
        return torch.cat(self._flag_maps)
