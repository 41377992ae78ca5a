"""Model adapters: everything the sampler calls is ``model(x_t, t, cond=None) -> eps``.

* any callable with that signature (a plain ``nn.Module`` included);
* :class:`DiffusersUNetEpsModel` — a diffusers ``UNet2DModel`` whose ``prediction_type`` is
  ``epsilon``, ``v_prediction`` or ``sample``, converted to eps:

      v      -> eps = sqrt(abar_t) * v + sqrt(1 - abar_t) * x_t        (Salimans & Ho 2022)
      sample -> eps = (x_t - sqrt(abar_t) * x0) / sqrt(1 - abar_t)

* :class:`GaussianMixtureModel` — the exact eps of a Gaussian mixture data law. With data
  ``sum_j w_j N(mu_j, s_j^2 I)`` the noised marginal is
  ``p_t = sum_j w_j N(sqrt(abar_t) mu_j, (abar_t s_j^2 + 1 - abar_t) I)``, whose score is closed form,
  and ``eps*(x, t) = -sqrt(1 - abar_t) * grad log p_t(x)`` (Tweedie). Used for exact tests.

* :class:`ClassifierFreeGuidance` — ``eps = e_u + s (e_c - e_u)`` in one batched call (Ho & Salimans 2022).

:func:`load_diffusion_model` opens a bundled model, a diffusers folder or a Stable-Diffusion-layout
folder (a latent model, :class:`~onmanifold.latent.LatentDiffusionModel`) and returns the eps-model
with its :class:`~onmanifold.schedule.NoiseSchedule`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from .schedule import NoiseSchedule

__all__ = [
    "EpsModel",
    "FixedMicroBatch",
    "DiffusersUNetEpsModel",
    "GaussianMixtureModel",
    "ClassifierFreeGuidance",
    "LoadedModel",
    "load_diffusion_model",
    "as_eps_model",
]


class EpsModel(Protocol):
    """``model(x_t, t, cond=None) -> eps``; ``t`` is a ``LongTensor`` of training indices, one per sample."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor: ...


class FixedMicroBatch(nn.Module):
    """Evaluate ``model`` in micro-batches of exactly ``size`` rows (the last one zero-padded).

    CPU kernels (oneDNN convolutions, matmuls) choose their algorithm by batch size, so a sample's
    eps can differ at float rounding (~1e-5) between batch sizes. With every call made at the same
    batch size, each row's result is bit-identical whatever batch it came in (checked by the tests).
    """

    def __init__(self, model: Callable, size: int = 16) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size: expected a positive micro-batch size, got {size}")
        self.model = model
        self.size = int(size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], self.size):
            xb, tb = x[i : i + self.size], t[i : i + self.size]
            cb = cond[i : i + self.size] if torch.is_tensor(cond) and cond.dim() > 0 and cond.shape[0] == x.shape[0] else cond
            k = xb.shape[0]
            if k < self.size:
                pad = self.size - k
                xb = torch.cat([xb, xb.new_zeros(pad, *xb.shape[1:])])
                tb = torch.cat([tb, tb[-1:].expand(pad)])
                if torch.is_tensor(cb) and cb is not cond:
                    cb = torch.cat([cb, cb[-1:].expand(pad, *cb.shape[1:])])
            outs.append(self.model(xb, tb, cb)[:k])
        return torch.cat(outs)


class DiffusersUNetEpsModel(nn.Module):
    """A diffusers ``UNet2DModel`` (or ``UNet2DConditionModel``) as an eps-model.

    Args:
        unet: the diffusers network.
        schedule: the training schedule (needed to convert v / sample predictions).
        prediction_type: 'epsilon', 'v_prediction' or 'sample' (diffusers' scheduler config key).

    ``cond`` is passed as ``class_labels`` to a ``UNet2DModel`` with a class embedding, and as
    ``encoder_hidden_states`` to a ``UNet2DConditionModel``.
    """

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule, prediction_type: str = "epsilon") -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"prediction_type: expected 'epsilon', 'v_prediction' or 'sample', got {prediction_type!r}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        self._conditional_unet = type(unet).__name__ == "UNet2DConditionModel"

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
        expected = self.sample_shape
        if expected is not None and tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x_T: this UNet was trained on samples of shape {expected}, got samples of shape {tuple(x.shape[1:])} "
                "(a start x_T or shape= for another model?)"
            )
        if self._conditional_unet:
            out = self.unet(x, t, encoder_hidden_states=cond).sample
        elif cond is not None:
            out = self.unet(x, t, class_labels=cond).sample
        else:
            out = self.unet(x, t).sample
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
        t = torch.as_tensor(t, dtype=torch.long).expand(x.shape[0])
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
        t = torch.as_tensor(t, dtype=torch.long).expand(x.shape[0])
        m, v = self._params(t)
        gamma = torch.softmax(self.component_log_probs(x, t), dim=1)  # (B, K)
        s = (gamma[:, :, None] * (m - xf[:, None, :]) / v[:, :, None]).sum(1)
        return s.reshape(x.shape).to(x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long).expand(x.shape[0])
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


def as_eps_model(model: Any, schedule: NoiseSchedule | None = None, prediction_type: str = "epsilon") -> Callable:
    """Wrap ``model`` as an eps-model: a diffusers UNet gets :class:`DiffusersUNetEpsModel`, a callable is used as is."""
    if type(model).__name__ in ("UNet2DModel", "UNet2DConditionModel"):
        if schedule is None:
            raise ValueError("schedule: a diffusers UNet needs its NoiseSchedule to be wrapped")
        return DiffusersUNetEpsModel(model, schedule, prediction_type)
    if not callable(model):
        raise TypeError(f"model: expected a callable (x_t, t, cond) -> eps, got {type(model).__name__}")
    return model


def load_diffusion_model(name_or_path: str | os.PathLike) -> LoadedModel:
    """Open a bundled diffusion model (``gmm2d-mlp``, ``digits-unet``, ``shapes-unet``) or a diffusers folder.

    A diffusers folder is a pipeline folder (``unet/`` + ``scheduler/``) or a ``UNet2DModel`` folder
    with a ``scheduler_config.json`` beside it; the schedule and ``prediction_type`` come from the
    scheduler config. A Stable-Diffusion-layout folder (``unet/``, ``vae/``, ``scheduler/``, and
    ``text_encoder/`` + ``tokenizer/`` when present) gives a latent model: ``sample_shape`` is the
    latent shape, ``data_range`` is None (latents are never clamped), and ``decode``/``encode``/
    ``encode_prompt`` go through the VAE and the text encoder. Nothing is downloaded. Raises
    :class:`~onmanifold.nets.CheckpointError` on a missing (naming the component) or corrupt folder.
    """
    from .nets.checkpoint import CheckpointError, load_network, read_json_object, read_metadata, resolve_checkpoint

    folder = resolve_checkpoint(name_or_path)
    meta = read_metadata(folder)
    from .latent import is_latent_diffusion_folder

    if is_latent_diffusion_folder(folder):
        return _load_latent_diffusion_model(folder, meta, str(name_or_path))
    net = load_network(folder)
    trained = _metadata_schedule(meta, folder)
    if type(net).__name__ == "UNet2DModel":
        cfg_path = next((p for p in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json") if p.is_file()), None)
        if cfg_path is None:
            raise CheckpointError(f"checkpoint {str(folder)!r}: no scheduler/scheduler_config.json, cannot know the noise schedule")
        sched_cfg = read_json_object(cfg_path)
        try:
            schedule = NoiseSchedule.from_diffusers(sched_cfg)
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"checkpoint {str(folder)!r}: {cfg_path.name} does not describe a noise schedule ({e})") from e
        c = net.config
        model_T = c.get("num_train_timesteps") if hasattr(c, "get") else None
        for what, T in (("the UNet's config.json (num_train_timesteps)", model_T), ("onmanifold.json (schedule)", trained.T if trained else None)):
            if T is not None and int(T) != schedule.T:
                raise CheckpointError(
                    f"checkpoint {str(folder)!r}: {cfg_path.name} has num_train_timesteps = {schedule.T} but {what} says the model "
                    f"was trained with T = {int(T)}"
                )
        if trained is not None and not torch.allclose(torch.as_tensor(trained.alphas_cumprod), torch.as_tensor(schedule.alphas_cumprod), rtol=1e-6, atol=1e-12):
            raise CheckpointError(f"checkpoint {str(folder)!r}: {cfg_path.name} describes other betas than the schedule in onmanifold.json")
        pred = sched_cfg.get("prediction_type", "epsilon")
        if pred not in ("epsilon", "v_prediction", "sample"):
            raise CheckpointError(f"checkpoint {str(folder)!r}: {cfg_path.name} has prediction_type {pred!r}; expected epsilon, v_prediction or sample")
        eps_model = DiffusersUNetEpsModel(net, schedule, pred)
        return LoadedModel(eps_model, schedule, eps_model.sample_shape, meta, (-1.0, 1.0), str(name_or_path))
    if trained is None:
        raise CheckpointError(f"checkpoint {str(folder)!r}: onmanifold.json has no 'schedule'; is this a diffusion model?")
    dim = int(getattr(net, "config", {}).get("dim", 2))
    return LoadedModel(net, trained, (dim,), meta, None, str(name_or_path))


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

    parts = open_stable_diffusion_folder(folder)
    try:
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
    return LoadedModel(model, schedule, shape, meta, None, name)
