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
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: missing weights file {path.name}")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises several types on a truncated or garbled file
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: cannot read {path.name}, the file is corrupt ({e})") from e
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


def load_network(name_or_path: str | os.PathLike) -> nn.Module:
    """Load a bundled network by name or from a folder, in eval mode with gradients off for its weights.

    Raises :class:`CheckpointError` if the folder is missing, incomplete or corrupt.
    """
    folder = resolve_checkpoint(name_or_path)
    if (folder / "unet").is_dir() or (folder / "model_index.json").is_file():
        return load_unet(folder)
    if (folder / "diffusion_pytorch_model.safetensors").is_file():  # a bare UNet folder
        return load_unet(folder)
    config = read_json_object(folder / "config.json")
    cls = _network_classes().get(config.get("class"))
    if cls is None:
        raise CheckpointError(f"checkpoint {str(folder)!r}: config.json names unknown class {config.get('class')!r}")
    model = cls(**config.get("kwargs", {}))
    _load_state(model, _read_weights(folder / "model.safetensors"), folder)
    return model.eval().requires_grad_(False)


def load_unet(folder: Path) -> nn.Module:
    """A diffusers ``UNet2DModel`` from a pipeline folder (``unet/``) or a bare model folder."""
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
    state = _read_weights(sub / "diffusion_pytorch_model.safetensors")
    try:  # a dict (validated above): from_config builds the network locally, it never looks a name up on the network
        model = UNet2DModel.from_config(config)
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(sub)!r}: config.json does not describe a UNet2DModel ({e})") from e
    _load_state(model, state, sub)
    return model.eval().requires_grad_(False)


def _load_state(model: nn.Module, state: dict, folder: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(folder)!r}: weights do not match the configured network ({str(e)[:300]})") from e
