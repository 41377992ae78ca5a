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
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError",
    "BUNDLED_DIR",
    "bundled_path",
    "list_bundled",
    "resolve_checkpoint",
    "save_network",
    "load_network",
    "read_metadata",
    "write_json_atomic",
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


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename):
    a killed process leaves either the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False))


def read_metadata(name_or_path: str | os.PathLike) -> dict:
    """The ``onmanifold.json`` training metadata of a checkpoint ({} if absent)."""
    p = resolve_checkpoint(name_or_path) / "onmanifold.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: missing file {path.name}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: {path.name} is not valid JSON ({e})") from e


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
    loading casts them back to the network's float32 parameters.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if type(model).__name__ == "UNet2DModel":
        import diffusers

        if scheduler is None:
            raise ValueError("scheduler: a UNet2DModel is saved with its diffusers scheduler, got None")
        model.save_pretrained(folder / "unet", safe_serialization=True)
        scheduler.save_pretrained(folder / "scheduler")
        write_json_atomic(
            folder / "model_index.json",
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
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        if half:
            state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        tmp = folder / ".model.safetensors.tmp"
        save_file(state, str(tmp))
        os.replace(tmp, folder / "model.safetensors")
        write_json_atomic(folder / "config.json", {"class": name, "kwargs": model.config})
    if meta is not None:
        write_json_atomic(folder / "onmanifold.json", meta)
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
    config = _read_json(folder / "config.json")
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
    config = _read_json(sub / "config.json")
    state = _read_weights(sub / "diffusion_pytorch_model.safetensors")
    try:
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
