"""Noise schedules, respacing and the DDIM(eta) step coefficients.

A :class:`NoiseSchedule` holds the training betas ``beta_t`` (``t = 0 .. T-1``) and
``alphas_cumprod`` ``abar_t = prod_{s<=t} (1 - beta_s)`` in float64. The forward process is

    x_t = sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps,   eps ~ N(0, I).

Sampling visits ``N`` respaced training indices ``tau_{N-1} > ... > tau_0`` (training-index
units, as the papers use). After ``tau_0`` the state is clean: ``abar_prev = 1`` (diffusers'
``set_alpha_to_one=True``).

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

__all__ = ["NoiseSchedule", "StepCoefficients"]


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
        betas: 1-D array of ``T`` betas in (0, 1).

    Build one with :meth:`linear`, :meth:`cosine` or :meth:`from_diffusers`.
    """

    def __init__(self, betas: Any, kind: str = "custom") -> None:
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size < 2:
            raise ValueError(f"betas: expected a 1-D array of at least 2 values, got shape {betas.shape}")
        if not np.all(np.isfinite(betas)) or np.any(betas <= 0) or np.any(betas >= 1):
            raise ValueError("betas: every value must be finite and in (0, 1)")
        self.kind = kind
        self.betas = betas
        self.alphas_cumprod = np.cumprod(1.0 - betas)
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
    def from_diffusers(cls, scheduler: Any) -> "NoiseSchedule":
        """Build from a diffusers ``DDPMScheduler`` / ``DDIMScheduler`` (or its ``config``)."""
        config = getattr(scheduler, "config", scheduler)
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        T = int(get("num_train_timesteps", 1000))
        trained = get("trained_betas", None)
        kind = get("beta_schedule", "linear")
        if trained is not None:
            return cls(np.asarray(trained, dtype=np.float64), kind="custom")
        if kind == "linear":
            return cls.linear(T, float(get("beta_start", 1e-4)), float(get("beta_end", 0.02)))
        if kind == "scaled_linear":
            b = np.linspace(float(get("beta_start")) ** 0.5, float(get("beta_end")) ** 0.5, T, dtype=np.float64) ** 2
            return cls(b, kind="scaled_linear")
        if kind == "squaredcos_cap_v2":
            return cls.cosine(T)
        raise ValueError(f"scheduler.config.beta_schedule: unsupported value {kind!r}")

    def to_config(self) -> dict:
        """A JSON-able description (used in checkpoints)."""
        if self.kind == "linear":
            return {"kind": "linear", "num_train_steps": self.T, "beta_start": float(self.betas[0]), "beta_end": float(self.betas[-1])}
        if self.kind == "cosine":
            return {"kind": "cosine", "num_train_steps": self.T}
        return {"kind": "custom", "betas": self.betas.tolist()}

    @classmethod
    def from_config(cls, config: dict) -> "NoiseSchedule":
        kind = config.get("kind")
        if kind == "linear":
            return cls.linear(int(config["num_train_steps"]), float(config["beta_start"]), float(config["beta_end"]))
        if kind == "cosine":
            return cls.cosine(int(config["num_train_steps"]))
        if kind == "custom":
            return cls(np.asarray(config["betas"]))
        raise ValueError(f"schedule config: unknown kind {kind!r}")

    # ------------------------------------------------------------------ accessors
    @property
    def T(self) -> int:
        """Number of training steps."""
        return int(self.betas.size)

    def abar(self, t: torch.Tensor | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``abar_t`` gathered at integer training indices ``t`` (tensor of any shape)."""
        t = torch.as_tensor(t, dtype=torch.long)
        return self._abar_torch[t].to(dtype)

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

    def step_coefficients(self, t: int, t_prev: int, eta: float) -> StepCoefficients:
        """Coefficients of the DDIM(eta) step ``t -> t_prev`` (``t_prev = -1``: the clean end, ``abar_prev = 1``)."""
        a_t = float(self.alphas_cumprod[t])
        a_p = 1.0 if t_prev < 0 else float(self.alphas_cumprod[t_prev])
        var = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        sigma = float(eta) * math.sqrt(max(var, 0.0))
        return StepCoefficients(t=int(t), t_prev=int(t_prev), abar_t=a_t, abar_prev=a_p, sigma=sigma)

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, T={self.T})"


def _check_steps(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
