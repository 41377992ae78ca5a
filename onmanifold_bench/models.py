"""The one model cache of the experiments, and where their networks live: every suite and the demo load networks here.

A network is loaded once per process and device and shared (the suites only read it: sampling, guidance and
measurements never change weights). The networks a sampling run calls (the diffusion model, TAG's time
predictor, the guidance classifier) are placed on the device of the cell being computed,
:func:`onmanifold_bench.runner.cell_device` (``cuda:LOCAL_RANK`` under ``torchrun`` on GPUs, else the CPU); the
sampling loop follows the model there, its per-sample generators staying on the CPU, so a cell draws the same
samples on every device (:mod:`onmanifold.device`). On the CPU each network is the one loaded as before, not
moved or copied: the committed results stay reproducible bit for bit.

The evaluation classifier and every metric stay on the CPU (:func:`eval_classifier` is the library's CPU
network): a suite brings its samples back with :func:`on_cpu` right after sampling, in one place.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import torch

from onmanifold.evaluate import eval_classifier
from onmanifold.evaluate import guidance_classifier as _library_guidance_classifier

__all__ = ["diffusion_model", "time_predictor", "guidance_classifier", "eval_classifier", "on_cpu", "clear"]

_CPU = torch.device("cpu")


def _here() -> torch.device:
    from .runner import cell_device

    return torch.device(cell_device())


def diffusion_model(name: str):
    """:func:`onmanifold.model.load_diffusion_model` of ``name`` (a bundled name or a folder) on the cell's device
    (a latent model's VAE and prompt table with it), loaded once per device."""
    return _diffusion_model(name, _here())


def time_predictor(name: str):
    """:func:`onmanifold.temporal.load_time_predictor` of ``name`` (a bundled name or a folder) on the cell's device,
    loaded once per device."""
    return _time_predictor(name, _here())


def guidance_classifier(bed: str) -> torch.nn.Module:
    """The bundled guidance classifier of ``bed`` on the cell's device: on the CPU the library's own
    (:func:`onmanifold.evaluate.guidance_classifier`), elsewhere a moved copy, made once per device (the
    library's CPU network, shared by the process, is never moved)."""
    return _guidance_classifier(bed, _here())


@lru_cache(maxsize=None)
def _diffusion_model(name: str, device: torch.device):
    from onmanifold.model import load_diffusion_model  # looked up at call time: precision.py swaps it for its perturbed runs

    loaded = load_diffusion_model(name)
    return loaded if device == _CPU else loaded.to(device=device)


@lru_cache(maxsize=None)
def _time_predictor(name: str, device: torch.device):
    from onmanifold.temporal import load_time_predictor

    predictor = load_time_predictor(name)
    return predictor if device == _CPU else predictor.to(device)


@lru_cache(maxsize=None)
def _guidance_classifier(bed: str, device: torch.device) -> torch.nn.Module:
    classifier = _library_guidance_classifier(bed)
    return classifier if device == _CPU else copy.deepcopy(classifier).to(device)


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor on the CPU (a tensor, or a dict / list / tuple of them; other values as they are):
    samples and sampler results come back here right after sampling, where the metrics run. A CPU tensor is
    returned itself (no copy)."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(v) for v in value)
    return value


def clear() -> None:
    """Forget every cached network (e.g. after retraining one in the same process)."""
    _diffusion_model.cache_clear()
    _time_predictor.cache_clear()
    _guidance_classifier.cache_clear()
