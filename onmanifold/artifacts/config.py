"""ASCED's settings: :class:`DetectorConfig` (what counts as an abnormal change) and :class:`CorrectionConfig` (what TTC does).

Both default to the official code's values at 256x256 (Cao et al., CVPR 2025; code YuCao16/ASCED); their
``for_resolution(height)`` scales the spatial parameters by ``s = height / 256`` with floors (the project's rule,
docs/methods/asced.md#D5):

==============  ==========  ============================================  ===========  ==========
parameter       256 x 256   rule                                          32 x 32      8 x 8
==============  ==========  ============================================  ===========  ==========
sigma (px)      2           ``max(2 s, 0.5)``                             0.5          0.5
area_min        100         ``max(1, round(100 s^2))``                    2            1
area_max        10 000      ``round(10 000 s^2)`` (>= area_min + 2)       156          10
min_width       5           ``max(1, round(5 s))``, 2 at 17..63 px        2            1
dilation (px)   5           ``round(5 s)``                                1            0
==============  ==========  ============================================  ===========  ==========

Steps, with ``N`` sampling steps and ``n`` = steps completed: ``n_d = round(td_frac N)`` (the paper does not
state T_d; 0.24, docs/methods/asced.md#D6), ``n_c = round(tc_frac N)`` (paper Fig. 8: 0.48), or with ``tc_rule="alpha_bar"`` the step whose
``abar`` is closest to :data:`TC_ALPHA_BAR`. The detection window closes at the correction step, so both configs
carry ``tc_frac`` and ``tc_rule``; :class:`~onmanifold.artifacts.AbnormalScoreCorrection` refuses a pair that
disagrees.

Bad input, refused with a ``ValueError`` naming the setting: images too small for the detector's components or blur
(:meth:`DetectorConfig.check_image_size`, in ``for_resolution`` and the detector's setup), a window outside the run's
trajectory (:func:`check_window`, in the detector's setup). A ``normalization`` other than ``"per-image"`` is the
variant beyond the paper (docs/methods/asced.md#V1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np

from ..sampler import DDIMSampler

__all__ = ["DetectorConfig", "CorrectionConfig", "TC_ALPHA_BAR", "NORMALIZATIONS", "correction_step", "resolution_scale", "check_window"]

TC_ALPHA_BAR = 0.0778  # abar at t = 500 of ADM's linear schedule: the paper's T_c for N = 25 (tc_rule="alpha_bar")
NORMALIZATIONS = ("per-image", "reference", "batch")  # what a pixel's change is compared with (docs/methods/asced.md#V1)


# ---------------------------------------------------------------------------------------------- shared checks and rules
def _number(obj, name: str, lo: float, strict: bool = False) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v <= lo if strict else v < lo):
        raise ValueError(f"{name}: expected a finite number {'>' if strict else '>='} {lo}, got {v!r}")


def _integer(obj, name: str, lo: int) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name}: expected an integer >= {lo}, got {v!r}")


def _fraction(obj, name: str) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):
        raise ValueError(f"{name}: expected a fraction in [0, 1], got {v!r}")


def _choice(obj, name: str, allowed: tuple[str, ...]) -> None:
    v = getattr(obj, name)
    if v not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {v!r}")


def _with(config, changes: dict):
    known = {f.name for f in fields(config)}
    bad = sorted(set(changes) - known)
    if bad:
        other = CorrectionConfig if isinstance(config, DetectorConfig) else DetectorConfig
        hint = f"; it is a {other.__name__} field" if bad[0] in {f.name for f in fields(other)} else ""
        raise ValueError(f"{bad[0]}: not a {type(config).__name__} field (expected one of {sorted(known)}){hint}")
    return replace(config, **changes)


def resolution_scale(height: int) -> float:
    """``s = height / 256``, the factor from the official code's 256x256 values."""
    if isinstance(height, bool) or not isinstance(height, (int, np.integer)) or height < 1:
        raise ValueError(f"height: expected a positive integer image height, got {height!r}")
    return height / 256.0


def correction_step(tc_frac: float, tc_rule: str, num_steps: int, abar_of_steps: Sequence[float] | None = None) -> int:
    """``n_c``: ``round(tc_frac N)``, or with ``tc_rule="alpha_bar"`` ``argmin_n |abar_{t_n} - 0.0778|``."""
    if tc_rule == "alpha_bar":
        if abar_of_steps is None:
            raise ValueError("abar_of_steps: tc_rule='alpha_bar' needs the abar of every sampling step")
        return int(np.argmin([abs(float(a) - TC_ALPHA_BAR) for a in abar_of_steps]))
    return int(round(tc_frac * num_steps))


def check_window(n_d: int, n_c: int, num_steps: int, explicit: bool) -> None:
    """Refuse a detection window outside a trajectory of ``num_steps`` steps (``ValueError`` naming the setting).

    ``n_c`` must be a step of the trajectory (``0 <= n_c <= N - 1``: the step where the window closes and TTC
    corrects) and ``0 <= n_d``. A window that holds no step pair (``n_c - n_d < 2``: the pairs are ``n_d < n < n_c``,
    docs/methods/asced.md#D7) is refused when the fractions were chosen (``explicit``); the default fractions on a
    very short trajectory (``N <= 4``) keep an empty window, as before.
    """
    if not 0 <= n_c <= num_steps - 1:
        raise ValueError(f"tc_frac: the window closes at n_c = {n_c}, outside the trajectory's steps 0 .. {num_steps - 1} (N = {num_steps})")
    if n_d < 0:
        raise ValueError(f"td_frac: the window opens at n_d = {n_d} < 0")
    if explicit and n_c - n_d < 2:
        raise ValueError(f"td_frac: the detection window n_d < n < n_c holds no step pair for N = {num_steps} steps (n_d = {n_d}, "
                         f"n_c = {n_c}); choose td_frac and tc_frac at least two steps apart")


def _abar_of_steps(sampler: DDIMSampler) -> list[float]:
    return [sampler.schedule.alphas_cumprod[t] for t in sampler.timesteps]


# ---------------------------------------------------------------------------------------------- the detector's settings
@dataclass(frozen=True)
class DetectorConfig:
    """Settings of ASCED's streaming detector (formulas in :mod:`onmanifold.artifacts.detector`).

    Args:
        quantity: ``"x0"`` (clipped ``x0_hat``, the code) or ``"weighted_score"`` (``w(t) s``, ablation).
        quantize: uint8 frames as the official code (truncation toward zero).
        sigma: Gaussian blur std in pixels (0 disables).
        blur_channels: blur across channels too (the code's quirk; moot for one channel).
        k: robust threshold multiplier (``med + k * 1.4826 * mad``).
        a_min: floor of the threshold in grey levels (guards ``mad = 0``).
        td_frac, tc_frac, tc_rule: the window ``n_d < n < n_c`` of step pairs whose flags are united
            (``n_d = round(td_frac N)``; ``n_c`` by :func:`correction_step`).
        area_min, area_max: a component is kept iff ``area_min < area < area_max`` (strict).
        min_width: ``w``, a component must contain a full ``w x w`` block (1 disables).
        normalization: what a pixel's change is compared with: ``"per-image"`` (the paper's and the official code's
            test, the default), or, beyond the paper (docs/methods/asced.md#V1), ``"reference"`` (the per-pixel median
            and MAD of normal trajectories at that step, :class:`~onmanifold.artifacts.ReferenceChangeStatistics`) or
            ``"batch"`` (the per-pixel median and MAD over the batch's samples at that step).
        pool_pixels: with ``"reference"`` or ``"batch"``, one median and MAD per step pooled over the pixels instead of
            one per pixel.
    """

    quantity: str = "x0"
    quantize: bool = False
    sigma: float = 2.0
    blur_channels: bool = False
    k: float = 3.0
    a_min: float = 1.0
    td_frac: float = 0.24
    tc_frac: float = 0.48
    tc_rule: str = "fraction"
    area_min: int = 100
    area_max: int = 10_000
    min_width: int = 5
    normalization: str = "per-image"
    pool_pixels: bool = False

    def __post_init__(self) -> None:
        _choice(self, "quantity", ("x0", "weighted_score"))
        _number(self, "sigma", 0.0)
        _number(self, "k", 0.0, strict=True)
        _number(self, "a_min", 0.0)
        _fraction(self, "td_frac")
        _fraction(self, "tc_frac")
        if self.td_frac > self.tc_frac:
            raise ValueError(f"td_frac: expected <= tc_frac ({self.tc_frac}), got {self.td_frac}")
        _choice(self, "tc_rule", ("fraction", "alpha_bar"))
        _integer(self, "area_min", 0)
        _integer(self, "area_max", 1)
        if self.area_max <= self.area_min + 1:
            raise ValueError(f"area_max: expected > area_min + 1 (strict band), got area_min={self.area_min}, area_max={self.area_max}")
        _integer(self, "min_width", 1)
        if self.min_width * self.min_width >= self.area_max:
            raise ValueError(f"min_width: a component holding a full {self.min_width}x{self.min_width} block has at least "
                             f"{self.min_width * self.min_width} pixels, not below area_max = {self.area_max}: no component could be kept")
        _choice(self, "normalization", NORMALIZATIONS)
        if not isinstance(self.pool_pixels, bool):
            raise ValueError(f"pool_pixels: expected True or False, got {self.pool_pixels!r}")
        if self.pool_pixels and self.normalization == "per-image":
            raise ValueError("pool_pixels: pools the statistics of normalization 'reference' or 'batch'; the per-image test "
                             "already pools the image's pixels (set normalization or leave pool_pixels False)")

    @property
    def is_default_window(self) -> bool:
        """True when the window is the default fractions' (``td_frac``, ``tc_frac`` and ``tc_rule`` left as they are)."""
        return (self.td_frac, self.tc_frac, self.tc_rule) == (DetectorConfig.td_frac, DetectorConfig.tc_frac, DetectorConfig.tc_rule)

    def check_image_size(self, height: int, width: int, name: str = "config") -> None:
        """Refuse images of ``height x width`` in which this detector cannot work (``ValueError`` naming ``name.<setting>``).

        * the blur reaches ``R = int(4 sigma + 0.5)`` pixels: ``R`` must be below ``min(H, W)`` (a wider kernel
          folds the image onto itself and flattens every change);
        * a kept component contains a full ``w x w`` block (``w <= min(H, W)``) and has more than ``area_min``
          pixels: ``max(area_min + 1, w^2) <= H W``.
        """
        side = min(int(height), int(width))
        radius = int(4.0 * self.sigma + 0.5) if self.sigma > 0 else 0
        if radius >= side:
            raise ValueError(f"{name}.sigma: the blur (sigma = {self.sigma}) reaches {radius} px, not less than the side of the "
                             f"{height}x{width} images; use DetectorConfig.for_resolution({height}) or a smaller sigma")
        if self.min_width > side:
            raise ValueError(f"{name}.min_width: a kept component must hold a full {self.min_width}x{self.min_width} block, "
                             f"larger than the {height}x{width} images")
        smallest = max(self.area_min + 1, self.min_width * self.min_width)
        if smallest > height * width:
            raise ValueError(f"{name}.area_min: a kept component has more than area_min = {self.area_min} pixels (and a full "
                             f"{self.min_width}x{self.min_width} block), more than the {height}x{width} images hold; "
                             f"use DetectorConfig.for_resolution({height}) or a smaller area_min")

    @classmethod
    def for_resolution(cls, height: int, **overrides) -> "DetectorConfig":
        """The spatial parameters scaled to ``height`` (module table); ``overrides`` set any field.

        ``ValueError`` naming ``height`` when square images of that height cannot hold the detector's blur or one
        kept component (:meth:`check_image_size`).
        """
        s = resolution_scale(height)
        width = max(1, round(5 * s))
        if width == 1 and 16 < height < 64:
            width = 2  # 32x32: removes the 1-px streaks of sub-pixel edge shifts
        area_min = max(1, round(100 * s * s))
        params = dict(sigma=max(2.0 * s, 0.5), area_min=area_min, area_max=max(round(10_000 * s * s), area_min + 2), min_width=width)
        params.update(overrides)
        config = cls(**params)
        try:
            config.check_image_size(height, height)
        except ValueError as e:
            raise ValueError(f"height: {height}x{height} images are too small for the detector: {e}") from None
        return config

    @classmethod
    def code_faithful(cls, **overrides) -> "DetectorConfig":
        """The official code's detector: 256x256 spatial values, uint8 frames, channel-mixing blur, ``a_min = 0``."""
        params = dict(sigma=2.0, area_min=100, area_max=10_000, min_width=5, quantize=True, blur_channels=True, a_min=0.0)
        params.update(overrides)
        return cls(**params)

    def with_(self, **changes) -> "DetectorConfig":
        """A copy with some fields changed (validated again)."""
        return _with(self, changes)

    def window(self, num_steps: int, abar_of_steps: Sequence[float] | None = None) -> tuple[int, int]:
        """``(n_d, n_c)`` for ``num_steps`` steps (``n_d`` capped at ``n_c``)."""
        n_c = correction_step(self.tc_frac, self.tc_rule, num_steps, abar_of_steps)
        return min(int(round(self.td_frac * num_steps)), n_c), n_c

    def steps_of(self, sampler: DDIMSampler) -> tuple[int, int]:
        """``(n_d, n_c)`` for a sampler."""
        return self.window(sampler.num_steps, _abar_of_steps(sampler))


# ---------------------------------------------------------------------------------------------- the correction's settings
@dataclass(frozen=True)
class CorrectionConfig:
    """Settings of TTC and State Replacement (formulas in :mod:`onmanifold.artifacts.correction`).

    Args:
        tc_frac, tc_rule: the correction step ``n_c`` (:func:`correction_step`).
        dilation: ``r``, TTC re-noises inside the mask ``M`` dilated by a ``(2r+1)`` box (``M_d``).
        gamma: perturbation, ``x0' + gamma * xi`` is re-noised (0 in the code).
        eta_c: DDIM eta of the correction step (``None``: keep the sampler's eta).
        x0_source: ``"previous"`` (cached ``x0_hat_{n_c - 1}``, no extra call) or ``"current"``
            (``x0_hat(x_{n_c})``, one extra network call, paper-literal).
    """

    tc_frac: float = 0.48
    tc_rule: str = "fraction"
    dilation: int = 5
    gamma: float = 0.0
    eta_c: float | None = 0.0
    x0_source: str = "previous"

    def __post_init__(self) -> None:
        _fraction(self, "tc_frac")
        _choice(self, "tc_rule", ("fraction", "alpha_bar"))
        _integer(self, "dilation", 0)
        _number(self, "gamma", 0.0)
        if self.eta_c is not None:
            _number(self, "eta_c", 0.0)
        _choice(self, "x0_source", ("previous", "current"))

    @classmethod
    def for_resolution(cls, height: int, **overrides) -> "CorrectionConfig":
        """``dilation = round(5 s)`` for ``height`` (module table); ``overrides`` set any field."""
        params = dict(dilation=round(5 * resolution_scale(height)))
        params.update(overrides)
        return cls(**params)

    def with_(self, **changes) -> "CorrectionConfig":
        """A copy with some fields changed (validated again)."""
        return _with(self, changes)

    def step_of(self, sampler: DDIMSampler) -> int:
        """``n_c`` for a sampler."""
        return correction_step(self.tc_frac, self.tc_rule, sampler.num_steps, _abar_of_steps(sampler))
