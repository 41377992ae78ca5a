"""Model adapters: everything the sampler calls is ``model(x_t, t, cond=None) -> eps``.

* any callable with that signature (a plain ``nn.Module`` included);
* :class:`DiffusersUNetEpsModel` — a diffusers ``UNet2DModel`` whose ``prediction_type`` is
  ``epsilon``, ``v_prediction`` or ``sample``, converted to eps:

      v      -> eps = sqrt(abar_t) * v + sqrt(1 - abar_t) * x_t        (Salimans & Ho 2022)
      sample -> eps = (x_t - sqrt(abar_t) * x0) / sqrt(1 - abar_t)

  Class-conditional UNets (``num_class_embeds``) take class labels as ``cond``; learned-variance
  UNets (``out_channels = 2 C``, the ADM / guided-diffusion form) give eps from their first ``C``
  channels and the variance channels through :meth:`DiffusersUNetEpsModel.full_prediction`.

* :class:`GaussianMixtureModel` — the exact eps of a Gaussian mixture data law. With data
  ``sum_j w_j N(mu_j, s_j^2 I)`` the noised marginal is
  ``p_t = sum_j w_j N(sqrt(abar_t) mu_j, (abar_t s_j^2 + 1 - abar_t) I)``, whose score is closed form,
  and ``eps*(x, t) = -sqrt(1 - abar_t) * grad log p_t(x)`` (Tweedie). Used for exact tests.

* :class:`ClassifierFreeGuidance` — ``eps = e_u + s (e_c - e_u)`` in one batched call (Ho & Salimans 2022).

:func:`load_diffusion_model` opens a bundled model, a diffusers folder or a Stable-Diffusion-layout
folder (a latent model, :class:`~onmanifold.latent.LatentDiffusionModel`) and returns the eps-model
with its :class:`~onmanifold.schedule.NoiseSchedule`; :func:`from_pipeline` does the same for a
diffusers pipeline in memory. :meth:`LoadedModel.sampler` builds the sampler the checkpoint's own
scheduler config describes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol

import torch
import torch.nn as nn

from .prediction import FixedMicroBatch, ModelPrediction
from .schedule import NoiseSchedule

__all__ = [
    "EpsModel",
    "FixedMicroBatch",
    "DiffusersUNetEpsModel",
    "GaussianMixtureModel",
    "ClassifierFreeGuidance",
    "LoadedModel",
    "ModelPrediction",
    "load_diffusion_model",
    "from_pipeline",
    "as_eps_model",
]


class EpsModel(Protocol):
    """``model(x_t, t, cond=None) -> eps``; ``t`` is a ``LongTensor`` of training indices, one per sample."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor: ...


class DiffusersUNetEpsModel(nn.Module):
    """A diffusers ``UNet2DModel`` (or ``UNet2DConditionModel``) as an eps-model.

    Args:
        unet: the diffusers network.
        schedule: the training schedule (needed to convert v / sample predictions).
        prediction_type: 'epsilon', 'v_prediction' or 'sample' (diffusers' scheduler config key).

    ``cond`` is passed as ``class_labels`` to a ``UNet2DModel`` with a class embedding (class labels,
    one per sample, for ``num_class_embeds``), and as ``encoder_hidden_states`` to a
    ``UNet2DConditionModel``. A UNet with ``out_channels = 2 * in_channels`` predicts its variance too
    (:attr:`learned_variance`): eps (or v / x0) is its first ``C`` channels, and
    :meth:`full_prediction` also returns the other ``C``.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon") -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type: expected 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        self._conditional_unet = type(unet).__name__ == "UNet2DConditionModel"
        c = getattr(unet, "config", None)
        cin, cout = getattr(c, "in_channels", None), getattr(c, "out_channels", None)
        if cin is not None and cout is not None and cout not in (cin, 2 * cin):
            raise ValueError(f"unet: out_channels = {cout} is neither in_channels = {cin} (eps, v or x0) nor 2 * in_channels "
                             "(and a learned variance); no eps-model reading for it")
        self.learned_variance = bool(cin is not None and cout == 2 * cin)
        k = getattr(c, "num_class_embeds", None)
        self.num_classes = int(k) if k is not None and getattr(c, "class_embed_type", None) is None else None

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """``(C, H, W)`` the UNet was built for (from its config; None when the config does not say)."""
        c = getattr(self.unet, "config", None)
        size, channels = getattr(c, "sample_size", None), getattr(c, "in_channels", None)
        if size is None or channels is None:
            return None
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(channels), int(h), int(w))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out, _ = self._network(x, t, cond)
        return self._eps(out, x, t)

    def full_prediction(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> ModelPrediction:
        """``eps``, the model's own ``x0`` and the variance channels (None without a learned variance), from one call.

        ``x0``: ``sqrt(a) x - sqrt(1 - a) v`` (v), the output (sample), ``(x - sqrt(1 - a) eps) / sqrt(a)``
        (epsilon; undefined at ``abar_t = 0``, where only v- and x0-predicting models give it).
        """
        out, variance = self._network(x, t, cond)
        eps = self._eps(out, x, t)
        a = self.schedule.abar(t, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        if self.prediction_type == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
        elif self.prediction_type == "sample":
            x0 = out
        else:
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return ModelPrediction(eps, x0, variance)

    def _network(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The UNet's output split into the prediction (first ``C`` channels) and the variance channels (or None)."""
        expected = self.sample_shape
        if expected is not None and tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x_T: this UNet was trained on samples of shape {expected}, got samples of shape {tuple(x.shape[1:])} "
                "(a start x_T or shape= for another model?)"
            )
        if self.num_classes is not None:
            self._check_labels(cond, x.shape[0])
        if self._conditional_unet:
            out = self.unet(x, t, encoder_hidden_states=cond).sample
        elif cond is not None:
            out = self.unet(x, t, class_labels=cond).sample
        else:
            out = self.unet(x, t).sample
        if self.learned_variance:
            c = x.shape[1]
            return out[:, :c], out[:, c:]
        return out, None

    def _check_labels(self, cond: Any, batch: int) -> None:
        k = self.num_classes
        if not torch.is_tensor(cond) or cond.dtype in (torch.bool,) or cond.is_floating_point() or cond.is_complex() or cond.shape != (batch,):
            got = f"a tensor of shape {tuple(cond.shape)} and dtype {cond.dtype}" if torch.is_tensor(cond) else repr(cond)[:40]
            raise ValueError(f"cond: this UNet is class-conditional (num_class_embeds = {k}); expected one integer class label per "
                             f"sample, a LongTensor of shape ({batch},), got {got}")
        if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= k):
            raise ValueError(f"cond: class labels must lie in [0, {k - 1}] (num_class_embeds = {k}), got [{int(cond.min())}, {int(cond.max())}]")

    def _eps(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        a = self.schedule.abar(t, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        if self.prediction_type == "v_prediction":
            return a.sqrt() * out + (1 - a).sqrt() * x
        return (x - a.sqrt() * out) / (1 - a).sqrt()


class GaussianMixtureModel(nn.Module):
    """Exact eps-model of the data law ``sum_j w_j N(mu_j, s_j^2 I)`` under ``schedule``.

    Args:
        means: ``(K, d)`` component means (or ``(K, C, H, W)``; flattened internally).
        stds: ``(K,)`` isotropic component standard deviations (or one float).
        weights: ``(K,)`` mixture weights (normalised), default uniform.
        schedule: the diffusion schedule.

    Computations run in float64 and are cast back to the input dtype.
    """

    def __init__(self, means: torch.Tensor, stds: torch.Tensor | float, schedule: NoiseSchedule, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        means = torch.as_tensor(means, dtype=torch.float64)
        K = means.shape[0]
        stds = torch.as_tensor(stds, dtype=torch.float64).expand(K).clone()
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"weights: expected {K} non-negative values with a positive sum, got {weights}")
        if (stds < 0).any():
            raise ValueError("stds: expected non-negative standard deviations")
        self.sample_shape = tuple(means.shape[1:])
        self.register_buffer("means", means.reshape(K, -1))
        self.register_buffer("stds", stds)
        self.register_buffer("weights", weights / weights.sum())
        self.schedule = schedule

    def _params(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.schedule.abar(t, torch.float64)  # (B,)
        m = a.sqrt()[:, None, None] * self.means[None]  # (B, K, d)
        v = a[:, None] * self.stds[None] ** 2 + (1 - a)[:, None]  # (B, K)
        return m, v

    def component_log_probs(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(B, K)``: ``log w_j + log N(x; sqrt(abar_t) mu_j, v_j I)``."""
        xf = x.reshape(x.shape[0], -1).double()
        t = torch.as_tensor(t, dtype=torch.long, device=x.device).expand(x.shape[0])
        m, v = self._params(t)
        d = xf.shape[1]
        sq = (xf[:, None, :] - m).pow(2).sum(-1)
        return self.weights.log()[None] - 0.5 * d * torch.log(2 * math.pi * v) - 0.5 * sq / v

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Exact ``log p_t(x)`` per sample, ``(B,)`` float64 (differentiable in ``x``)."""
        return torch.logsumexp(self.component_log_probs(x, t), dim=1)

    def score(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Exact ``grad_x log p_t(x) = sum_j gamma_j (sqrt(abar_t) mu_j - x) / v_j``, shape of ``x``."""
        xf = x.reshape(x.shape[0], -1).double()
        t = torch.as_tensor(t, dtype=torch.long, device=x.device).expand(x.shape[0])
        m, v = self._params(t)
        gamma = torch.softmax(self.component_log_probs(x, t), dim=1)  # (B, K)
        s = (gamma[:, :, None] * (m - xf[:, None, :]) / v[:, :, None]).sum(1)
        return s.reshape(x.shape).to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long, device=x.device).expand(x.shape[0])
        a = self.schedule.abar(t, torch.float64).reshape(-1, *([1] * (x.dim() - 1)))
        return (-(1 - a).sqrt() * self.score(x, t).double()).to(x.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` exact draws from the data law (float32)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[comp] + self.stds[comp, None] * z
        return x.reshape(n, *self.sample_shape).float()


class ClassifierFreeGuidance(nn.Module):
    """Classifier-free guidance (Ho & Salimans 2022) as an eps-model wrapper.

        eps(x_t, t, c) = e_u + s * (e_c - e_u),   e_c = model(x_t, t, c),   e_u = model(x_t, t, uncond)

    ``s = guidance_scale``: 0 is the unconditional model, 1 the conditional one, ``s > 1`` sharpens
    toward the condition. Both predictions come from ONE network call on the doubled batch
    ``[x_t; x_t]`` with ``[uncond; c]``. The wrapper is a model like any other, so every plugin (DPS,
    DSG, TAG, ASCED, ...) sees the guided ``eps`` and its ``x0_hat``, and loss gradients flow through
    both branches.

    Args:
        model: an eps-model ``(x_t, t, cond) -> eps`` trained with condition dropout.
        guidance_scale: ``s``, a finite number >= 0.
        uncond: the unconditional input: a tensor shaped like one row of ``cond`` (e.g. the null prompt
            embedding ``(1, L, D)`` or ``(L, D)``), broadcast over the batch; or one row per sample.
    """

    def __init__(self, model: Callable, guidance_scale: float, uncond: torch.Tensor) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model: expected a callable (x_t, t, cond) -> eps, got {type(model).__name__}")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"guidance_scale: expected a finite number >= 0, got {guidance_scale!r}")
        if not torch.is_tensor(uncond):
            raise ValueError(f"uncond: expected a tensor (the unconditional input, e.g. the null prompt embedding), got {type(uncond).__name__}")
        if uncond.is_floating_point() and not torch.isfinite(uncond).all():
            raise ValueError("uncond: contains NaN or Inf")
        self.model = model
        self.guidance_scale = float(guidance_scale)
        self.register_buffer("uncond", uncond.detach().clone(), persistent=False)
        if hasattr(model, "data_range"):  # the data's range (None for latents) stays visible to the sampler
            self.data_range = model.data_range

    def _uncond_rows(self, cond: torch.Tensor) -> torch.Tensor:
        u, b = self.uncond, cond.shape[0]
        if u.shape == cond.shape[1:]:
            u = u.unsqueeze(0)
        if u.dim() != cond.dim() or u.shape[1:] != cond.shape[1:] or u.shape[0] not in (1, b):
            raise ValueError(f"uncond: shape {tuple(self.uncond.shape)} does not match cond of shape {tuple(cond.shape)} "
                             f"(expected {tuple(cond.shape[1:])}, (1, ...) or ({b}, ...))")
        return u.to(cond.dtype).expand(b, *cond.shape[1:])

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if not torch.is_tensor(cond) or cond.dim() == 0:
            raise ValueError(f"cond: classifier-free guidance needs a condition tensor with one row per sample (or one row), got "
                             f"{tuple(cond.shape) if torch.is_tensor(cond) else type(cond).__name__}")
        b = x.shape[0]
        if cond.shape[0] == 1 and b > 1:
            cond = cond.expand(b, *cond.shape[1:])
        if cond.shape[0] != b:
            raise ValueError(f"cond: expected 1 or {b} rows for a batch of {b}, got {cond.shape[0]}")
        t = torch.as_tensor(t, device=x.device).expand(b) if torch.as_tensor(t).dim() == 0 else t
        eps = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([self._uncond_rows(cond), cond]))
        e_u, e_c = eps[:b], eps[b:]
        return e_u + self.guidance_scale * (e_c - e_u)


@dataclass
class LoadedModel:
    """A loaded diffusion model: the eps-model, its schedule, sample shape and metadata.

    Latent models (Stable-Diffusion-layout folders) also ``decode(z)``, ``encode(x)`` and, with a text
    encoder or prompt table, ``encode_prompt(prompts)`` (:class:`~onmanifold.latent.LatentDiffusionModel`).
    """

    model: Callable
    schedule: NoiseSchedule
    sample_shape: tuple[int, ...]
    meta: dict
    data_range: tuple[float, float] | None  # clamp range of x0_hat (None: no clamping, e.g. gmm2d or latents)
    name: str
    scheduler_config: dict | None = None  # the checkpoint's diffusers scheduler config (None: a bundled non-diffusers model)

    def to(self, device: Any = None, dtype: Any = None) -> "LoadedModel":
        """Move the network (a latent model's UNet and VAE too) to ``device`` and cast its floating weights to ``dtype``;
        returns itself. Sampling then runs there, in that precision: the loop follows the model
        (:func:`onmanifold.device.run_placement`). ``ValueError`` naming the argument for a device this machine does
        not have or a dtype that is not a floating type."""
        from .device import check_device, check_dtype

        kwargs = {}
        if device is not None:
            kwargs["device"] = check_device(device, "device")
        if dtype is not None:
            kwargs["dtype"] = check_dtype(dtype, "dtype")
        if not isinstance(self.model, nn.Module):
            raise ValueError(f"model: {self.name!r} is a {type(self.model).__name__}, not a torch module that can be moved")
        self.model.to(**kwargs)
        return self

    def sampler(self, num_steps: int, eta: float = 0.0, **overrides: Any):
        """The :class:`~onmanifold.sampler.DDIMSampler` the checkpoint's scheduler config describes.

        From the config (:func:`~onmanifold.schedule.scheduler_settings`, diffusers' ``DDIMScheduler``
        defaults where it is silent):

        * timesteps: ``timestep_spacing`` (leading / trailing / linspace) with ``steps_offset`` (leading);
          ``t_prev`` is the next timestep of the list (``previous_timesteps="stride"`` reproduces
          ``DDIMScheduler.step``'s ``t - T // N``, which differs from it for linspace and for trailing
          when ``N`` does not divide ``T``);
        * the abar after the last step: 1 with ``set_alpha_to_one`` (the default), else ``abar_0``;
        * ``x0_hat`` clipping: ``thresholding`` (dynamic, ``dynamic_thresholding_ratio``,
          ``sample_max_value``) before ``clip_sample`` (to ``[-clip_sample_range, clip_sample_range]``);
          a config that does not say clips images (DDIM's default) and never latents; a latent model whose
          config asks for clipping is refused (pass ``clamp_x0=False``);
        * ``eps_hat`` from the clipped ``x0_hat`` (``clipped_model_output=True``: diffusers'
          ``use_clipped_model_output=True``, and DDPM's posterior mean at eta = 1);
        * at eta = 1, ``variance_type``: ``fixed_small`` / ``fixed_small_log`` (or none) give sigma_t from
          eta, ``learned_range`` the UNet's learned variance (it must have ``out_channels = 2 C``); the
          other variance types have no DDIM(eta) equivalent and are refused. Below eta = 1 the variance
          is DDIM's, as in ``DDIMScheduler``.
        * the betas (with ``rescale_betas_zero_snr``) and ``prediction_type`` were read at loading.

        With the same ``x_T`` (and the same step noise) the trajectory matches ``DDIMScheduler`` built
        from the config (``use_clipped_model_output=True``) and, at eta = 1 on the full grid,
        ``DDPMScheduler`` (tests/core/test_scheduler_parity.py). Keys of another scheduler's algorithm
        (PNDM's ``skip_prk_steps``, ...) are not read: the sampler is DDIM(eta)
        (:attr:`~onmanifold.schedule.SchedulerSettings.unused_keys`).

        ``overrides`` replace what the config says: ``spacing``, ``steps_offset``, ``timesteps``,
        ``previous_timesteps``, ``final_alpha_cumprod``, ``clamp_x0``, ``data_range``,
        ``dynamic_thresholding``, ``clipped_model_output``, ``variance``, ``micro_batch``.
        Raises ``ValueError`` naming the config key or the argument.
        """
        from .sampler import DDIMSampler
        from .schedule import scheduler_settings

        unknown = sorted(set(overrides) - _SAMPLER_OVERRIDES)
        if unknown:
            raise ValueError(f"{unknown[0]}: not a sampler option; expected one of {', '.join(sorted(_SAMPLER_OVERRIDES))}")
        settings = scheduler_settings(self.scheduler_config or {})
        o = dict(overrides)
        spacing = o.pop("spacing", settings.timestep_spacing)
        offset = o.pop("steps_offset", settings.steps_offset)
        timesteps = o.pop("timesteps", None)
        if timesteps is None:
            timesteps = self.schedule.timesteps(num_steps, spacing, offset)
        final = o.pop("final_alpha_cumprod", 1.0 if settings.set_alpha_to_one else float(self.schedule.alphas_cumprod[0]))
        schedule = self.schedule if final == self.schedule.final_alpha_cumprod else self.schedule.with_final_alpha_cumprod(final)
        clip = settings.clip_sample
        if self.data_range is None:
            if (clip or settings.thresholding) and "clamp_x0" not in o:
                key = "thresholding" if settings.thresholding else "clip_sample"
                raise ValueError(f"{key}: the scheduler config of {self.name!r} clips x0_hat, but it is a latent model (no data range, "
                                 "latents are never clipped); pass clamp_x0=False to sample without clipping")
            clamp = o.pop("clamp_x0", False)
        else:
            clamp = o.pop("clamp_x0", True if clip is None else (clip or settings.thresholding))
        r = settings.clip_sample_range
        data_range = o.pop("data_range", (-r, r) if clamp else self.data_range)
        thresholding = (settings.dynamic_thresholding_ratio, settings.sample_max_value) if settings.thresholding and clamp else None
        thresholding = o.pop("dynamic_thresholding", thresholding)
        variance = o.pop("variance", None)
        if variance is None:
            variance = "fixed_small"
            if eta == 1 and settings.variance_type not in (None, "fixed_small", "fixed_small_log"):
                if settings.variance_type != "learned_range":
                    raise ValueError(f"variance_type: {settings.variance_type!r} (DDPMScheduler) has no DDIM(eta) equivalent at eta = 1; "
                                     "the sampler offers fixed_small (sigma_t^2 = beta~_t) and learned_range (pass variance='fixed_small' to use it)")
                if not getattr(self.model, "learned_variance", False):
                    raise ValueError(f"variance_type: the scheduler config of {self.name!r} says learned_range, but its UNet predicts no "
                                     "variance (out_channels = in_channels)")
                variance = "learned_range"
        if settings.prediction_type == "epsilon" and any(schedule.alphas_cumprod[t] == 0.0 for t in timesteps):
            raise ValueError(f"rescale_betas_zero_snr: the schedule of {self.name!r} reaches abar = 0 at t = {schedule.T - 1}, which "
                             f"these timesteps visit, and an epsilon-predicting model gives no x0_hat there; use v_prediction or "
                             "leading spacing")
        return DDIMSampler(schedule, eta=eta, spacing=spacing, clamp_x0=clamp, data_range=data_range, timesteps=timesteps,
                           dynamic_thresholding=thresholding, previous_timesteps=o.pop("previous_timesteps", "next"),
                           clipped_model_output=o.pop("clipped_model_output", True), variance=variance, micro_batch=o.pop("micro_batch", None))

    def _latent(self, what: str):
        if not all(hasattr(self.model, a) for a in ("decode", "encode", "encode_prompt")):
            raise ValueError(f"model: {self.name!r} is not a latent model; {what} needs a Stable-Diffusion-layout folder (unet/, vae/, scheduler/)")
        return self.model

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images through the VAE decoder (scaling factor undone); differentiable."""
        return self._latent("decode").decode(z)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """Images -> scaled latents (posterior mean, or a draw with ``sample=True``)."""
        return self._latent("encode").encode(x, generator=generator, sample=sample)

    def encode_prompt(self, prompts) -> torch.Tensor:
        """Prompts -> embeddings ``(B, L, D)`` to pass as ``cond`` (``""``: the unconditional embedding)."""
        return self._latent("encode_prompt").encode_prompt(prompts)


_SAMPLER_OVERRIDES = frozenset({
    "spacing", "steps_offset", "timesteps", "previous_timesteps", "final_alpha_cumprod", "clamp_x0", "data_range",
    "dynamic_thresholding", "clipped_model_output", "variance", "micro_batch",
})


def as_eps_model(model: Any, schedule: NoiseSchedule | None = None, prediction_type: str = "epsilon") -> Callable:
    """Wrap ``model`` as an eps-model: a diffusers UNet gets :class:`DiffusersUNetEpsModel`, a callable is used as is."""
    if type(model).__name__ in ("UNet2DModel", "UNet2DConditionModel"):
        if schedule is None:
            raise ValueError("schedule: a diffusers UNet needs its NoiseSchedule to be wrapped")
        return DiffusersUNetEpsModel(model, schedule, prediction_type)
    if not callable(model):
        raise TypeError(f"model: expected a callable (x_t, t, cond) -> eps, got {type(model).__name__}")
    return model


def load_diffusion_model(name_or_path: str | os.PathLike, variant: str | None = None) -> LoadedModel:
    """Open a bundled diffusion model (``gmm2d-mlp``, ``digits-unet``, ``shapes-unet``) or a diffusers folder.

    A diffusers folder is a pipeline folder (``model_index.json``, ``unet/`` + ``scheduler/``: DDPM,
    DDIM, ...) or a bare ``UNet2DModel`` folder with a ``scheduler_config.json`` beside it (or in
    ``scheduler/``). The UNet weights may be ``.safetensors`` or ``.bin``, single or sharded
    (``*.index.json``), of a ``variant`` (``"fp16"``: ``diffusion_pytorch_model.fp16.*``;
    :func:`~onmanifold.nets.checkpoint.read_unet_weights`); ``sample_size`` may be ``[H, W]``;
    class-conditional UNets take class labels as ``cond``; learned-variance UNets
    (``out_channels = 2 C``) give eps from their first ``C`` channels. The schedule and
    ``prediction_type`` come from the scheduler config, which :meth:`LoadedModel.sampler` reads for the
    sampling settings. A Stable-Diffusion-layout folder (``unet/``, ``vae/``, ``scheduler/``, and
    ``text_encoder/`` + ``tokenizer/`` when present) gives a latent model: ``sample_shape`` is the
    latent shape, ``data_range`` is None (latents are never clamped), and ``decode``/``encode``/
    ``encode_prompt`` go through the VAE and the text encoder. Nothing is downloaded. Raises
    :class:`~onmanifold.nets.CheckpointError` on a missing (naming the component), unsupported (naming
    the key) or corrupt folder.
    """
    from .nets.checkpoint import CheckpointError, load_network, read_json_object, read_metadata, resolve_checkpoint

    folder = resolve_checkpoint(name_or_path)
    meta = read_metadata(folder)
    from .latent import is_latent_diffusion_folder

    if is_latent_diffusion_folder(folder):
        if variant is not None:
            raise CheckpointError(f"checkpoint {str(folder)!r}: variant={variant!r} is not supported for Stable-Diffusion-layout folders")
        return _load_latent_diffusion_model(folder, meta, str(name_or_path))
    net = load_network(folder, variant)
    trained = _metadata_schedule(meta, folder)
    if type(net).__name__ == "UNet2DModel":
        cfg_path = next((p for p in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json") if p.is_file()), None)
        if cfg_path is None:
            raise CheckpointError(f"checkpoint {str(folder)!r}: no scheduler/scheduler_config.json, cannot know the noise schedule")
        sched_cfg = read_json_object(cfg_path)
        return _pixel_loaded(net, sched_cfg, meta, str(name_or_path), f"checkpoint {str(folder)!r}: {cfg_path.name}", CheckpointError, trained)
    if trained is None:
        raise CheckpointError(f"checkpoint {str(folder)!r}: onmanifold.json has no 'schedule'; is this a diffusion model?")
    dim = int(getattr(net, "config", {}).get("dim", 2))
    return LoadedModel(net, trained, (dim,), meta, None, str(name_or_path))


def _pixel_loaded(net: nn.Module, sched_cfg: dict, meta: dict, name: str, where: str, error: type = ValueError,
                  trained: NoiseSchedule | None = None) -> LoadedModel:
    """A pixel-space diffusers UNet with its scheduler config as a :class:`LoadedModel`.

    Every setting of the config is checked now, not at the first sample; ``error`` (naming ``where``
    and the key) otherwise.
    """
    from .schedule import scheduler_settings

    try:
        settings = scheduler_settings(sched_cfg)
        schedule = NoiseSchedule.from_diffusers(sched_cfg)
    except (ValueError, TypeError) as e:
        raise error(f"{where}: {e}") from e
    c = net.config
    model_T = c.get("num_train_timesteps") if hasattr(c, "get") else None
    for what, T in (("the UNet's config.json (num_train_timesteps)", model_T), ("onmanifold.json (schedule)", trained.T if trained else None)):
        if T is not None and int(T) != schedule.T:
            raise error(f"{where} has num_train_timesteps = {schedule.T} but {what} says the model was trained with T = {int(T)}")
    if trained is not None and not torch.allclose(torch.as_tensor(trained.alphas_cumprod), torch.as_tensor(schedule.alphas_cumprod), rtol=1e-6, atol=1e-12):
        raise error(f"{where} describes other betas than the schedule in onmanifold.json")
    try:
        eps_model = DiffusersUNetEpsModel(net, schedule, settings.prediction_type)
    except ValueError as e:
        raise error(f"{where.rsplit(':', 1)[0]}: {e}") from e
    if eps_model.sample_shape is None:
        raise error(f"{where.rsplit(':', 1)[0]}: the UNet's config must give sample_size and in_channels (the sample shape)")
    return LoadedModel(eps_model, schedule, eps_model.sample_shape, meta, (-1.0, 1.0), name, dict(sched_cfg))


def from_pipeline(pipe: Any, name: str = "pipeline") -> LoadedModel:
    """A diffusers pipeline already in memory as a :class:`LoadedModel` (its ``unet`` and ``scheduler``; nothing is read or downloaded).

    Pixel pipelines (``DDPMPipeline``, ``DDIMPipeline``, any pipeline with a ``UNet2DModel`` ``unet``
    and a DDPM-family ``scheduler``) and latent ones (with ``vae``; a ``text_encoder`` + ``tokenizer``
    give ``encode_prompt``). The modules are used as they are (not copied); the sampler settings come
    from ``pipe.scheduler.config`` (:meth:`LoadedModel.sampler`). Raises ``ValueError`` naming what is
    missing or unsupported.
    """
    unet, scheduler = getattr(pipe, "unet", None), getattr(pipe, "scheduler", None)
    missing = [n for n, v in (("unet", unet), ("scheduler", scheduler)) if v is None]
    if missing:
        raise ValueError(f"pipe: expected a diffusers pipeline with a unet and a scheduler, got a {type(pipe).__name__} without {' and '.join(missing)}")
    config = getattr(scheduler, "config", None)
    if not isinstance(config, dict):
        raise ValueError(f"pipe.scheduler: expected a diffusers scheduler with a config, got {type(scheduler).__name__}")
    sched_cfg = {"_class_name": type(scheduler).__name__, **{k: v for k, v in config.items() if not k.startswith("_")}}
    kind = type(unet).__name__
    if getattr(pipe, "vae", None) is not None:
        return _latent_loaded(pipe, sched_cfg, name)
    if kind != "UNet2DModel":
        raise ValueError(f"pipe.unet: expected a UNet2DModel (pixel space) or a pipeline with a vae (latent space), got {kind}")
    return _pixel_loaded(unet, sched_cfg, {}, name, "pipe.scheduler.config")


def _latent_loaded(pipe: Any, sched_cfg: dict, name: str) -> LoadedModel:
    """The latent branch of :func:`from_pipeline`."""
    from .latent import LatentDiffusionModel, _TextEncoderPrompts
    from .schedule import scheduler_settings

    try:
        settings = scheduler_settings(sched_cfg)
        schedule = NoiseSchedule.from_diffusers(sched_cfg)
    except ValueError as e:
        raise ValueError(f"pipe.scheduler.config: {e}") from e
    unet, vae = pipe.unet, pipe.vae
    tok, enc = getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)
    conditional = type(unet).__name__ == "UNet2DConditionModel"
    cond_width = int(unet.config.encoder_hid_dim or unet.config.cross_attention_dim) if conditional else None
    c = vae.config
    model = LatentDiffusionModel(
        DiffusersUNetEpsModel(unet, schedule, settings.prediction_type), vae,
        scaling_factor=float(getattr(c, "scaling_factor", None) or 1.0), shift_factor=float(getattr(c, "shift_factor", None) or 0.0),
        cond_width=cond_width, prompt_encoder=_TextEncoderPrompts(tok, enc) if tok is not None and enc is not None else None,
    )
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return LoadedModel(model, schedule, (int(unet.config.in_channels), int(h), int(w)), {}, None, name, sched_cfg)


def _metadata_schedule(meta: dict, folder) -> NoiseSchedule | None:
    """The training schedule recorded in ``onmanifold.json`` (None when absent), validated."""
    from .nets.checkpoint import CheckpointError

    if "schedule" not in meta:
        return None
    try:
        if not isinstance(meta["schedule"], dict):
            raise TypeError(f"expected an object, got {type(meta['schedule']).__name__}")
        return NoiseSchedule.from_config(meta["schedule"])
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: onmanifold.json has an invalid 'schedule' ({e})") from e


def _load_latent_diffusion_model(folder, meta: dict, name: str) -> LoadedModel:
    """The Stable-Diffusion-layout branch of :func:`load_diffusion_model`."""
    from .latent import LatentDiffusionModel, open_stable_diffusion_folder
    from .nets.checkpoint import CheckpointError

    from .schedule import scheduler_settings

    parts = open_stable_diffusion_folder(folder)
    try:
        scheduler_settings(parts.scheduler_config)
        schedule = NoiseSchedule.from_diffusers(parts.scheduler_config)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: scheduler/scheduler_config.json does not describe a noise schedule ({e})") from e
    pred = parts.scheduler_config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction", "sample"):
        raise CheckpointError(f"checkpoint {str(folder)!r}: scheduler_config.json has prediction_type {pred!r}; expected epsilon, v_prediction or sample")
    c = parts.vae.config
    model = LatentDiffusionModel(
        DiffusersUNetEpsModel(parts.unet, schedule, pred),
        parts.vae,
        scaling_factor=float(getattr(c, "scaling_factor", None) or 1.0),
        shift_factor=float(getattr(c, "shift_factor", None) or 0.0),
        cond_width=parts.cond_width,
        prompt_encoder=parts.prompt_encoder,
    )
    size = parts.unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(parts.unet.config.in_channels), int(h), int(w))
    return LoadedModel(model, schedule, shape, meta, None, name, dict(parts.scheduler_config))
