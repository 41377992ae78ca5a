"""Saving and loading checkpoints: safetensors weights + JSON config, by bundled name or folder.

Two layouts:

* **diffusion UNets** (diffusers pipeline layout): ``model_index.json``, ``unet/config.json``,
  ``unet/diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``;
* **other networks**: ``config.json`` (``{"class": ..., "kwargs": ..., "meta": ...}``) and
  ``model.safetensors``.

Every folder may hold ``onmanifold.json`` with training metadata (command, steps, minutes, ...).
A missing or unreadable checkpoint raises :class:`CheckpointError` naming the path and the cause.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io import OutputSet, write_json_atomic, write_text_atomic

__all__ = [
    "CheckpointError",
    "BUNDLED_DIR",
    "bundled_path",
    "list_bundled",
    "resolve_checkpoint",
    "save_network",
    "load_network",
    "read_metadata",
    "read_json_object",
    "write_json_atomic",  # re-exported from onmanifold.io, the one home of atomic writes
    "write_text_atomic",
]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt."""


def list_bundled() -> list[str]:
    """Names of the checkpoints shipped inside the package."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))


def bundled_path(name: str) -> Path:
    """Folder of the bundled checkpoint ``name``."""
    return BUNDLED_DIR / name


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A bundled name (e.g. ``'digits-unet'``) or a folder path -> an existing folder, else :class:`CheckpointError`."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    b = bundled_path(str(name_or_path))
    if b.is_dir():
        return b
    raise CheckpointError(
        f"checkpoint {str(name_or_path)!r}: neither a folder nor a bundled model; bundled models: {', '.join(list_bundled()) or 'none'}"
    )


def read_metadata(name_or_path: str | os.PathLike) -> dict:
    """The ``onmanifold.json`` training metadata of a checkpoint ({} if absent; :class:`CheckpointError` if not a JSON object)."""
    p = resolve_checkpoint(name_or_path) / "onmanifold.json"
    return read_json_object(p) if p.is_file() else {}


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file, validated before use: it must exist and hold a JSON object.

    Raises :class:`CheckpointError` naming the file otherwise (a string in ``config.json`` must never
    reach diffusers, which would take it for a model name on the network).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: missing file {path.name}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: {path.name} is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: {path.name} must hold a JSON object, got {type(obj).__name__} {str(obj)[:60]!r}")
    return obj



def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file, or a PyTorch ``.bin`` state dict (``torch.load(weights_only=True)``: tensors only)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: missing weights file {path.name}")
    try:
        if path.suffix == ".bin":
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
                raise ValueError("not a state dict of named tensors")
        else:
            state = load_file(str(path))
    except Exception as e:  # safetensors and torch.load raise several types on a truncated or garbled file
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: cannot read {path.name}, the file is corrupt ({str(e)[:200]})") from e
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: weights {bad[:3]} contain NaN or Inf")
    return state


def _network_classes() -> dict[str, type]:
    from . import networks

    return {
        "EpsMLP": networks.EpsMLP,
        "ConvClassifier": networks.ConvClassifier,
        "ResidualClassifier": networks.ResidualClassifier,
        "TimeCNN": networks.TimeCNN,
        "TimeMLP": networks.TimeMLP,
    }


def save_network(model: nn.Module, folder: str | os.PathLike, meta: dict | None = None, scheduler: Any = None, half: bool = False) -> Path:
    """Save ``model`` to ``folder`` (diffusers pipeline layout for a ``UNet2DModel`` + ``scheduler``).

    ``half=True`` stores floating-point weights as float16 (time predictors: half the package size);
    loading casts them back to the network's float32 parameters. The files are written as one
    :class:`~onmanifold.io.OutputSet`: all are staged first, then renamed into place with
    ``onmanifold.json`` last, so a killed run or a full disk never leaves a truncated or mixed checkpoint.
    """
    from safetensors.torch import save as safetensors_bytes

    folder = Path(folder)
    outputs = OutputSet(folder)

    def weights(module: nn.Module, to_half: bool = False) -> bytes:
        state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
        if to_half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        return safetensors_bytes(state, metadata={"format": "pt"})

    if type(model).__name__ == "UNet2DModel":
        import diffusers

        if scheduler is None:
            raise ValueError("scheduler: a UNet2DModel is saved with its diffusers scheduler, got None")
        # the files diffusers' save_pretrained writes (same config text, same safetensors), staged atomically
        outputs.add_bytes("unet/diffusion_pytorch_model.safetensors", weights(model))
        outputs.add_text("unet/config.json", model.to_json_string())
        outputs.add_text("scheduler/scheduler_config.json", scheduler.to_json_string())
        outputs.add_json(
            "model_index.json",
            {
                "_class_name": "DDPMPipeline",
                "_diffusers_version": diffusers.__version__,
                "unet": ["diffusers", "UNet2DModel"],
                "scheduler": ["diffusers", type(scheduler).__name__],
            },
        )
    else:
        name = type(model).__name__
        if name not in _network_classes():
            raise ValueError(f"model: cannot save a {name}; expected UNet2DModel or one of {sorted(_network_classes())}")
        outputs.add_bytes("model.safetensors", weights(model, half))
        outputs.add_json("config.json", {"class": name, "kwargs": model.config})
    if meta is not None:
        outputs.add_json("onmanifold.json", meta)
    outputs.commit()
    return folder


def load_network(name_or_path: str | os.PathLike, variant: str | None = None) -> nn.Module:
    """Load a bundled network by name or from a folder, in eval mode with gradients off for its weights.

    ``variant`` selects diffusers' weight variant of a UNet (``"fp16"``: ``diffusion_pytorch_model.fp16.*``).
    Raises :class:`CheckpointError` if the folder is missing, incomplete or corrupt.
    """
    folder = resolve_checkpoint(name_or_path)
    if (folder / "unet").is_dir() or (folder / "model_index.json").is_file():
        return load_unet(folder, variant)
    if any(folder.glob(UNET_WEIGHTS_NAME + "*")):  # a bare UNet folder (any weight form)
        return load_unet(folder, variant)
    if variant is not None:
        raise CheckpointError(f"checkpoint {str(folder)!r}: variant={variant!r} applies to diffusers UNet weights; this folder holds another network")
    config = read_json_object(folder / "config.json")
    cls = _network_classes().get(config.get("class"))
    if cls is None:
        raise CheckpointError(f"checkpoint {str(folder)!r}: config.json names unknown class {config.get('class')!r}")
    model = cls(**config.get("kwargs", {}))
    _load_state(model, _read_weights(folder / "model.safetensors"), folder)
    return model.eval().requires_grad_(False)


UNET_WEIGHTS_NAME = "diffusion_pytorch_model"
_VARIANT_FILE = re.compile(r"^diffusion_pytorch_model\.(\w+)(?:-\d+-of-\d+)?\.(?:safetensors|bin)$")  # .fp16.safetensors, .fp16-00001-of-00002.bin
_VARIANT_INDEX = re.compile(r"^diffusion_pytorch_model\.(?:safetensors|bin)\.index\.(\w+)\.json$")  # .safetensors.index.fp16.json


def read_unet_weights(sub: Path, variant: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a diffusers model folder, in any of the forms ``save_pretrained`` writes.

    In this order: ``diffusion_pytorch_model[.variant].safetensors``, ``...bin``, then the sharded forms
    (``diffusion_pytorch_model.safetensors.index[.variant].json`` or ``.bin.index[.variant].json`` with
    their shards, which must lie in the folder). Nothing is downloaded. A folder whose only weights are
    of another variant gets a :class:`CheckpointError` naming the variants it has.
    """
    sub = Path(sub)
    if variant is not None and (not isinstance(variant, str) or not variant or not variant.replace("_", "").isalnum()):
        raise ValueError(f"variant: expected a weight variant name such as 'fp16', got {variant!r}")
    v = f".{variant}" if variant else ""
    for name in (f"{UNET_WEIGHTS_NAME}{v}.safetensors", f"{UNET_WEIGHTS_NAME}{v}.bin"):
        if (sub / name).is_file():
            return _read_weights(sub / name)
    for name in (f"{UNET_WEIGHTS_NAME}.safetensors.index{v}.json", f"{UNET_WEIGHTS_NAME}.bin.index{v}.json"):
        if (sub / name).is_file():
            return _read_sharded_weights(sub / name)
    present = sorted(p.name for p in sub.glob(UNET_WEIGHTS_NAME + "*"))
    variants = sorted({m.group(1) for n in present for m in [_VARIANT_FILE.match(n) or _VARIANT_INDEX.match(n)]
                       if m and m.group(1) not in ("safetensors", "bin")})
    wanted = f"{UNET_WEIGHTS_NAME}{v}.safetensors (or .bin, or a sharded .index{v}.json)"
    if variants and not variant:
        raise CheckpointError(f"checkpoint {str(sub)!r}: no {wanted}; the folder holds the weight variant(s) {', '.join(variants)}: "
                              f"pass variant={variants[0]!r}")
    if variant:
        have = f"the weight variant(s) {', '.join(variants)}" if variants else "no variant weights"
        raise CheckpointError(f"checkpoint {str(sub)!r}: no weights of variant {variant!r} ({wanted}); the folder holds {have}")
    raise CheckpointError(f"checkpoint {str(sub)!r}: missing weights file {wanted}")


def _read_sharded_weights(index_path: Path) -> dict[str, torch.Tensor]:
    """The shards listed by a diffusers ``*.index.json`` (``weight_map``: tensor name -> shard file), merged and checked."""
    index = read_json_object(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(k, str) and isinstance(f, str) for k, f in weight_map.items()):
        raise CheckpointError(f"checkpoint {str(index_path.parent)!r}: {index_path.name} has no 'weight_map' of tensor names to shard files")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:
            raise CheckpointError(f"checkpoint {str(index_path.parent)!r}: {index_path.name} names shard {shard!r} outside the folder")
        state.update(_read_weights(index_path.parent / shard))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {str(index_path.parent)!r}: {index_path.name} lists tensors {missing[:3]} that no shard holds")
    return state


def load_unet(folder: Path, variant: str | None = None) -> nn.Module:
    """A diffusers ``UNet2DModel`` from a pipeline folder (``unet/``) or a bare model folder (weights: :func:`read_unet_weights`)."""
    from diffusers import UNet2DModel

    sub = folder / "unet" if (folder / "unet").is_dir() else folder
    config = read_json_object(sub / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"checkpoint {str(sub)!r}: config.json describes a {config['_class_name']!r}, expected a UNet2DModel")
    for key in ("sample_size", "in_channels"):
        v = config.get(key)
        values = v if key == "sample_size" and isinstance(v, list) and len(v) == 2 else [v]
        if any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in values):
            raise CheckpointError(f"checkpoint {str(sub)!r}: config.json needs a positive integer {key!r}, got {v!r}")
    state = read_unet_weights(sub, variant)
    try:  # a dict (validated above): from_config builds the network locally, it never looks a name up on the network
        model = UNet2DModel.from_config(config)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(sub)!r}: config.json does not describe a UNet2DModel ({e})") from e
    _load_state(model, _renamed_legacy_attention(model, state), sub)
    return model.eval().requires_grad_(False)


_LEGACY_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _renamed_legacy_attention(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of the attention blocks of diffusers before 0.15 (``query``/``key``/``value``/``proj_attn``, e.g.
    the google/ddpm-* checkpoints) under today's names (``to_q``/``to_k``/``to_v``/``to_out.0``); other keys as they are."""
    legacy = {name for name, m in model.named_modules() if getattr(m, "_from_deprecated_attn_block", False)}
    if not legacy:
        return state
    out = {}
    for key, value in state.items():
        block, _, rest = key.rpartition(".")  # e.g. down_blocks.1.attentions.0.query . weight
        path, _, leaf = block.rpartition(".")
        out[f"{path}.{_LEGACY_ATTENTION_NAMES[leaf]}.{rest}" if path in legacy and leaf in _LEGACY_ATTENTION_NAMES else key] = value
    return out


def _load_state(model: nn.Module, state: dict, folder: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: weights do not match the configured network ({str(e)[:300]})") from e
