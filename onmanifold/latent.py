"""Latent diffusion models (Rombach et al., CVPR 2022): the denoiser runs on autoencoder latents.

:class:`LatentDiffusionModel` is an eps-model on *scaled* latents ``z = s * (E(x) - shift)``
(``s`` = the VAE config's ``scaling_factor``, ``shift`` = its ``shift_factor`` or 0), with

* ``decode(z) = D(z / s + shift)`` (differentiable: DPS and DSG guide latents with pixel-space losses
  through it, see :class:`~onmanifold.losses.DecodedLoss`),
* ``encode(x) = s * (mean of q(z | x) - shift)`` (or a posterior draw),
* ``encode_prompt(prompts)`` when the folder has a text encoder (``text_encoder/`` + ``tokenizer/``,
  Hugging Face ``transformers``, an optional dependency) or a word table
  (:class:`~onmanifold.nets.prompt_table.PromptTable`); otherwise ``cond`` takes prompt embeddings
  ``(B, L, D)`` directly (``D`` = the UNet's cross-attention width).

Latents have no data range: ``data_range = None``, so the sampler never clamps their ``x0_hat``.

:func:`open_stable_diffusion_folder` reads a Stable-Diffusion-layout folder (``unet/``, ``vae/``,
``scheduler/``, optional ``text_encoder/`` + ``tokenizer/``) from disk only (``local_files_only``);
:func:`onmanifold.model.load_diffusion_model` uses it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from .nets.checkpoint import CheckpointError

__all__ = ["LatentDiffusionModel", "StableDiffusionFolder", "open_stable_diffusion_folder", "is_latent_diffusion_folder"]


class LatentDiffusionModel(nn.Module):
    """An eps-model on VAE latents with ``decode``, ``encode`` and ``encode_prompt`` (see the module doc).

    Args:
        eps_model: the denoiser as an eps-model ``(z_t, t, cond) -> eps`` on scaled latents.
        vae: a diffusers ``AutoencoderKL`` (or anything with ``encode(x).latent_dist`` / ``decode(z).sample``).
        scaling_factor, shift_factor: ``z = scaling_factor * (latent - shift_factor)``.
        cond_width: the width ``D`` of the prompt embeddings the denoiser takes (None: no cross-attention).
        prompt_encoder: ``prompts -> (B, L, D)`` embeddings, or None.
    """

    data_range = None  # latents have no range: the sampler never clamps them

    def __init__(
        self,
        eps_model: Callable,
        vae: nn.Module,
        scaling_factor: float,
        shift_factor: float = 0.0,
        cond_width: int | None = None,
        prompt_encoder: Callable[[Sequence[str]], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not (isinstance(scaling_factor, (int, float)) and scaling_factor > 0):
            raise ValueError(f"scaling_factor: expected a positive number, got {scaling_factor!r}")
        self.eps_model = eps_model
        self.vae = vae
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.cond_width = cond_width
        self.prompt_encoder = prompt_encoder

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The latent shape ``(C, h, w)`` the denoiser was built for."""
        return getattr(self.eps_model, "sample_shape", None)

    def check_cond(self, cond: Any, batch: int) -> Any:
        """Validate prompt embeddings ``(B or 1, L, D)`` for a batch of ``batch`` latents (one row is broadcast)."""
        if self.cond_width is None:
            return cond
        if not torch.is_tensor(cond) or not cond.is_floating_point() or cond.dim() != 3:
            got = tuple(cond.shape) if torch.is_tensor(cond) else type(cond).__name__
            raise ValueError(
                f"cond: expected prompt embeddings of shape (batch, tokens, {self.cond_width}) "
                f"(from encode_prompt, or zeros for the unconditional model), got {got}"
            )
        if cond.shape[-1] != self.cond_width:
            raise ValueError(f"cond: the denoiser's cross-attention takes embeddings of width {self.cond_width}, got width {cond.shape[-1]}")
        if cond.shape[0] not in (1, batch):
            raise ValueError(f"cond: expected 1 or {batch} rows of prompt embeddings for {batch} latents, got {cond.shape[0]}")
        if not torch.isfinite(cond).all():
            raise ValueError("cond: the prompt embeddings contain NaN or Inf")
        return cond.expand(batch, *cond.shape[1:])

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self.eps_model(z, t, self.check_cond(cond, z.shape[0]))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``x = D(z / scaling_factor + shift_factor)`` (differentiable in ``z``)."""
        return self.vae.decode(z / self.scaling_factor + self.shift_factor).sample

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """``z = scaling_factor * (m - shift_factor)``, ``m`` the posterior mean of ``q(z | x)`` (a draw if ``sample``)."""
        post = self.vae.encode(x).latent_dist
        m = post.sample(generator=generator) if sample else post.mode()
        return self.scaling_factor * (m - self.shift_factor)

    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompt embeddings ``(B, L, D)`` for ``cond``; ``""`` gives the unconditional (null) embedding."""
        if self.prompt_encoder is None:
            raise ValueError("prompts: this model has no text encoder (no text_encoder/ + tokenizer/ or prompt table); pass prompt embeddings as cond")
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.prompt_encoder(list(prompts))


class _TextEncoderPrompts:
    """``prompts -> last hidden state`` of a Hugging Face text encoder, padded to its maximal length (as Stable Diffusion)."""

    def __init__(self, tokenizer, text_encoder) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        limit = getattr(text_encoder.config, "max_position_embeddings", None)
        self.max_length = int(min(tokenizer.model_max_length, limit)) if limit else int(tokenizer.model_max_length)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"prompts: expected strings, got {type(p).__name__} at position {i}")
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids)[0].float()


@dataclass
class StableDiffusionFolder:
    """The parts of a Stable-Diffusion-layout folder, read from disk."""

    unet: nn.Module
    vae: nn.Module
    scheduler_config: dict
    prompt_encoder: Callable | None
    cond_width: int | None


def is_latent_diffusion_folder(folder: str | os.PathLike) -> bool:
    """True for a Stable-Diffusion-layout folder: a ``vae/`` folder, a ``vae`` entry in ``model_index.json`` or a conditional UNet."""
    folder = Path(folder)
    if (folder / "vae").is_dir():
        return True
    index = _read_json_or_none(folder / "model_index.json")
    if isinstance(index, dict) and _listed(index, "vae"):
        return True
    cfg = _read_json_or_none(folder / "unet" / "config.json")
    return isinstance(cfg, dict) and cfg.get("_class_name") == "UNet2DConditionModel"


def _read_json_or_none(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _listed(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[0] is not None


def _json_object(path: Path, folder: Path) -> dict:
    obj = _read_json_or_none(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(folder)!r}: {path.relative_to(folder)} is missing, not valid JSON or not a JSON object")
    return obj


def open_stable_diffusion_folder(folder: str | os.PathLike) -> StableDiffusionFolder:
    """Read ``unet/``, ``vae/``, ``scheduler/`` and (when present) ``text_encoder/`` + ``tokenizer/`` or the prompt table.

    Nothing reaches the network (``local_files_only=True``; configs are checked to be JSON objects
    first). A missing component raises one :class:`~onmanifold.nets.CheckpointError` naming it.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

    from .nets.prompt_table import PROMPT_TABLE_CONFIG, PromptTable

    folder = Path(folder)
    index = _read_json_or_none(folder / "model_index.json")
    index = index if isinstance(index, dict) else {}
    text_listed = [n for n in ("text_encoder", "tokenizer") if _listed(index, n) or (folder / n).is_dir()]
    required = ["unet", "vae", "scheduler"] + (["text_encoder", "tokenizer"] if text_listed else [])
    missing = [n for n in required if not (folder / n).is_dir()]
    if missing:
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: a Stable-Diffusion-layout folder needs {', '.join(n + '/' for n in required)}; "
            f"missing: {', '.join(n + '/' for n in missing)}"
        )
    for extra in ("text_encoder_2", "tokenizer_2"):
        if (folder / extra).is_dir() or _listed(index, extra):
            raise CheckpointError(f"checkpoint {str(folder)!r}: {extra}/ (a second text encoder, SDXL) is not supported")
    unet_cfg = _json_object(folder / "unet" / "config.json", folder)
    _json_object(folder / "vae" / "config.json", folder)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    scheduler_config = _json_object(sched_path, folder)
    unet_cls = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel}.get(unet_cfg.get("_class_name"))
    if unet_cls is None:
        raise CheckpointError(f"checkpoint {str(folder)!r}: unet/config.json names {unet_cfg.get('_class_name')!r}; expected UNet2DConditionModel or UNet2DModel")
    try:
        unet = unet_cls.from_pretrained(folder / "unet", local_files_only=True, torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: cannot read unet/ or vae/ ({str(e)[:300]})") from e
    unet.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    cond_width = None
    if unet_cls is UNet2DConditionModel:
        cond_width = int(unet.config.encoder_hid_dim or unet.config.cross_attention_dim)
    prompt_encoder = None
    if text_listed:
        prompt_encoder = _open_text_encoder(folder)
    elif (folder / PROMPT_TABLE_CONFIG).is_file():
        prompt_encoder = PromptTable.load(folder)
    if prompt_encoder is not None and cond_width is not None:
        width = int(prompt_encoder.width) if isinstance(prompt_encoder, PromptTable) else int(prompt_encoder.text_encoder.config.hidden_size)
        if width != cond_width:
            raise CheckpointError(f"checkpoint {str(folder)!r}: the text encoder gives embeddings of width {width}, the UNet takes {cond_width}")
    return StableDiffusionFolder(unet, vae, scheduler_config, prompt_encoder, cond_width)


def _open_text_encoder(folder: Path) -> _TextEncoderPrompts:
    try:
        import transformers
    except ImportError as e:
        raise CheckpointError(
            f"checkpoint {str(folder)!r}: has a text encoder, which needs the optional dependency transformers "
            "(pip install 'onmanifold[text]')"
        ) from e
    _json_object(folder / "text_encoder" / "config.json", folder)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        text_encoder = transformers.AutoModel.from_pretrained(folder / "text_encoder", local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: cannot read text_encoder/ or tokenizer/ ({str(e)[:300]})") from e
    return _TextEncoderPrompts(tokenizer, text_encoder.eval().requires_grad_(False))
