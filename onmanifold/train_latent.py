"""Training of the latent shapes model (``onmanifold train autoencoder`` / ``train latent-diffusion``).

A miniature Stable Diffusion (Rombach et al., CVPR 2022) of the ``shapes`` bed, in two stages:

* :func:`train_autoencoder` — a diffusers ``AutoencoderKL`` from the 32x32 shapes to a 4x8x8
  latent (three encoder blocks, two of them downsampling: 32 -> 16 -> 8), loss per image
  ``||x - D(z)||^2 + beta * KL(q(z | x) || N(0, I))`` with ``z ~ q(z | x)``. The saved config records
  ``scaling_factor = 1 / std(z)`` measured on fresh shapes, as Stable Diffusion does, so the
  diffusion model sees latents of unit scale: ``z_model = scaling_factor * z``.
* :func:`train_latent_diffusion` — a diffusers ``UNet2DConditionModel`` on the scaled latents,
  eps-prediction with Stable Diffusion's ``scaled_linear`` schedule (betas 0.00085 .. 0.012,
  T = 1000), conditioned through cross-attention on a two-token prompt embedding of the shape's
  attributes (:class:`~onmanifold.nets.prompt_table.PromptTable`: a type token and a size token,
  width 32, learned together with the UNet). Condition dropout trains the unconditional model in
  the same network (Ho & Salimans 2022): each token is replaced by the null (zero) token with
  probability ``token_dropout``, and the whole prompt with probability ``cond_dropout``, so both
  ``"circle large"``, ``"circle"`` and the empty prompt are valid inputs and classifier-free
  guidance works.

The result is a Stable-Diffusion-layout folder: ``model_index.json``, ``unet/``, ``vae/``,
``scheduler/``, ``prompt_embeddings.safetensors`` + ``prompt_embeddings.json`` and
``onmanifold.json`` (training metadata). Both stages keep an EMA of the weights (saved), write an
atomic resumable training state every ``save_every`` steps and continue from it with ``resume``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn as nn

from .nets.checkpoint import CheckpointError, write_json_atomic
from .nets.prompt_table import PromptTable
from .train import _data_sampler, _ema_update, _load_training_state, _save_training_state

__all__ = [
    "train_autoencoder",
    "train_latent_diffusion",
    "latent_autoencoder_config",
    "latent_unet_config",
    "latent_scheduler_config",
    "SHAPES_PROMPT_SLOTS",
]

SHAPES_PROMPT_SLOTS = (("circle", "square", "triangle"), ("small", "medium", "large"))
"""The prompt vocabulary of the latent shapes model: slot 0 the type, slot 1 the size (the label columns of the bed)."""


def latent_autoencoder_config() -> dict:
    """``AutoencoderKL`` config of the latent shapes model: 1 x 32 x 32 -> 4 x 8 x 8."""
    return {
        "in_channels": 1,
        "out_channels": 1,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 32,
    }


def latent_unet_config() -> dict:
    """``UNet2DConditionModel`` config of the latent shapes model: 4 x 8 x 8, cross-attention width 32."""
    return {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 16,
    }


def latent_scheduler_config() -> dict:
    """Stable Diffusion's DDIM scheduler settings (``scaled_linear`` betas 0.00085 .. 0.012, T = 1000, no clipping)."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
    }


def _check_positive(**kw) -> None:
    for k, v in kw.items():
        if not v > 0:
            raise ValueError(f"{k}: expected a positive value, got {v}")


@torch.no_grad()
def _latent_std(vae, gen: torch.Generator, n: int = 2048, batch: int = 256) -> float:
    """``std(z)`` of posterior samples ``z ~ q(z | x)`` over ``n`` fresh shapes (what ``scaling_factor`` inverts)."""
    draw = _data_sampler("shapes", gen)
    zs = []
    for i in range(0, n, batch):
        x, _ = draw(min(batch, n - i))
        zs.append(vae.encode(x).latent_dist.sample(generator=gen))
    return float(torch.cat(zs).std())


def train_autoencoder(
    out: str | Path,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    ema_decay: float = 0.999,
    seed: int = 0,
    save_every: int = 250,
    resume: bool = False,
    std_samples: int = 2048,
    command: str = "",
    progress: bool = True,
) -> Path:
    """Train the shapes autoencoder (see the module doc) and save the EMA weights to ``out`` (diffusers layout).

    Loss per image: ``sum_pixels (x - D(z))^2 + kl_weight * KL(q(z|x) || N(0, I))``, averaged over the batch.
    ``std_samples`` fresh shapes measure ``std(z)`` (and, up to 512 of them, the held-out reconstruction RMSE).
    """
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    _check_positive(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, std_samples=std_samples)
    if kl_weight < 0:
        raise ValueError(f"kl_weight: expected >= 0, got {kl_weight}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = AutoencoderKL(**latent_autoencoder_config())
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    draw = _data_sampler("shapes", gen)
    out = Path(out)
    state_path = out / "training-state.pt"
    first, losses = 1, []
    if resume and state_path.exists():
        done, losses = _load_training_state(state_path, model, ema, opt, gen)
        first = done + 1
    t0 = time.time()
    bar = tqdm(range(first, steps + 1), desc="train shapes autoencoder", disable=not progress, mininterval=5, initial=first - 1, total=steps)
    for step in bar:
        x, _ = draw(batch_size)
        post = model.encode(x).latent_dist
        recon = model.decode(post.sample(generator=gen)).sample
        rec = (recon - x).pow(2).flatten(1).sum(1).mean()
        loss = rec + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(ema, model, step, ema_decay)
        losses.append(float(rec.detach()))
        if step % 25 == 0:
            bar.set_postfix(recon=f"{sum(losses[-25:]) / len(losses[-25:]):.3f}")
        if save_every and step % save_every == 0 and step < steps:
            _save_training_state(state_path, step, model, ema, opt, gen, losses)
    ema.eval()
    std = _latent_std(ema, torch.Generator().manual_seed(seed + 1000), n=std_samples)
    ema.register_to_config(scaling_factor=1.0 / std)
    x, _ = _data_sampler("shapes", torch.Generator().manual_seed(seed + 2000))(min(512, std_samples))
    with torch.no_grad():
        rmse = float((ema.decode(ema.encode(x).latent_dist.mode()).sample - x).pow(2).mean().sqrt())
    ema.save_pretrained(out, safe_serialization=True)
    meta = {
        "bed": "shapes",
        "kind": "autoencoder",
        "latent_shape": [4, 8, 8],
        "latent_std": std,
        "scaling_factor": 1.0 / std,
        "heldout_rmse": rmse,
        "train_steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "kl_weight": kl_weight,
        "ema_decay": ema_decay,
        "seed": seed,
        "minutes_this_run": round((time.time() - t0) / 60, 2),
        "final_recon_avg100": sum(losses[-100:]) / max(len(losses[-100:]), 1),
        "command": command,
        "parameters": sum(p.numel() for p in ema.parameters()),
    }
    write_json_atomic(out / "onmanifold.json", meta)
    return out


class _Conditioner(nn.Module):
    """The trained pair: the UNet and its prompt table (one module so that EMA and resuming cover both)."""

    def __init__(self, unet: nn.Module, table: PromptTable) -> None:
        super().__init__()
        self.unet = unet
        self.table = table


def _load_vae(vae_folder: Path):
    from diffusers import AutoencoderKL

    if not (vae_folder / "config.json").is_file():
        raise CheckpointError(f"vae: {str(vae_folder)!r} is not an AutoencoderKL folder (no config.json); run `onmanifold train autoencoder` first")
    return AutoencoderKL.from_pretrained(vae_folder, local_files_only=True, torch_dtype=torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def _encode_dataset(vae, n: int, seed: int, batch: int = 256, progress: bool = True) -> dict[str, torch.Tensor]:
    """Posterior mean and std of ``n`` fresh shapes (drawn from ``seed``) and their ``(type, size)`` labels."""
    from tqdm.auto import tqdm

    draw = _data_sampler("shapes", torch.Generator().manual_seed(seed))
    means, stds, labels = [], [], []
    for i in tqdm(range(0, n, batch), desc="encode shapes to latents", disable=not progress, mininterval=5):
        x, y = draw(min(batch, n - i))
        post = vae.encode(x).latent_dist
        means.append(post.mean)
        stds.append(post.std)
        labels.append(y)
    return {"mean": torch.cat(means), "std": torch.cat(stds), "labels": torch.cat(labels)}


def train_latent_diffusion(
    vae: str | Path,
    out: str | Path,
    steps: int = 5000,
    batch_size: int = 64,
    lr: float = 5e-4,
    ema_decay: float = 0.999,
    cond_dropout: float = 0.1,
    token_dropout: float = 0.1,
    num_latents: int = 30000,
    seed: int = 0,
    save_every: int = 250,
    resume: bool = False,
    half: bool = True,
    command: str = "",
    progress: bool = True,
) -> Path:
    """Train the conditional latent UNet on the latents of the autoencoder in ``vae``; write the SD-layout folder ``out``.

    Loss ``E ||eps - eps_theta(sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, t, e(c'))||^2`` with
    ``z0 = scaling_factor * z``, ``z ~ q(z | x)`` redrawn every step from the stored posterior of
    ``num_latents`` fresh shapes, and ``c'`` the labels after condition dropout (module doc).
    ``half=True`` stores the shipped weights as float16 (they load back as float32).
    """
    import diffusers
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from tqdm.auto import tqdm

    from .schedule import NoiseSchedule

    _check_positive(steps=steps, batch_size=batch_size, lr=lr, ema_decay=ema_decay, num_latents=num_latents)
    for name, p in (("cond_dropout", cond_dropout), ("token_dropout", token_dropout)):
        if not 0 <= p < 1:
            raise ValueError(f"{name}: expected a probability in [0, 1), got {p}")
    out = Path(out)
    vae_model = _load_vae(Path(vae))
    scaling = float(vae_model.config.scaling_factor)
    dataset_path = out / "latent-dataset.pt"
    if dataset_path.exists():
        data = torch.load(dataset_path, map_location="cpu", weights_only=True)
    else:
        data = _encode_dataset(vae_model, num_latents, seed + 1, progress=progress)
        out.mkdir(parents=True, exist_ok=True)
        tmp = dataset_path.with_name(dataset_path.name + ".tmp")
        torch.save(data, tmp)
        tmp.replace(dataset_path)
    n = data["mean"].shape[0]
    scheduler = DDIMScheduler(**latent_scheduler_config())
    schedule = NoiseSchedule.from_diffusers(scheduler)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = _Conditioner(UNet2DConditionModel(**latent_unet_config()), PromptTable(SHAPES_PROMPT_SLOTS, latent_unet_config()["cross_attention_dim"]))
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    state_path = out / "training-state.pt"
    first, losses = 1, []
    if resume and state_path.exists():
        done, losses = _load_training_state(state_path, model, ema, opt, gen)
        first = done + 1
    t0 = time.time()
    bar = tqdm(range(first, steps + 1), desc="train shapes latent diffusion", disable=not progress, mininterval=5, initial=first - 1, total=steps)
    for step in bar:
        idx = torch.randint(0, n, (batch_size,), generator=gen)
        z0 = scaling * (data["mean"][idx] + data["std"][idx] * torch.randn(data["mean"][idx].shape, generator=gen))
        labels = data["labels"][idx].clone()
        labels[torch.rand(labels.shape, generator=gen) < token_dropout] = -1
        labels[torch.rand(batch_size, generator=gen) < cond_dropout] = -1
        t = torch.randint(0, schedule.T, (batch_size,), generator=gen)
        eps = torch.randn(z0.shape, generator=gen)
        pred = model.unet(schedule.add_noise(z0, t, eps), t, encoder_hidden_states=model.table.encode_labels(labels)).sample
        loss = (pred - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(ema, model, step, ema_decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if save_every and step % save_every == 0 and step < steps:
            _save_training_state(state_path, step, model, ema, opt, gen, losses)
    dtype = torch.float16 if half else torch.float32
    ema.unet.to(dtype).save_pretrained(out / "unet", safe_serialization=True)
    vae_model.to(dtype).save_pretrained(out / "vae", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    ema.table.save(out, half=half)
    write_json_atomic(
        out / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": [None, None],
            "tokenizer": [None, None],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        },
    )
    meta = {
        "bed": "shapes",
        "kind": "latent_diffusion",
        "prediction_type": "epsilon",
        "latent_shape": [4, 8, 8],
        "scaling_factor": scaling,
        "prompt_slots": [list(s) for s in SHAPES_PROMPT_SLOTS],
        "cond_dropout": cond_dropout,
        "token_dropout": token_dropout,
        "num_latents": n,
        "train_steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "seed": seed,
        "weights_dtype": str(dtype).replace("torch.", ""),
        "minutes_this_run": round((time.time() - t0) / 60, 2),
        "final_loss_avg100": sum(losses[-100:]) / max(len(losses[-100:]), 1),
        "command": command,
        "parameters": {"unet": sum(p.numel() for p in ema.unet.parameters()), "vae": sum(p.numel() for p in vae_model.parameters())},
        "autoencoder": _read_meta(Path(vae)),
    }
    write_json_atomic(out / "onmanifold.json", meta)
    return out


def _read_meta(folder: Path) -> dict:
    import json

    p = folder / "onmanifold.json"
    return json.loads(p.read_text()) if p.is_file() else {}
