"""Where and in what precision a sampling run lives: the model's device and dtype, checked.

A run of :meth:`~onmanifold.sampler.DDIMSampler.sample` lives on one device in one floating dtype
(:class:`~onmanifold.sampler.RunContext`). By default both follow the model: the device of its
weights (parameters, else buffers) and the dtype of its floating parameters; a model without weights
(a plain callable, an exact Gaussian-mixture model) runs on the CPU in float32, or where ``x_T``
lives and in its dtype. Per-sample generators stay on the CPU (:mod:`onmanifold.random`) and their
draws are moved to the run's device, so a seed gives the same samples on every device (as diffusers'
``randn_tensor``).

Bad input raises ``ValueError`` naming the argument: a device this machine does not have (``cuda``
without CUDA, ``cuda:7`` on a one-GPU machine, ``mps`` off a Mac), a device other than the model's
weights', a dtype that is not a floating type, or a dtype the model's weights are not in.

:func:`device_for_local_rank` is the device of one ``torchrun`` process: rank ``r`` of a node with
CUDA devices runs on ``cuda:r``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

__all__ = ["check_device", "check_dtype", "same_device", "model_placement", "run_placement", "at_least_float32", "buffer_on",
           "device_for_local_rank", "local_rank_of"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` this machine has; ``ValueError`` naming ``name`` otherwise."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{name}: {device!r} is not a device (cpu, cuda, cuda:N, mps)") from e
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{name}: {str(d)!r} asked for, but torch sees no CUDA device on this machine")
        if d.index is not None and d.index >= count:
            raise ValueError(f"{name}: {str(d)!r} does not exist; torch sees {count} CUDA device(s): cuda:0 .. cuda:{count - 1}")
    elif d.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name}: 'mps' is not available on this machine")
    return d


def check_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """``dtype`` (a ``torch.dtype`` or its name, ``"bfloat16"``) as a floating ``torch.dtype``; ``ValueError`` otherwise."""
    d = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if d not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected a floating dtype (float32, float64, float16, bfloat16), got {dtype!r}")
    return d


def same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        current = torch.cuda.current_device() if a.type == "cuda" and torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index == b.index


def model_placement(model: Any) -> tuple[torch.device | None, torch.dtype | None]:
    """``(device, dtype)`` of a model's weights; None for what the model does not tell.

    The device of its first parameter (else its first buffer), the dtype of its first floating
    parameter (buffers do not set the dtype: the Gaussian-mixture model keeps float64 buffers and
    runs any input dtype). A model that is no ``nn.Module`` tells nothing.
    """
    if not isinstance(model, nn.Module):
        return None, None
    params = list(model.parameters())
    tensors = params or list(model.buffers())
    device = tensors[0].device if tensors else None
    dtype = next((p.dtype for p in params if p.is_floating_point()), None)
    return device, dtype


def run_placement(model: Any, x_T: torch.Tensor | None, device: Any = None, dtype: Any = None) -> tuple[torch.device, torch.dtype]:
    """The ``(device, dtype)`` of a sampling run (module docstring).

    ``device`` defaults to the model's, else ``x_T``'s, else the CPU; ``dtype`` to ``x_T``'s (a given start is
    sampled in its own precision), else the model's, else float32. A given device or dtype that the model's
    weights are not on / in is refused (``ValueError`` naming the argument): move or cast the model first.
    """
    m_device, m_dtype = model_placement(model)
    if device is None:
        device = m_device if m_device is not None else (x_T.device if x_T is not None else torch.device("cpu"))
    else:
        device = check_device(device, "device")
        if m_device is not None and not same_device(m_device, device):
            raise ValueError(f"device: the model's weights are on {m_device}, not {device}; move the model first "
                             f"(model.to({str(device)!r})) or leave device unset to sample where the model is")
    if dtype is None:
        dtype = x_T.dtype if x_T is not None else (m_dtype if m_dtype is not None else torch.float32)
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"x_T: expected a floating tensor, got dtype {dtype}")
    else:
        dtype = check_dtype(dtype, "dtype")
        if m_dtype is not None and dtype != m_dtype:
            raise ValueError(f"dtype: the model's weights are {m_dtype}; it cannot run {dtype} inputs; cast the model first "
                             f"(model.to({dtype})) or leave dtype unset to sample in the model's precision")
    return device, dtype


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself in float32 or float64, else ``x`` in float32: where norms and softmaxes of half-precision runs are taken."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def device_for_local_rank(local_rank: int, cuda_device_count: int) -> torch.device:
    """The device of the ``torchrun`` process with ``LOCAL_RANK = local_rank``: ``cuda:local_rank`` on a node with
    CUDA devices (one process per GPU), the CPU on a node without.

    ``ValueError`` when the node has GPUs but fewer than its processes (two processes would share a GPU silently).
    """
    if isinstance(local_rank, bool) or not isinstance(local_rank, int) or local_rank < 0:
        raise ValueError(f"LOCAL_RANK: expected an integer >= 0, got {local_rank!r}")
    if cuda_device_count <= 0:
        return torch.device("cpu")
    if local_rank >= cuda_device_count:
        raise ValueError(f"LOCAL_RANK: process {local_rank} has no GPU of its own (this node has {cuda_device_count}); "
                         f"start at most {cuda_device_count} processes per node (torchrun --nproc-per-node {cuda_device_count})")
    return torch.device("cuda", local_rank)


def local_rank_of(environ: Mapping[str, str]) -> int:
    """``LOCAL_RANK`` of a ``torchrun`` environment (0 when it is not set); ``ValueError`` naming it when it is not an integer."""
    text = environ.get("LOCAL_RANK", "0")
    try:
        return int(text)
    except ValueError as e:
        raise ValueError(f"LOCAL_RANK: expected an integer, got {text!r}") from e


def buffer_on(module: nn.Module, name: str, device: torch.device) -> torch.Tensor:
    """The buffer ``name`` of ``module`` on ``device``, moved there the first time it is asked for there (losses and
    operators keep their data, ``y``, masks, kernels, where the run is, after one transfer)."""
    buf = getattr(module, name)
    if buf.device != device:
        buf = buf.to(device)
        setattr(module, name, buf)
    return buf
