"""Noise schedules, respacing and the DDIM(eta) step coefficients.

A :class:`NoiseSchedule` holds the training betas ``beta_t`` (``t = 0 .. T-1``) and
``alphas_cumprod`` ``abar_t = prod_{s<=t} (1 - beta_s)`` in float64. The forward process is

    x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,   eps ~ N(0, I).

Sampling visits ``N`` respaced training indices ``tau_{N-1} > ... > tau_0`` (training-index
units, as the papers use). After ``tau_0`` the state is clean: ``abar_prev = final_alpha_cumprod``,
1 by default (diffusers' ``set_alpha_to_one=True``; ``False`` gives ``abar_0``, Stable Diffusion's
setting: :meth:`NoiseSchedule.with_final_alpha_cumprod`).

Zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed",
WACV 2024, Alg. 1; diffusers' ``rescale_betas_zero_snr``): ``sqrt(abar)`` is shifted and scaled so
that ``sqrt(abar_{T-1}) = 0`` and ``sqrt(abar_0)`` is kept, :func:`rescale_zero_terminal_snr`; the last
beta is then 1 and ``abar_{T-1} = 0`` (only v- or x0-predicting models give ``x0_hat`` there).

The DDIM(eta) step (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021, eq. 12):

    sigma_t = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)
    mu      = sqrt(abar_prev) * x0_hat + sqrt(1 - abar_prev - sigma_t^2) * eps_hat
    x_prev  = mu + sigma_t * z

With ``eta = 1`` on the full grid (``N = T``) ``sigma_t^2 = beta~_t``, the fixed-small variance of
ancestral DDPM (Ho et al. 2020), and ``mu`` equals the DDPM posterior mean, so one step rule
covers DDPM and DDIM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["NoiseSchedule", "StepCoefficients", "SchedulerSettings", "scheduler_settings", "rescale_zero_terminal_snr", "BETA_SCHEDULES"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
"""The diffusers ``beta_schedule`` values :meth:`NoiseSchedule.from_diffusers` builds (or ``trained_betas``)."""


@dataclass(frozen=True)
class StepCoefficients:
    """Scalars of one DDIM(eta) step from training index ``t`` to ``t_prev`` (-1 = clean)."""

    t: int
    t_prev: int
    abar_t: float
    abar_prev: float
    sigma: float

    @property
    def mean_eps_coeff(self) -> float:
        """``sqrt(1 - abar_prev - sigma^2)``, the weight of ``eps_hat`` in the step mean."""
        return math.sqrt(max(1.0 - self.abar_prev - self.sigma**2, 0.0))


class NoiseSchedule:
    """Betas and cumulative alphas over ``T`` training steps.

    Args:
        betas: 1-D array of ``T`` betas in (0, 1); the last may be exactly 1 (zero terminal SNR,
            :func:`rescale_zero_terminal_snr`), every other below 1.
        kind: a label (``to_config`` writes linear and cosine schedules by their parameters).
        final_alpha_cumprod: ``abar`` of the step after the last (``t_prev = -1``), in (0, 1]; 1 is the
            clean end (diffusers' ``set_alpha_to_one=True``).

    Build one with :meth:`linear`, :meth:`cosine`, :meth:`sigmoid` or :meth:`from_diffusers`.
    """

    def __init__(self, betas: Any, kind: str = "custom", final_alpha_cumprod: float = 1.0) -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise ValueError(f"betas: expected a 1-D array of at least 2 values, got shape {betas.shape}")
        if not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas[:-1] >= 1) or betas[-1] > 1:
            raise ValueError("betas: every value must be finite and in (0, 1) (the last may be 1: zero terminal SNR)")
        final = final_alpha_cumprod
        if isinstance(final, bool) or not isinstance(final, (int, float, np.floating)) or not (0 < float(final) <= 1):
            raise ValueError(f"final_alpha_cumprod: expected a number in (0, 1], got {final!r}")
        self.kind = kind
        self.betas = betas
        self.alphas_cumprod = np.cumprod(1.0 - betas)
        self.final_alpha_cumprod = float(final)
        self._abar_torch = torch.from_numpy(self.alphas_cumprod)

    # ------------------------------------------------------------------ construction
    @classmethod
    def linear(cls, num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Linear betas from ``beta_start`` to ``beta_end`` (Ho et al. 2020; DSG and DPS use 1e-4 .. 0.02, T = 1000)."""
        _check_steps("num_train_steps", num_train_steps)
        return cls(np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64), kind="linear")

    @classmethod
    def cosine(cls, num_train_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Cosine schedule (Nichol & Dhariwal 2021): ``abar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)``, betas capped."""
        _check_steps("num_train_steps", num_train_steps)

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        T = num_train_steps
        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(np.array(betas), kind="cosine")

    @classmethod
    def sigmoid(cls, num_train_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """Sigmoid betas (diffusers' ``sigmoid``, from GeoDiff, Xu et al. 2022):
        ``beta_i = beta_start + (beta_end - beta_start) * sigmoid(-6 + 12 i / (T - 1))``."""
        _check_steps("num_train_steps", num_train_steps)
        u = np.linspace(-6.0, 6.0, num_train_steps, dtype=np.float64)
        return cls(beta_start + (beta_end - beta_start) / (1.0 + np.exp(-u)), kind="sigmoid")

    @classmethod
    def from_diffusers(cls, scheduler: Any) -> "NoiseSchedule":
        """The training schedule of a diffusers DDPM-family scheduler (or its ``config`` / a config dict).

        Reads ``num_train_timesteps``, ``trained_betas`` or ``beta_schedule`` (:data:`BETA_SCHEDULES`
        with ``beta_start``/``beta_end``) and ``rescale_betas_zero_snr``; every value is checked
        (``ValueError`` naming the key). The sampling settings of the config (spacing, offset, final
        alpha, clipping, thresholding, variance) are read by :func:`scheduler_settings`; the schedule
        built here keeps ``final_alpha_cumprod = 1``.
        """
        get = _config_getter(scheduler)
        T = get("num_train_timesteps", 1000)
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ValueError(f"num_train_timesteps: expected an integer >= 2, got {T!r}")
        trained = get("trained_betas", None)
        kind = get("beta_schedule", "linear")
        if trained is not None:
            try:
                betas = np.asarray(trained, dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise ValueError(f"trained_betas: expected a list of numbers, got {str(trained)[:60]!r}") from e
            if betas.ndim != 1 or betas.size != T:
                raise ValueError(f"trained_betas: expected {T} values (num_train_timesteps), got shape {betas.shape}")
            schedule, label = betas, "custom"
        else:
            if kind not in BETA_SCHEDULES:
                raise ValueError(f"beta_schedule: expected one of {', '.join(BETA_SCHEDULES)} (or trained_betas), got {kind!r}")
            start, end = get("beta_start", 1e-4), get("beta_end", 0.02)
            for key, v in (("beta_start", start), ("beta_end", end)):
                if kind != "squaredcos_cap_v2" and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1):
                    raise ValueError(f"{key}: expected a number in (0, 1), got {v!r}")
            if kind == "linear":
                schedule, label = np.linspace(start, end, T, dtype=np.float64), "linear"
            elif kind == "scaled_linear":  # Stable Diffusion's: linear in sqrt(beta)
                schedule, label = np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2, "scaled_linear"
            elif kind == "squaredcos_cap_v2":
                schedule, label = cls.cosine(T).betas, "cosine"
            else:
                schedule, label = cls.sigmoid(T, start, end).betas, "sigmoid"
        rescale = get("rescale_betas_zero_snr", False)
        if not isinstance(rescale, bool):
            raise ValueError(f"rescale_betas_zero_snr: expected true or false, got {rescale!r}")
        if rescale:
            schedule, label = rescale_zero_terminal_snr(schedule), "custom"
        try:
            return cls(schedule, kind=label)
        except ValueError as e:
            raise ValueError(f"{'trained_betas' if trained is not None else 'beta_schedule'}: {e}") from e

    def with_final_alpha_cumprod(self, final_alpha_cumprod: float) -> "NoiseSchedule":
        """The same betas with another ``abar`` after the last step (diffusers' ``set_alpha_to_one=False``: ``abar_0``)."""
        out = NoiseSchedule(self.betas, kind=self.kind, final_alpha_cumprod=final_alpha_cumprod)
        return out

    def to_config(self) -> dict:
        """A JSON-able description (used in checkpoints); ``final_alpha_cumprod`` only when it is not 1."""
        if self.kind == "linear":
            out = {"kind": "linear", "num_train_steps": self.T, "beta_start": float(self.betas[0]), "beta_end": float(self.betas[-1])}
        elif self.kind == "cosine":
            out = {"kind": "cosine", "num_train_steps": self.T}
        else:
            out = {"kind": "custom", "betas": self.betas.tolist()}
        if self.final_alpha_cumprod != 1.0:
            out["final_alpha_cumprod"] = self.final_alpha_cumprod
        return out

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        kind = config.get("kind")
        if kind == "linear":
            out = cls.linear(int(config["num_train_steps"]), float(config["beta_start"]), float(config["beta_end"]))
        elif kind == "cosine":
            out = cls.cosine(int(config["num_train_steps"]))
        elif kind == "custom":
            out = cls(np.asarray(config["betas"]))
        else:
            raise ValueError(f"schedule config: unknown kind {kind!r}")
        final = config.get("final_alpha_cumprod", 1.0)
        return out if final == 1.0 else out.with_final_alpha_cumprod(final)

    # ------------------------------------------------------------------ accessors
    @property
    def T(self) -> int:
        """Number of training steps."""
        return int(self.betas.size)

    def abar(self, t: torch.Tensor | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``abar_t`` gathered at integer training indices ``t`` (tensor of any shape), on ``t``'s device
        (the float64 table is copied to a device once and kept)."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self._abar_on(t.device)[t].to(dtype)

    def _abar_on(self, device: torch.device) -> torch.Tensor:
        if device.type == "cpu":
            return self._abar_torch
        cache = self.__dict__.setdefault("_abar_by_device", {})
        if device not in cache:
            cache[device] = self._abar_torch.to(device)
        return cache[device]

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (``t``: one index per sample)."""
        a = self.abar(t, x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def timesteps(self, num_steps: int, spacing: str = "leading", offset: int = 0) -> list[int]:
        """The respaced training indices, descending, for ``num_steps`` sampling steps.

        ``spacing``:
          * ``"leading"`` (diffusers' default): ``k * (T // N) + offset`` for ``k = N-1 .. 0``;
          * ``"trailing"``: ``round(T - k * T / N) - 1`` for ``k = 0 .. N-1`` (starts at ``T - 1``);
          * ``"linspace"``: ``round(linspace(0, T - 1, N))`` reversed.
        ``num_steps = T`` with any spacing gives the full grid ``T-1 .. 0``.
        """
        _check_steps("num_steps", num_steps)
        T = self.T
        if num_steps > T:
            raise ValueError(f"num_steps: expected at most T = {T}, got {num_steps}")
        if spacing == "leading":
            ratio = T // num_steps
            ts = (np.arange(num_steps) * ratio + offset)[::-1]
        elif spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / num_steps)).astype(np.int64) - 1
        elif spacing == "linspace":
            ts = np.round(np.linspace(0, T - 1, num_steps)).astype(np.int64)[::-1]
        else:
            raise ValueError(f"spacing: expected 'leading', 'trailing' or 'linspace', got {spacing!r}")
        ts = [int(v) for v in ts]
        if len(set(ts)) != len(ts) or min(ts) < 0 or max(ts) >= T:
            raise ValueError(f"num_steps={num_steps}, spacing={spacing!r}, offset={offset}: gives invalid timesteps")
        return ts

    def previous_timesteps(self, timesteps: list[int], rule: str = "next") -> list[int]:
        """``t_prev`` of each step of ``timesteps`` (descending; ``-1``: the step after the last).

        ``rule``:
          * ``"next"``: the next index of the list (DDPMScheduler's ``previous_timestep``; the default of
            :class:`~onmanifold.sampler.DDIMSampler`);
          * ``"stride"``: ``t - T // N`` (negative: -1), what diffusers' ``DDIMScheduler.step`` uses. It
            equals ``"next"`` for leading spacing and for trailing spacing when ``N`` divides ``T``; for
            linspace the step lands on another index than the next step starts from (diffusers issue
            #12633). Offered to reproduce that scheduler exactly.
        """
        ts = [int(t) for t in timesteps]
        if rule == "next":
            return ts[1:] + [-1]
        if rule == "stride":
            stride = self.T // len(ts)
            return [t - stride if t - stride >= 0 else -1 for t in ts]
        raise ValueError(f"previous_timesteps: expected 'next', 'stride' or a list of training indices, got {rule!r}")

    def step_coefficients(self, t: int, t_prev: int, eta: float) -> StepCoefficients:
        """Coefficients of the DDIM(eta) step ``t -> t_prev`` (``t_prev = -1``: after the last step, ``abar_prev = final_alpha_cumprod``)."""
        a_t = float(self.alphas_cumprod[t])
        a_p = self.final_alpha_cumprod if t_prev < 0 else float(self.alphas_cumprod[t_prev])
        var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        sigma = float(eta) * math.sqrt(max(var, 0.0))
        return StepCoefficients(t=int(t), t_prev=int(t_prev), abar_t=a_t, abar_prev=a_p, sigma=sigma)

    @property
    def zero_terminal_snr(self) -> bool:
        """True when ``abar_{T-1} = 0`` (:func:`rescale_zero_terminal_snr`)."""
        return bool(self.alphas_cumprod[-1] == 0.0)

    def __repr__(self) -> str:
        final = "" if self.final_alpha_cumprod == 1.0 else f", final_alpha_cumprod={self.final_alpha_cumprod:.6g}"
        return f"NoiseSchedule(kind={self.kind!r}, T={self.T}{final})"


def rescale_zero_terminal_snr(betas: Any) -> np.ndarray:
    """Betas rescaled to zero terminal SNR (Lin et al., WACV 2024, Alg. 1), float64.

    With ``s_t = sqrt(abar_t)``: ``s'_t = (s_t - s_{T-1}) * s_0 / (s_0 - s_{T-1})`` keeps ``s'_0 = s_0`` and
    makes ``s'_{T-1} = 0``; then ``abar' = s'^2``, ``alpha'_t = abar'_t / abar'_{t-1}``, ``beta' = 1 - alpha'``
    (the last beta is 1).
    """
    betas = np.asarray(betas, dtype=np.float64)
    s = np.sqrt(np.cumprod(1.0 - betas))
    s0, sT = s[0], s[-1]
    s = (s - sT) * s0 / (s0 - sT)
    abar = s**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    out = 1.0 - alphas
    out[-1] = 1.0  # exactly: abar'_{T-1} = 0
    return out


VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")

# schedulers whose model was trained on the discrete DDPM forward process of the config's betas:
# a DDIM(eta) sampler over the same betas is a sampler for their models
DDPM_FAMILY_SCHEDULERS = frozenset({
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "UniPCMultistepScheduler",
    "DEISMultistepScheduler", "DDIMParallelScheduler", "DDPMParallelScheduler", "LCMScheduler", "TCDScheduler", "SASolverScheduler",
})

# the keys read by NoiseSchedule.from_diffusers and scheduler_settings
_READ_KEYS = frozenset({
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "rescale_betas_zero_snr",
    "timestep_spacing", "steps_offset", "set_alpha_to_one", "clip_sample", "clip_sample_range", "thresholding",
    "dynamic_thresholding_ratio", "sample_max_value", "prediction_type", "variance_type", "timestep_type", "use_flow_sigmas",
})


@dataclass(frozen=True)
class SchedulerSettings:
    """The sampling settings of a diffusers scheduler config, checked (:func:`scheduler_settings`).

    The defaults are diffusers' ``DDIMScheduler`` defaults. ``clip_sample`` is None when the config
    does not say (DDIM's default is to clip; :meth:`onmanifold.model.LoadedModel.sampler` then clips
    images and leaves latents unclipped). ``unused_keys`` lists the keys of another scheduler's
    algorithm (PNDM's ``skip_prk_steps``, Euler's ``use_karras_sigmas``, ...): they say how that
    scheduler walks the same noise process, which the DDIM(eta) sampler replaces.
    """

    class_name: str | None = None
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    set_alpha_to_one: bool = True
    clip_sample: bool | None = None
    clip_sample_range: float = 1.0
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    prediction_type: str = "epsilon"
    variance_type: str | None = None
    unused_keys: tuple[str, ...] = ()


def scheduler_settings(scheduler: Any) -> SchedulerSettings:
    """Read and check the sampling settings of a diffusers scheduler (or its config / a config dict).

    Every value is checked; a value with no DDIM(eta) equivalent (a flow-matching scheduler, a
    continuous time, an unknown spacing or prediction type) raises ``ValueError`` naming the key. The
    betas are read by :meth:`NoiseSchedule.from_diffusers`.
    """
    get = _config_getter(scheduler)
    keys = _config_keys(scheduler)
    name = get("_class_name", None) if _config_of(scheduler) is scheduler else type(scheduler).__name__
    if name is not None and name not in DDPM_FAMILY_SCHEDULERS:
        raise ValueError(f"_class_name: {name!r} is not a scheduler of the discrete DDPM noise process (betas over T steps) that a "
                         f"DDIM sampler can run; expected one of {', '.join(sorted(DDPM_FAMILY_SCHEDULERS))}")
    if get("use_flow_sigmas", False):
        raise ValueError("use_flow_sigmas: a flow-matching model has no DDPM noise process; a DDIM sampler cannot run it")
    if get("timestep_type", "discrete") not in ("discrete", None):
        raise ValueError(f"timestep_type: {get('timestep_type')!r} conditions the model on continuous noise levels; expected 'discrete'")

    def choice(key: str, options: tuple, default):
        v = get(key, default)
        if v not in options:
            raise ValueError(f"{key}: expected one of {', '.join(map(str, options))}, got {v!r}")
        return v

    def flag(key: str, default):
        v = get(key, default)
        if v is not None and not isinstance(v, bool):
            raise ValueError(f"{key}: expected true or false, got {v!r}")
        return v

    def number(key: str, default: float, low: float, high: float, low_open: bool = True) -> float:
        v = get(key, default)
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
        if not ok:
            raise ValueError(f"{key}: expected a number in {'(' if low_open else '['}{low:g}, {high:g}], got {v!r}")
        return float(v)

    offset = get("steps_offset", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"steps_offset: expected an integer >= 0, got {offset!r}")
    variance = get("variance_type", None)
    if variance is not None and variance not in VARIANCE_TYPES:
        raise ValueError(f"variance_type: expected one of {', '.join(VARIANCE_TYPES)}, got {variance!r}")
    return SchedulerSettings(
        class_name=name,
        timestep_spacing=choice("timestep_spacing", ("leading", "trailing", "linspace"), "leading"),
        steps_offset=offset,
        set_alpha_to_one=flag("set_alpha_to_one", True),
        clip_sample=flag("clip_sample", None),
        clip_sample_range=number("clip_sample_range", 1.0, 0.0, math.inf),
        thresholding=flag("thresholding", False),
        dynamic_thresholding_ratio=number("dynamic_thresholding_ratio", 0.995, 0.0, 1.0),
        sample_max_value=number("sample_max_value", 1.0, 1.0, math.inf, low_open=False),
        prediction_type=choice("prediction_type", ("epsilon", "v_prediction", "sample"), "epsilon"),
        variance_type=variance,
        unused_keys=tuple(sorted(k for k in keys if not k.startswith("_") and k not in _READ_KEYS)),
    )


def _config_of(scheduler: Any) -> Any:
    return getattr(scheduler, "config", scheduler)


def _config_getter(scheduler: Any):
    """``get(key, default)`` over a scheduler, its ``config`` or a dict; a key present as null gives the default."""
    config = _config_of(scheduler)
    if isinstance(config, dict):
        return lambda k, d=None: d if config.get(k) is None else config[k]
    return lambda k, d=None: d if getattr(config, k, None) is None else getattr(config, k)


def _config_keys(scheduler: Any) -> list[str]:
    config = _config_of(scheduler)
    return list(config.keys()) if isinstance(config, dict) else [k for k in vars(config) if not k.startswith("__")]


def _check_steps(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
