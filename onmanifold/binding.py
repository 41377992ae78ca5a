"""Which diffusion model a time predictor belongs to: the model's identity and the check against it.

A time predictor classifies the noisy states of *one* model's forward process (its schedule, its
sample space: pixels or a VAE's latents, docs/methods/tag.md#D10). ``onmanifold train time-predictor
--model FOLDER`` records the model's identity in the predictor's ``onmanifold.json`` (``binding``):

* ``scheduler_sha256``: SHA-256 of the model's scheduler config (canonical JSON, keys sorted, the
  ``_``-prefixed bookkeeping keys left out), or of the training schedule for a model without one;
* ``sample_shape``: the per-sample shape the model samples (latent shape for a latent model);
* ``weights``: a fingerprint of the weight files (relative name, size in bytes, SHA-256 of the first
  and the last MiB of each), cheap even for multi-GB files and changed by any retraining;
* ``model``: the name or folder it was trained for (shown in messages, not compared).

:func:`check_binding` refuses a predictor whose binding differs from the model it is used with,
naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["model_binding", "check_binding", "weights_fingerprint"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CHUNK = 1 << 20


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over each weight file's relative name, size, first and last MiB (module docstring)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and "snapshots" not in p.relative_to(folder).parts)
    digest = hashlib.sha256()
    for p in files:
        size = p.stat().st_size
        digest.update(f"{p.relative_to(folder).as_posix()}\0{size}\0".encode())
        with open(p, "rb") as f:
            digest.update(f.read(_CHUNK))
            if size > 2 * _CHUNK:
                f.seek(size - _CHUNK)
                digest.update(f.read(_CHUNK))
    return digest.hexdigest()


def _config_sha256(loaded) -> str:
    config = loaded.scheduler_config if loaded.scheduler_config is not None else loaded.schedule.to_config()
    canonical = {k: v for k, v in config.items() if not str(k).startswith("_")}
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()


def model_binding(name_or_path: str | os.PathLike, loaded=None) -> dict:
    """The identity of a diffusion model (a bundled name or a diffusers folder) as recorded in a predictor."""
    from .model import load_diffusion_model
    from .nets.checkpoint import resolve_checkpoint

    folder = resolve_checkpoint(name_or_path)
    loaded = load_diffusion_model(name_or_path) if loaded is None else loaded
    return {
        "model": str(name_or_path),
        "scheduler_sha256": _config_sha256(loaded),
        "sample_shape": [int(v) for v in loaded.sample_shape],
        "weights": weights_fingerprint(folder),
    }


def check_binding(binding: dict | None, model: dict, option: str = "time_predictor") -> None:
    """Refuse a predictor bound to another model than ``model`` (both from :func:`model_binding`).

    ``binding`` None (a predictor trained for a bundled test bed, without ``--model``) is not checked here;
    its schedule and sample shape still are, when TAG starts (:meth:`~onmanifold.temporal.TimePredictor.check_schedule`).
    """
    if binding is None:
        return
    if not isinstance(binding, dict):
        raise ValueError(f"{option}: its onmanifold.json 'binding' is not an object ({type(binding).__name__})")
    differ = [what for key, what in (("scheduler_sha256", "scheduler config"), ("sample_shape", "sample shape"), ("weights", "weights"))
              if binding.get(key) != model.get(key)]
    if differ:
        raise ValueError(f"{option}: this predictor was trained for the model {binding.get('model')!r}, not {model.get('model')!r} "
                         f"(their {', '.join(differ)} differ); train one for this model with "
                         f"`onmanifold train time-predictor --model {model.get('model')} --data ...`")
