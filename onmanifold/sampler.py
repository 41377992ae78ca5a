"""The one sampling loop, its explicit per-step state and the plugin contract.

Every method of the library (DPS, DSG, Temporal Alignment Guidance and its baselines, ASCED,
recorders, corruptions) is a :class:`SamplerPlugin`. This docstring is the contract between the loop
and its plugins; :meth:`DDIMSampler.sample` enforces, before any work, what can be checked up front.

A run: ``sample()`` checks its arguments and the plugin list (types, update modes), builds one
:class:`RunContext` (sampler, per-sample shape, number of samples, seed, device, dtype, the plugin
list) and calls every plugin's ``setup(run)`` once, in list order. Then, for each batch and step,
every point calls the plugins in list order:

    perturb -> (x_entering recorded) -> before_model -> model call -> after_model
            -> x_prev = mu + sigma_t z -> update -> after_step -> callback(state)

and ``finish(x0, sample_indices)`` after each batch. The model call runs in a gradient island when
some plugin's ``needs_grad(state)`` is true for the step (below).

==================  ==============================================================================
point               what a plugin may do
==================  ==============================================================================
``setup(run)``      validate the sampler (DSG refuses ``eta = 0``), resolve settings that depend on
                    the run (``run.sample_shape``: never from the first batch), reset per-run results
``perturb``         move ``state.x_t`` as part of the process under study (injected noise, drift:
                    :mod:`onmanifold.temporal.corruptions`); the loop then records the result as
                    ``state.x_entering``, the state a step's corrections and diagnostics start from
``before_model``    move ``state.x_t`` (TAG pre-step, ASCED's correction, Langevin); change
                    ``state.t`` (the coefficients are recomputed) or ``state.coeffs`` (a step's own
                    eta: ASCED), or call the network at per-sample times with
                    :meth:`StepState.set_time_per_sample` (Time-Shift Sampler)
``after_model``     change ``eps`` through :meth:`StepState.set_eps` (Epsilon Scaling, CFG), or
                    ``x0_hat``/``eps_hat``/``mu`` together through :meth:`StepState.predict`
                    (Score Clipping)
``update``          move ``state.x_prev`` as declared by ``update_mode`` (below; DPS, DSG, TAG inline;
                    they share :meth:`StepState.loss_gradient`)
``after_step``      move or observe ``state.x_prev`` (TAG post-step, TCS, detectors, recorders)
``finish``          observe the batch's clean samples
==================  ==============================================================================

Update modes: ``x_prev`` enters the ``update`` point as the plain step ``mu + sigma_t z`` and the
plugins move it in list order, each declaring how (:attr:`SamplerPlugin.update_mode`):

===============  ==================================================================  =================
``update_mode``  what the plugin does to ``x_prev``                                  examples
===============  ==================================================================  =================
``"replace"``    sets it from the plain step's ``mu``, ``sigma``, ``noise``           DSG
``"displace"``   adds a displacement to the ``x_prev`` it is handed                  DPS, TAG inline
``None``         leaves it alone (the default; observers)                            recorders
===============  ==================================================================  =================

A replacement after a displacement would silently drop it, so :meth:`DDIMSampler.sample` refuses
an ``update`` override without a declared mode, a list with more than one replacing plugin, and a
replacing plugin after a displacing one, naming the order that keeps every move
(``[DPS, DSG]`` -> ``[DSG, DPS]``).

What a plugin may not do:

* reach into another plugin: what one needs from another passes through a declared field of the
  state (``x_entering``, ``x0_hat``, ``x_prev``, ...) or of the run. ``run.plugins`` serves order
  checks only (TAG's inline ``shift="guided"`` must follow the guidance it shifts by); a composite
  plugin may own and call its parts (:class:`~onmanifold.artifacts.AbnormalScoreCorrection`).
* re-derive the step algebra: ``(x0_hat, eps_hat, mu)`` from a given ``eps`` or ``x0``, a model call
  at another point or time, and a loss gradient at another point are :meth:`StepState.predict`,
  :meth:`StepState.model_at` and :meth:`StepState.loss_gradient_at`, over the one formula
  :meth:`DDIMSampler.mean_from_eps` (time shifts and clamping included).
* draw from torch's global generator: per-sample noise comes from :meth:`StepState.randn_like`
  (the trajectory's generators) or from :func:`onmanifold.random.generator_for` with a stream of
  its own.
* accumulate results across runs: what a plugin records describes the last ``sample()`` call.
* write ``state.x_entering`` or the sampler, or change ``state.t``/``state.coeffs`` after
  ``before_model``; the loop detaches ``x_prev`` after ``update`` and after ``after_step``.

One step, in the notation of Song et al. (DDIM, ICLR 2021), with ``a_t = abar_t``:

    eps     = model(x_t, t, cond)
    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)          clipped if clamp_x0 (below)
    eps_hat = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)        (= eps without clipping, or with clipped_model_output=False)
    mu      = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma_t^2) eps_hat
    x_prev  = mu + sigma_t z,   z ~ N(0, I) drawn once per step (only when sigma_t > 0)

``a_prev`` is ``abar`` of the step's ``t_prev`` (the next timestep of the list by default;
``previous_timesteps="stride"`` reproduces diffusers' ``DDIMScheduler``), and after the last step the
schedule's ``final_alpha_cumprod`` (1, or ``abar_0`` with diffusers' ``set_alpha_to_one=False``).

Clipping ``x0_hat`` (``clamp_x0``): to ``data_range``, or, with ``dynamic_thresholding=(p, s_max)``,
Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3; diffusers' ``thresholding``): per sample
``s = clamp(quantile_p(|x0_hat|), 1, s_max)`` and ``x0_hat <- clamp(x0_hat, -s, s) / s``. The clipped
``x0_hat`` then gives ``eps_hat`` (``clipped_model_output=True``, the default: diffusers'
``use_clipped_model_output=True``, and the only choice for which eta = 1 on the full grid is DDPM's
posterior mean); ``clipped_model_output=False`` keeps the network's ``eps`` in the mean (diffusers'
default ``use_clipped_model_output=False``).

Zero terminal SNR: at a step with ``a_t = 0`` (``t = T - 1`` of a rescaled schedule, see
:mod:`onmanifold.schedule`) ``eps = x_t`` carries no information on ``x0``; the loop takes ``x0_hat``
from the model's own x0 (a v- or x0-predicting :class:`~onmanifold.model.DiffusersUNetEpsModel`,
``full_prediction``) and ``eps_hat = x_t``, so the step stays finite.

Learned variance (``variance="learned_range"``, eta = 1; Nichol & Dhariwal, "Improved Denoising
Diffusion Probabilistic Models", ICML 2021, eq. 15): the network's extra channels ``v`` in [-1, 1] set
the step's noise, ``log sigma_t^2 = f log beta_t + (1 - f) log beta~_t`` with ``f = (v + 1) / 2``,
``beta_t = 1 - a_t / a_prev`` and ``beta~_t = (1 - a_prev) / (1 - a_t) beta_t`` (any respaced grid, as
guided-diffusion); the mean stays the posterior mean (eta = 1). The per-element std is
:attr:`StepState.noise_std`.

Randomness: with ``seed=`` every sample ``i`` owns a generator,
:func:`onmanifold.random.generator_for` ``(seed, i, "trajectory")``; ``x_T`` and each step's ``z``
come from it, so sample ``i`` is the same whatever the batch size or the number of samples drawn
beside it. With ``generator=`` (a ``torch.Generator``) the whole batch draws from one
generator, as diffusers does.

Device and dtype: a run lives on one device in one floating dtype (``run.device``, ``run.dtype``), by
default the model's (:mod:`onmanifold.device`). The generators stay on the CPU and every draw is moved
to the run's device, so a seed gives the same samples on every device; the step's times, ``abar``,
``rows`` and every tensor a plugin, loss, operator or recorder makes live on the run's device.

Gradients: the loop runs under ``torch.no_grad``; when a plugin's :meth:`SamplerPlugin.needs_grad`
says so for a step, the model call of that step runs in an ``enable_grad`` island with
``x_t.requires_grad_()``, and :meth:`StepState.loss_gradient` computes ``grad_{x_t} sum_b L_b`` once
per step and loss, shared by every plugin that asks.
The graph of that model call is what bounds a guided batch's memory; wrap the model in
:class:`onmanifold.memory.MemorySavingModel` (gradient checkpointing in the UNet, chunked VJPs) to trade
compute for it with the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .random import BatchGenerator, PerSampleGenerators
from .schedule import NoiseSchedule, StepCoefficients

__all__ = ["SamplerPlugin", "RunContext", "StepState", "StepPrediction", "DDIMSampler", "sample", "check_update_order", "UPDATE_MODES"]


@dataclass(frozen=True)
class RunContext:
    """What a plugin is told once per :meth:`DDIMSampler.sample` call, in :meth:`SamplerPlugin.setup`.

    Plugins resolve resolution-dependent settings here (never from the first batch) and reset their
    per-run results here (never accumulated across ``sample()`` calls).

    Attributes:
        sampler: the sampler (schedule, timesteps, eta, clamping).
        sample_shape: the per-sample shape ``(C, H, W)`` (or ``(D,)``).
        num_samples: the number of samples of the run.
        seed: the base seed of the per-sample generators (None when one batch ``generator`` was given).
        device, dtype: where and in what precision the state lives.
        plugins: the plugin list of the run, in order (read-only: plugins do not call each other).
    """

    sampler: "DDIMSampler"
    sample_shape: tuple[int, ...]
    num_samples: int
    seed: int | None
    device: torch.device
    dtype: torch.dtype
    plugins: tuple

    def position_of(self, plugin: "SamplerPlugin") -> int:
        """The index of ``plugin`` in the run's plugin list."""
        for i, p in enumerate(self.plugins):
            if p is plugin:
                return i
        raise ValueError("plugin: not part of this run")


@dataclass
class StepState:
    """Everything one step knows, passed to every plugin.

    ``index`` counts the respaced chain from ``N-1`` (noisiest) down to ``0`` (the DSG paper's ``i``);
    ``position`` counts the loop from ``0``. ``t``/``t_prev`` are training indices (``t_prev = -1``:
    the clean end). ``sigma`` is the step's noise std (a float shared by the batch).
    ``x_entering`` is ``x_t`` as it entered the step's corrections: after the ``perturb`` point and
    before any ``before_model`` plugin moved it (set by the loop; read it, never write it).
    """

    sampler: "DDIMSampler"
    model: Callable
    position: int
    index: int
    num_steps: int
    t: int
    t_prev: int
    coeffs: StepCoefficients
    x_t: torch.Tensor
    cond: Any
    sample_indices: list[int]
    rows: torch.Tensor  # positions of this batch within the run (0 .. num_samples - 1): selects per-sample measurements
    rng: Any
    eps: torch.Tensor | None = None
    x0_hat: torch.Tensor | None = None
    eps_hat: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    x_prev: torch.Tensor | None = None
    x_t_graph: torch.Tensor | None = None  # the leaf x_t of the gradient island (None when no plugin asked)
    t_batch: torch.Tensor | None = None  # per-sample times of the model call (time-shift); None: every sample at ``t``
    abar_t_batch: torch.Tensor | None = None  # (B, 1, ...) abar of ``t_batch``, set with it
    x_entering: torch.Tensor | None = None  # x_t after the ``perturb`` point, before any ``before_model`` move (set by the loop)
    variance_output: torch.Tensor | None = None  # the network's learned-variance channels v in [-1, 1] (variance="learned_range")
    _cache: dict = field(default_factory=dict, repr=False)  # private: this step's loss gradients

    @property
    def sigma(self) -> float:
        return self.coeffs.sigma

    @property
    def noise_std(self) -> float | torch.Tensor:
        """The std of the step's noise: ``sigma`` (a float), or per element from the learned variance
        (:meth:`DDIMSampler.learned_range_std`) when the sampler has ``variance="learned_range"``."""
        if self.variance_output is None:
            return self.coeffs.sigma
        return self.sampler.learned_range_std(self.variance_output, self.coeffs)

    @property
    def batch_size(self) -> int:
        return int(self.x_t.shape[0])

    @property
    def is_last(self) -> bool:
        return self.index == 0

    def t_tensor(self, t: int | None = None) -> torch.Tensor:
        """The step's training index as a ``LongTensor[B]``."""
        return torch.full((self.batch_size,), self.t if t is None else t, dtype=torch.long, device=self.x_t.device)

    def model_t(self) -> torch.Tensor:
        """The times the network is called with: ``t_batch`` when a plugin set per-sample times, else ``t``."""
        return self.t_tensor() if self.t_batch is None else self.t_batch

    def set_time_per_sample(self, t: torch.Tensor) -> None:
        """Call the network of this step at per-sample training steps ``t`` (``LongTensor[B]``; before the model call).

        The step's ``x0_hat``/``eps_hat``/``mu`` then use each sample's ``abar_{t_b}``; ``sigma`` and
        ``abar_prev`` stay those of the nominal step (Time-Shift Sampler).
        """
        t = torch.as_tensor(t, dtype=torch.long, device=self.x_t.device)
        if t.shape != (self.batch_size,) or (t < 0).any() or (t >= self.sampler.schedule.T).any():
            raise ValueError(f"t: expected a LongTensor ({self.batch_size},) of training steps in [0, {self.sampler.schedule.T - 1}]")
        self.t_batch = t
        self.abar_t_batch = self.sampler.schedule.abar(t, self.x_t.dtype).reshape(-1, *([1] * (self.x_t.dim() - 1)))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian noise shaped like ``x`` from the per-sample generators (keeps per-sample determinism)."""
        return self.rng.randn(x.shape[1:], dtype=x.dtype, device=x.device)

    def rand_like(self, x: torch.Tensor) -> torch.Tensor:
        """Uniform [0, 1) noise shaped like ``x`` from the per-sample generators."""
        return self.rng.rand(x.shape[1:], dtype=x.dtype, device=x.device)

    # ------------------------------------------------------------------ the step algebra (one home)
    def abar_at(self, t: int | torch.Tensor | None = None, dtype: torch.dtype | None = None) -> float | torch.Tensor:
        """``abar`` of the model time: the step's (per sample after :meth:`set_time_per_sample`) when ``t`` is
        None, else of training step ``t`` (an int, or a ``LongTensor[B]`` giving a ``(B, 1, ...)`` tensor)."""
        if t is None:
            return self.coeffs.abar_t if self.abar_t_batch is None else self.abar_t_batch
        if torch.is_tensor(t) and t.dim() > 0:
            if t.shape != (self.batch_size,):
                raise ValueError(f"t: expected one training step per sample, shape ({self.batch_size},), got {tuple(t.shape)}")
            a = self.sampler.schedule.abar(t.to(self.x_t.device), self.x_t.dtype if dtype is None else dtype)
            return a.reshape(-1, *([1] * (self.x_t.dim() - 1)))
        return float(self.sampler.schedule.alphas_cumprod[int(t)])

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor | None = None, clamp: bool | None = None) -> torch.Tensor:
        """``x0_hat = (x - sqrt(1 - a) eps) / sqrt(a)`` at the model time (``t``: :meth:`abar_at`).

        Clamped to the data range when the sampler clamps (``clamp=None``); ``clamp=False`` gives the
        unclamped Tweedie estimate (what losses with ``clamp_x0 = False`` see).
        """
        return self.sampler.x0_from_eps(x, eps, self.abar_at(t, x.dtype), clamp)

    def eps_from_x0(self, x: torch.Tensor, x0: torch.Tensor, t: int | torch.Tensor | None = None) -> torch.Tensor:
        """``eps_hat = (x - sqrt(a) x0) / sqrt(1 - a)`` at the model time (``t``: :meth:`abar_at`)."""
        return self.sampler.eps_from_x0(x, x0, self.abar_at(t, x.dtype))

    def predict(
        self, x: torch.Tensor, eps: torch.Tensor | None = None, x0: torch.Tensor | None = None, t: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat, mu)`` at the point ``x`` from a given ``eps`` or a given ``x0`` (exactly one).

        From ``eps``: :meth:`DDIMSampler.mean_from_eps` (``x0_hat`` clamped when the sampler clamps).
        From ``x0``: ``x0`` is used as given, ``eps_hat`` is derived from it and ``mu`` is the step mean
        (:meth:`DDIMSampler.mean_from_x0`). ``t`` (default: the model time of the step, per sample after a
        time shift) sets ``abar_t``; ``abar_prev`` and ``sigma`` are always the step's.
        """
        if (eps is None) == (x0 is None):
            raise ValueError("eps, x0: give exactly one of them")
        a = self.abar_at(t, x.dtype)
        if eps is not None:
            return self.sampler.mean_from_eps(x, eps, self.coeffs, a)
        return self.sampler.mean_from_x0(x, x0, self.coeffs, a)

    def model_times(self, t: int | torch.Tensor | None = None) -> torch.Tensor:
        """The ``LongTensor[B]`` of training steps a network call at ``t`` uses (default: :meth:`model_t`)."""
        if t is None:
            return self.model_t()
        if torch.is_tensor(t) and t.dim() > 0:
            return t.to(device=self.x_t.device, dtype=torch.long)
        return self.t_tensor(int(t))

    def model_at(self, x: torch.Tensor, t: int | torch.Tensor | None = None) -> "StepPrediction":
        """One extra network call at the point ``x`` and time ``t``: ``(eps, x0_hat, eps_hat, mu)``.

        ``t``: None (the step's model time, per sample after a time shift), an int or a ``LongTensor[B]``;
        ``x0_hat``/``eps_hat``/``mu`` use that time's ``abar`` and the step's ``abar_prev``/``sigma``
        (:meth:`predict`). Runs under the caller's grad mode; counts nothing (plugins count their own calls).
        """
        eps = self.model(x, self.model_times(t), self.cond)
        return StepPrediction(eps, *self.predict(x, eps=eps, t=t))

    def loss_gradient_at(self, loss_fn: Callable, x: torch.Tensor, t: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g, L)`` at another point: ``g = grad_x sum_b L_b(x0_hat(x))`` through one extra network call at ``(x, t)``.

        ``x0_hat`` is the one :meth:`loss_gradient` would use at ``x``: clamped like the sampler's, or the
        unclamped Tweedie estimate for a loss with ``clamp_x0 = False``. Not cached. Raises
        ``FloatingPointError`` on a non-finite loss or gradient.
        """
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            eps = self.model(xg, self.model_times(t), self.cond)
            x0 = self.x0_from_eps(xg, eps, t, clamp=None if getattr(loss_fn, "clamp_x0", True) is not False else False)
            return self._loss_and_gradient(loss_fn, x0, xg, retain_graph=False)

    def take_plain_step(self) -> None:
        """``x_prev = mu + noise_std z`` with a fresh ``z`` from the per-sample generators (``noise``), or ``mu`` when
        ``sigma = 0``: what the loop does after the ``after_model`` point."""
        if self.sigma > 0:
            self.noise = self.rng.randn(self.x_t.shape[1:], dtype=self.x_t.dtype, device=self.x_t.device)
            self.x_prev = self.mu + self.noise_std * self.noise
        else:
            self.x_prev = self.mu

    def reenter(self, x_t: torch.Tensor, grad: bool) -> None:
        """Take the step again from a new entering state ``x_t`` (time travel, docs/methods/dsg.md#D20).

        The network is called at ``x_t`` (in a gradient island when ``grad``), ``eps``/``x0_hat``/``eps_hat``/``mu``
        and the plain step ``x_prev`` (:meth:`take_plain_step`, a fresh ``z``) are replaced, and this step's
        cached loss gradients are dropped. Same time, coefficients and per-sample times as the step.
        The ``before_model`` and ``after_model`` points are not run again.
        """
        self._cache.clear()
        self.x_t = x_t.detach()
        if grad:
            with torch.enable_grad():
                self.x_t_graph = self.x_t.detach().requires_grad_(True)
                self.sampler._model_call(self.model, self, self.x_t_graph, self.cond)
        else:
            self.x_t_graph = None
            self.sampler._model_call(self.model, self, self.x_t, self.cond)
        if not torch.isfinite(self.eps).all():
            raise FloatingPointError(f"model returned NaN/Inf at step {self.position} of {self.num_steps} (t={self.t}, time travel) "
                                     f"for samples {_bad(self.eps, self.sample_indices)}")
        self.take_plain_step()

    def set_eps(self, eps: torch.Tensor) -> None:
        """Replace ``eps`` and recompute ``x0_hat``, ``eps_hat`` and ``mu`` from it.

        In a gradient island compute the new ``eps`` from ``state.eps`` under ``torch.enable_grad()``
        so loss gradients flow through it (as :class:`~onmanifold.temporal.EpsilonScaling` does).
        """
        self.eps = eps
        with torch.set_grad_enabled(self.x_t_graph is not None):  # keep the gradient island's graph (loss guidance)
            self.x0_hat, self.eps_hat, self.mu = self.predict(self.x_t_graph if self.x_t_graph is not None else self.x_t, eps=eps)

    def loss_gradient(self, loss_fn: Callable, key: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g, L)``: ``g = grad_{x_t} sum_b L_b(x0_hat(x_t))`` through the network, and the per-sample losses ``L``.

        ``loss_fn`` is a :class:`~onmanifold.losses.GuidanceLoss` (called with ``rows``) or a plain
        callable ``x0_hat -> (B,)``.

        The loss sees the (clamped) ``x0_hat`` of the sampler's mean, or the unclamped Tweedie estimate
        when the loss has ``clamp_x0 = False`` (classifier and feature losses; docs/methods/dsg.md#D11).
        Computed once per step and ``key`` (default: the loss object) and shared by every plugin that
        asks (DPS and DSG share it). Needs a plugin whose :meth:`SamplerPlugin.needs_grad` is true for
        this step. Raises ``FloatingPointError`` on a non-finite loss or gradient.
        """
        key = id(loss_fn) if key is None else key
        cached = self._cache.get(("loss_gradient", key))
        if cached is not None:
            return cached
        if self.x_t_graph is None or self.x0_hat is None or not self.x0_hat.requires_grad:
            raise RuntimeError(
                "loss_gradient: this step ran without a gradient island; a plugin must return True from needs_grad(state)"
            )
        with torch.enable_grad():
            x0 = self.x0_hat
            if getattr(loss_fn, "clamp_x0", True) is False:  # e.g. classifier losses see the unclamped Tweedie estimate
                x0 = self.x0_from_eps(self.x_t_graph, self.eps, clamp=False)
            out = self._loss_and_gradient(loss_fn, x0, self.x_t_graph, retain_graph=True)
        self._cache[("loss_gradient", key)] = out
        return out

    def _loss_and_gradient(self, loss_fn: Callable, x0: torch.Tensor, leaf: torch.Tensor, retain_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses at ``x0`` (checked) and their summed gradient w.r.t. ``leaf`` (checked), detached."""
        from .losses import call_loss

        losses = call_loss(loss_fn, x0, self.rows)
        if losses.dim() != 1 or losses.shape[0] != self.batch_size:
            raise ValueError(f"loss_fn: expected per-sample losses of shape ({self.batch_size},), got {tuple(losses.shape)}")
        if not torch.isfinite(losses).all():
            raise FloatingPointError(f"loss_fn: non-finite loss at step t={self.t} for samples {_bad(losses, self.sample_indices)}")
        (g,) = torch.autograd.grad(losses.sum(), leaf, retain_graph=retain_graph)
        if not torch.isfinite(g).all():
            raise FloatingPointError(f"loss gradient: non-finite at step t={self.t} for samples {_bad(g, self.sample_indices)}")
        return g.detach(), losses.detach()


class StepPrediction(NamedTuple):
    """What a network call at a point gives: ``eps`` and the step algebra's ``(x0_hat, eps_hat, mu)`` from it."""

    eps: torch.Tensor
    x0_hat: torch.Tensor
    eps_hat: torch.Tensor
    mu: torch.Tensor


def _sqrt(v):
    return v.sqrt() if torch.is_tensor(v) else math.sqrt(v)


def _bad(x: torch.Tensor, indices: list[int]) -> list[int]:
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    return [indices[i] for i in torch.nonzero(bad).flatten().cpu().tolist()][:10]


class SamplerPlugin:
    """Base class of every sampler plugin; override the points you need (each default does nothing).

    The contract (points, order, update modes, what a plugin may not do) is in the
    :mod:`onmanifold.sampler` module docstring. In short:

    * :meth:`setup` runs once per :meth:`DDIMSampler.sample` call with the :class:`RunContext`:
      validate the sampler, resolve settings from ``run.sample_shape``, reset per-run results.
    * :meth:`perturb`, :meth:`before_model`, :meth:`after_model`, :meth:`update`, :meth:`after_step`
      run at every step in that order, each over the plugin list in order; :meth:`needs_grad` asks
      for the step's gradient island; :meth:`finish` runs once after each batch.
    * A plugin that overrides :meth:`update` declares :attr:`update_mode`: ``"replace"`` (it sets
      ``x_prev`` from the plain step's ``mu``, ``sigma`` and ``noise``, ignoring what it was handed:
      DSG) or ``"displace"`` (it adds a displacement to the ``x_prev`` it was handed: DPS, TAG
      inline); ``None`` (the default) says it never moves ``x_prev`` at that point.
    * Plugins talk through the state and the run only, do their step algebra with the
      :class:`StepState` methods and draw randomness from :mod:`onmanifold.random`.
    """

    update_mode: str | None = None

    def setup(self, run: RunContext) -> None:
        pass

    def perturb(self, state: StepState) -> None:
        pass

    def needs_grad(self, state: StepState) -> bool:
        return False

    def before_model(self, state: StepState) -> None:
        pass

    def after_model(self, state: StepState) -> None:
        pass

    def update(self, state: StepState) -> None:
        pass

    def after_step(self, state: StepState) -> None:
        pass

    def finish(self, x0: torch.Tensor, sample_indices: list[int]) -> None:
        pass


UPDATE_MODES = ("replace", "displace")


def _declares_update_mode(plugin: SamplerPlugin) -> bool:
    return "update_mode" in vars(plugin) or any("update_mode" in vars(k) for k in type(plugin).__mro__ if k is not SamplerPlugin)


def check_update_order(plugins: Sequence[SamplerPlugin]) -> None:
    """Refuse a plugin list whose ``update`` point would silently drop a move (module docstring, update modes).

    Every plugin that overrides ``update`` must declare its :attr:`SamplerPlugin.update_mode`; at most
    one plugin replaces ``x_prev``, and it must come before every plugin that displaces it (a
    replacement listed after a displacement would overwrite it: ``[DPS, DSG]`` drops DPS's move).
    The error names the order that keeps every move.
    """
    names = [type(p).__name__ for p in plugins]
    for p, name in zip(plugins, names):
        mode = p.update_mode
        if mode is not None and mode not in UPDATE_MODES:
            raise ValueError(f"{name}.update_mode: expected 'replace', 'displace' or None, got {mode!r}")
        if type(p).update is not SamplerPlugin.update and not _declares_update_mode(p):
            raise TypeError(
                f"{name}: overrides update() but does not declare update_mode "
                "('replace': sets x_prev from mu, sigma and noise; 'displace': adds to x_prev; None: leaves it alone)"
            )
    replacing = [i for i, p in enumerate(plugins) if p.update_mode == "replace"]
    if len(replacing) > 1:
        raise ValueError(f"plugins: {[names[i] for i in replacing]} all replace x_prev at the update point; each would drop the "
                         "others' move, so at most one replacing plugin may run")
    if replacing:
        r = replacing[0]
        displacing = [i for i in range(r) if plugins[i].update_mode == "displace"]
        if displacing:
            order = names[: displacing[0]] + [names[r]] + [n for i, n in enumerate(names[displacing[0]:], displacing[0]) if i != r]
            raise ValueError(
                f"plugins: in [{', '.join(names)}] {names[r]} replaces x_prev after {[names[i] for i in displacing]} displaced it, "
                f"which would drop their move; list the replacing plugin first: [{', '.join(order)}]"
            )


class DDIMSampler:
    """DDIM(eta) sampling over ``num_steps`` respaced steps of ``schedule``.

    Args:
        schedule: the model's training schedule.
        num_steps: sampling steps ``N`` (``N = T`` and ``eta = 1`` is ancestral DDPM, fixed-small variance).
        eta: 0 deterministic DDIM, 1 ancestral.
        spacing: respacing rule (:meth:`NoiseSchedule.timesteps`).
        clamp_x0: clamp ``x0_hat`` to ``data_range`` (then ``eps_hat`` is recomputed from it). Default
            (None): clamp when there is a data range — and never for a model whose data has none
            (``model.data_range is None``, e.g. latents, :class:`~onmanifold.latent.LatentDiffusionModel`):
            clamping is a property of the model's data, not a default a latent run inherits.
        data_range: the data range, default ``(-1, 1)``; None: the data has no range (no clamping).
        timesteps: explicit descending training indices (overrides ``num_steps``/``spacing``).
        clipped_model_output: with clipping, derive ``eps_hat`` from the clipped ``x0_hat`` (True, the
            default and the historical behaviour; diffusers' ``use_clipped_model_output=True``) or keep
            the network's ``eps`` (False; diffusers' ``DDIMScheduler.step`` default).
        dynamic_thresholding: ``(ratio, max_value)``: clip ``x0_hat`` by Imagen's dynamic thresholding
            instead of clamping to ``data_range`` (module docstring; diffusers' ``thresholding`` with
            ``dynamic_thresholding_ratio`` and ``sample_max_value``); needs clipping on.
        previous_timesteps: ``t_prev`` of each step: ``"next"`` (the next timestep of the list, -1 after
            the last), ``"stride"`` (``t - T // N``, diffusers' ``DDIMScheduler.step``:
            :meth:`NoiseSchedule.previous_timesteps`) or an explicit list of ``N`` indices (-1: the end).
        variance: ``"fixed_small"`` (``sigma_t`` from eta) or ``"learned_range"`` (the model's learned
            variance, eta = 1 only; module docstring).
        micro_batch: if set, the model is evaluated in micro-batches of exactly this size
            (:class:`~onmanifold.prediction.FixedMicroBatch`), so samples are bit-identical whatever the
            batch size; without it the noise is identical per sample and the network's arithmetic may
            differ at float rounding between batch sizes.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int = 50,
        eta: float = 0.0,
        spacing: str = "leading",
        clamp_x0: bool | None = None,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
        timesteps: Sequence[int] | None = None,
        micro_batch: int | None = None,
        clipped_model_output: bool = True,
        dynamic_thresholding: tuple[float, float] | None = None,
        previous_timesteps: str | Sequence[int] = "next",
        variance: str = "fixed_small",
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule: expected a NoiseSchedule, got {type(schedule).__name__}")
        if isinstance(eta, bool) or not (isinstance(eta, (int, float)) and math.isfinite(eta) and 0 <= eta <= 1):
            # eta > 1 is no DDIM variance: sigma_t^2 can exceed 1 - abar_prev and the eps weight of the mean is imaginary
            raise ValueError(f"eta: expected a number in [0, 1] (0 deterministic DDIM, 1 ancestral; above 1 sigma_t^2 can exceed "
                             f"1 - abar_prev, no valid DDIM variance), got {eta!r}")
        if data_range is not None and data_range[0] >= data_range[1]:
            raise ValueError(f"data_range: expected (low, high) with low < high, got {data_range}")
        if clamp_x0 and data_range is None and dynamic_thresholding is None:
            raise ValueError("clamp_x0: True needs a data_range to clamp to, got data_range=None")
        if not isinstance(clipped_model_output, bool):
            raise ValueError(f"clipped_model_output: expected True or False, got {clipped_model_output!r}")
        if dynamic_thresholding is not None:
            ok = isinstance(dynamic_thresholding, (tuple, list)) and len(dynamic_thresholding) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in dynamic_thresholding)
            if not ok or not (0 < dynamic_thresholding[0] <= 1) or dynamic_thresholding[1] < 1:
                raise ValueError(f"dynamic_thresholding: expected (ratio, max_value) with ratio in (0, 1] and max_value >= 1, got {dynamic_thresholding!r}")
            if clamp_x0 is False:
                raise ValueError("dynamic_thresholding: clips x0_hat, so it needs clamp_x0 on (True or unset), got clamp_x0=False")
            dynamic_thresholding = (float(dynamic_thresholding[0]), float(dynamic_thresholding[1]))
        if variance not in ("fixed_small", "learned_range"):
            raise ValueError(f"variance: expected 'fixed_small' or 'learned_range', got {variance!r}")
        if variance == "learned_range" and eta != 1:
            raise ValueError(f"variance: 'learned_range' is the ancestral (DDPM) step's learned variance around the posterior mean, "
                             f"which needs eta = 1, got eta={eta!r}")
        self.schedule = schedule
        self.eta = float(eta)
        self._clamp_requested = True if dynamic_thresholding is not None and clamp_x0 is None else clamp_x0
        self.clamp_x0 = (data_range is not None or dynamic_thresholding is not None) if clamp_x0 is None else bool(clamp_x0)
        self.clipped_model_output = clipped_model_output
        self.dynamic_thresholding = dynamic_thresholding
        self.variance = variance
        self.data_range = None if data_range is None else (float(data_range[0]), float(data_range[1]))
        if timesteps is None:
            self.timesteps = schedule.timesteps(num_steps, spacing)
        else:
            ts = [int(t) for t in timesteps]
            if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 0 or ts[0] >= schedule.T:
                raise ValueError(f"timesteps: expected strictly descending training indices in [0, {schedule.T - 1}]")
            self.timesteps = ts
        self.spacing = spacing
        self.num_steps = len(self.timesteps)
        if isinstance(previous_timesteps, str):
            self.previous_timesteps = schedule.previous_timesteps(self.timesteps, previous_timesteps)
        else:
            prev = [int(t) for t in previous_timesteps]
            if len(prev) != self.num_steps or any(not -1 <= p < t for p, t in zip(prev, self.timesteps)):
                raise ValueError(f"previous_timesteps: expected {self.num_steps} training indices, each in [-1, t) of its step, got {prev}")
            self.previous_timesteps = prev
        if micro_batch is not None and (not isinstance(micro_batch, int) or micro_batch < 1):
            raise ValueError(f"micro_batch: expected a positive integer or None, got {micro_batch!r}")
        self.micro_batch = micro_batch

    def without_clamping(self) -> "DDIMSampler":
        """The same sampler (schedule, timesteps, eta, micro-batching) for data without a range: ``x0_hat`` never clamped."""
        return DDIMSampler(self.schedule, eta=self.eta, spacing=self.spacing, clamp_x0=False, data_range=None,
                           timesteps=self.timesteps, micro_batch=self.micro_batch, clipped_model_output=self.clipped_model_output,
                           previous_timesteps=self.previous_timesteps, variance=self.variance)

    @property
    def stochastic(self) -> bool:
        """True when some step injects noise (``sigma_t > 0``)."""
        return any(self.coefficients(p).sigma > 0 for p in range(self.num_steps))

    def coefficients(self, position: int, t: int | None = None) -> StepCoefficients:
        """Coefficients of loop position ``position`` (optionally with a replaced current time ``t``)."""
        t_cur = self.timesteps[position] if t is None else int(t)
        return self.schedule.step_coefficients(t_cur, self.previous_timesteps[position], self.eta)

    # ------------------------------------------------------------------ the step algebra (formulas in the module docstring)
    def x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, abar_t: float | torch.Tensor, clamp: bool | None = None) -> torch.Tensor:
        """``x0_hat = (x_t - sqrt(1 - a) eps) / sqrt(a)``, clipped (:meth:`clip_x0`) if ``clamp`` (default: ``clamp_x0``)."""
        x0 = (x_t - _sqrt(1 - abar_t) * eps) / _sqrt(abar_t)
        if self.clamp_x0 if clamp is None else clamp:
            x0 = self.clip_x0(x0)
        return x0

    def clip_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Clip ``x0_hat``: clamp to ``data_range``, or dynamic thresholding (module docstring).

        Thresholding: per sample ``s = clamp(quantile_ratio(|x0|), 1, max_value)`` over all its elements
        (float32 at least), then ``clamp(x0, -s, s) / s``, as diffusers' ``_threshold_sample``.
        """
        if self.dynamic_thresholding is None:
            return x0.clamp(*self.data_range)
        ratio, max_value = self.dynamic_thresholding
        flat = x0.reshape(x0.shape[0], -1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)

    def learned_range_std(self, v: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
        """The step's noise std from the learned-variance channels ``v`` in [-1, 1] (guided-diffusion's ``learned_range``):

            log sigma^2 = f log beta_t + (1 - f) log beta~_t,   f = (v + 1) / 2,
            beta_t = 1 - a_t / a_prev,   beta~_t = max((1 - a_prev) / (1 - a_t) beta_t, 1e-20)

        (Nichol & Dhariwal 2021, eq. 15; ``beta~`` floored as diffusers' ``DDPMScheduler``).
        """
        beta = 1.0 - c.abar_t / c.abar_prev
        beta_tilde = max((1.0 - c.abar_prev) / (1.0 - c.abar_t) * beta, 1e-20)
        frac = (v + 1) / 2
        return torch.exp(0.5 * (frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)))

    @staticmethod
    def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar_t: float | torch.Tensor) -> torch.Tensor:
        """``eps_hat = (x_t - sqrt(a) x0) / sqrt(1 - a)``."""
        return (x_t - _sqrt(abar_t) * x0) / _sqrt(1 - abar_t)

    @staticmethod
    def step_mean(x0: torch.Tensor, eps_hat: torch.Tensor, c: StepCoefficients) -> torch.Tensor:
        """``mu = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma_t^2) eps_hat``."""
        return math.sqrt(c.abar_prev) * x0 + c.mean_eps_coeff * eps_hat

    def mean_from_eps(
        self, x_t: torch.Tensor, eps: torch.Tensor, c: StepCoefficients, abar_t: float | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0_hat, eps_hat, mu)`` of the step from the network's ``eps`` (formulas in the module docstring).

        ``abar_t`` (a float or ``(B, 1, ...)``) replaces ``c.abar_t`` (time-shifted model calls). With
        clipping ``eps_hat`` is re-derived from the clipped ``x0_hat`` (unless ``clipped_model_output``
        is False); without it ``eps_hat = eps``.
        """
        a = c.abar_t if abar_t is None else abar_t
        x0 = self.x0_from_eps(x_t, eps, a)
        eps_hat = self.eps_from_x0(x_t, x0, a) if self.clamp_x0 and self.clipped_model_output else eps
        return x0, eps_hat, self.step_mean(x0, eps_hat, c)

    def mean_from_x0(
        self, x_t: torch.Tensor, x0: torch.Tensor, c: StepCoefficients, abar_t: float | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0, eps_hat, mu)`` of the step from a given clean estimate ``x0`` (used as given, not clamped)."""
        a = c.abar_t if abar_t is None else abar_t
        eps_hat = self.eps_from_x0(x_t, x0, a)
        return x0, eps_hat, self.step_mean(x0, eps_hat, c)

    # ------------------------------------------------------------------ the loop
    def sample(
        self,
        model: Callable,
        x_T: torch.Tensor | None = None,
        *,
        shape: Sequence[int] | None = None,
        num_samples: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        first_index: int = 0,
        plugins: Sequence[SamplerPlugin] = (),
        cond: Any = None,
        batch_size: int | None = None,
        progress: bool = False,
        callback: Callable[[StepState], None] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> torch.Tensor:
        """Run the reverse process and return the clean samples.

        Give either ``x_T`` (a ``(B, ...)`` start) or ``shape`` (per sample) with ``num_samples``.
        Randomness: ``seed`` (per-sample generators for samples ``first_index .. first_index + B - 1``)
        or ``generator`` (one batch generator); ``seed`` defaults to 0 when neither is given.
        ``batch_size`` splits the work into chunks without changing the samples (per-sample seeding).
        ``cond`` is a tensor with one row per sample (chunked along) or any object passed as is.
        ``callback(state)`` is called after every step (k-diffusion style monitoring).

        ``device`` and ``dtype``: where the run's state lives and in what precision
        (:func:`onmanifold.device.run_placement`): by default the model's device (a given ``x_T`` is moved
        there) and ``x_T``'s dtype, else the model's (a float16/bfloat16/float64 model samples with ``shape=``
        in its own precision). The per-sample generators stay on the CPU and their draws are moved to the
        device, so the samples are the same on every device. A tensor ``cond`` is moved to the device.
        ``ValueError`` naming the argument for a device this machine lacks or the model is not on, and for a
        dtype the model's weights are not in.

        A model whose data has no range (``model.data_range is None``: latents) is never clamped: a
        sampler left at the default ``clamp_x0`` runs it as :meth:`without_clamping`; an explicit
        ``clamp_x0=True`` raises ``ValueError``.
        """
        if self.clamp_x0 and getattr(model, "data_range", ()) is None:
            if self._clamp_requested:
                raise ValueError("clamp_x0: the model's data has no range (latents); nothing to clamp x0_hat to. "
                                 "Leave clamp_x0 unset or pass clamp_x0=False")
            return self.without_clamping().sample(
                model, x_T, shape=shape, num_samples=num_samples, seed=seed, generator=generator, first_index=first_index,
                plugins=plugins, cond=cond, batch_size=batch_size, progress=progress, callback=callback, device=device, dtype=dtype,
            )
        plugins = list(plugins)
        for p in plugins:
            if not isinstance(p, SamplerPlugin):
                raise TypeError(f"plugins: expected SamplerPlugin instances, got {type(p).__name__}")
        check_update_order(plugins)
        if x_T is None:
            if shape is None or num_samples is None:
                raise ValueError("x_T or (shape, num_samples): give a starting tensor, or a per-sample shape and a sample count")
            if int(num_samples) < 1:
                raise ValueError(f"num_samples: expected a positive integer, got {num_samples}")
            n = int(num_samples)
        else:
            if not torch.is_tensor(x_T) or x_T.dim() < 2:
                raise ValueError(f"x_T: expected a tensor of shape (batch, ...), got {getattr(x_T, 'shape', type(x_T))}")
            if not torch.isfinite(x_T).all():
                raise ValueError("x_T: contains NaN or Inf")
            n = int(x_T.shape[0])
            shape = tuple(x_T.shape[1:])
        if generator is not None and seed is not None:
            raise ValueError("seed, generator: give one of them, not both")
        if generator is not None and batch_size is not None and batch_size < n:
            raise ValueError("batch_size: chunking needs per-sample seeding (seed=), not a single generator")
        if seed is None and generator is None:
            seed = 0
        from .device import run_placement

        device, dtype = run_placement(model, x_T, device, dtype)
        self._check_model_outputs(model)
        if self.micro_batch is not None:
            from .prediction import FixedMicroBatch

            model = FixedMicroBatch(model, self.micro_batch)
        run = RunContext(
            sampler=self, sample_shape=tuple(int(v) for v in shape), num_samples=n, seed=seed,
            device=device, dtype=dtype, plugins=tuple(plugins),
        )
        for p in plugins:
            p.setup(run)
        bs = n if batch_size is None else int(batch_size)
        if bs < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        outs = []
        chunks = range(0, n, bs)
        bar = tqdm(total=n * self.num_steps, disable=not progress, desc="sampling", unit="step", mininterval=0.5, leave=False)
        try:
            for start in chunks:
                stop = min(start + bs, n)
                indices = list(range(first_index + start, first_index + stop))
                rng = PerSampleGenerators(seed, indices) if generator is None else BatchGenerator(generator, stop - start)
                x = rng.randn(shape, dtype=dtype, device=device) if x_T is None else x_T[start:stop].to(device, dtype).clone()
                c = cond[start:stop] if (torch.is_tensor(cond) and cond.dim() > 0 and cond.shape[0] == n) else cond
                c = c.to(device) if torch.is_tensor(c) else c
                x0 = self._run(model, x, rng, indices, torch.arange(start, stop, device=device), plugins, c, callback, bar)
                for p in plugins:
                    p.finish(x0, indices)
                outs.append(x0)
        finally:
            bar.close()
        return torch.cat(outs)

    def _check_model_outputs(self, model: Callable) -> None:
        """Refuse, before any work, a model that cannot give what the run needs beyond ``eps``: the learned
        variance (``variance="learned_range"``) or ``x0`` at a step with ``abar_t = 0`` (zero terminal SNR)."""
        if self.variance == "learned_range" and not (getattr(model, "learned_variance", False) and hasattr(model, "full_prediction")):
            raise ValueError(f"variance: 'learned_range' needs a model that predicts its variance (a diffusers UNet with out_channels = "
                             f"2 * in_channels as DiffusersUNetEpsModel), got {type(model).__name__}")
        at_zero = [t for t in self.timesteps if self.schedule.alphas_cumprod[t] == 0.0]
        if at_zero and (getattr(model, "prediction_type", "epsilon") == "epsilon" or not hasattr(model, "full_prediction")):
            raise ValueError(f"timesteps: step t = {at_zero[0]} has abar_t = 0 (zero terminal SNR), where eps = x_t says nothing about "
                             f"x0_hat; the model must predict v or x0 (a DiffusersUNetEpsModel with prediction_type v_prediction or "
                             f"sample), got {type(model).__name__} predicting {getattr(model, 'prediction_type', 'epsilon')}")

    def _model_call(self, model: Callable, state: StepState, x: torch.Tensor, cond: Any) -> None:
        """The step's network call: ``eps`` and ``(x0_hat, eps_hat, mu)`` (module docstring).

        At ``abar_t = 0`` ``x0_hat`` is the model's own x0 (clipped like any ``x0_hat``) and with
        ``variance="learned_range"`` the learned-variance channels go to ``state.variance_output``;
        both come from the same one call (``model.full_prediction``).
        """
        at_zero = state.t_batch is None and state.coeffs.abar_t == 0.0
        if self.variance != "learned_range" and not at_zero:
            state.eps = model(x, state.model_t(), cond)
            state.x0_hat, state.eps_hat, state.mu = state.predict(x, eps=state.eps)
            return
        out = model.full_prediction(x, state.model_t(), cond)
        state.eps = out.eps
        if self.variance == "learned_range":
            state.variance_output = out.variance.detach()
        if at_zero:
            state.x0_hat, state.eps_hat, state.mu = state.predict(x, x0=self.clip_x0(out.x0) if self.clamp_x0 else out.x0)
        else:
            state.x0_hat, state.eps_hat, state.mu = state.predict(x, eps=state.eps)

    def _run(self, model, x, rng, indices, rows, plugins, cond, callback, bar) -> torch.Tensor:
        with torch.no_grad():
            for pos, t in enumerate(self.timesteps):
                state = StepState(
                    sampler=self, model=model, position=pos, index=self.num_steps - 1 - pos, num_steps=self.num_steps,
                    t=t, t_prev=self.previous_timesteps[pos],
                    coeffs=self.coefficients(pos), x_t=x, cond=cond, sample_indices=indices, rows=rows, rng=rng,
                )
                for p in plugins:
                    p.perturb(state)
                state.x_entering = state.x_t
                for p in plugins:
                    p.before_model(state)
                if state.t != state.coeffs.t:  # a plugin replaced the step's time (time-shift)
                    state.coeffs = self.coefficients(pos, state.t)
                if any(p.needs_grad(state) for p in plugins):
                    with torch.enable_grad():
                        state.x_t_graph = state.x_t.detach().requires_grad_(True)
                        self._model_call(model, state, state.x_t_graph, cond)
                else:
                    self._model_call(model, state, state.x_t, cond)
                if not torch.isfinite(state.eps).all():
                    raise FloatingPointError(
                        f"model returned NaN/Inf at step {pos} of {self.num_steps} (t={state.t}) for samples {_bad(state.eps, indices)}"
                    )
                for p in plugins:
                    p.after_model(state)
                state.take_plain_step()
                for p in plugins:
                    p.update(state)
                state.x_prev = state.x_prev.detach()
                for p in plugins:
                    p.after_step(state)
                state.x_prev = state.x_prev.detach()
                if not torch.isfinite(state.x_prev).all():
                    raise FloatingPointError(
                        f"NaN/Inf in the state after step {pos} of {self.num_steps} (t={state.t}) for samples {_bad(state.x_prev, indices)}"
                    )
                if callback is not None:
                    callback(state)
                x = state.x_prev
                # drop the graph of this step before the next one
                state.x_t_graph = None
                state._cache.clear()
                bar.update(x.shape[0])
        return x


def sample(model: Callable, schedule: NoiseSchedule, x_T: torch.Tensor | None = None, plugins: Sequence[SamplerPlugin] = (), **kwargs) -> torch.Tensor:
    """Functional form: ``DDIMSampler(schedule, num_steps, eta, ...).sample(model, x_T, plugins=...)``.

    Sampler options (``num_steps``, ``eta``, ``spacing``, ``clamp_x0``, ``data_range``, ``timesteps``)
    and sampling options (``shape``, ``num_samples``, ``seed``, ``generator``, ``cond``, ...) are
    taken from ``kwargs``.
    """
    sampler_keys = {"num_steps", "eta", "spacing", "clamp_x0", "data_range", "timesteps", "micro_batch", "clipped_model_output",
                    "dynamic_thresholding", "previous_timesteps", "variance"}
    s_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in sampler_keys}
    return DDIMSampler(schedule, **s_kwargs).sample(model, x_T, plugins=plugins, **kwargs)
