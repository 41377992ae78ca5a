"""Guided sampling in less memory: gradient checkpointing through the UNet, chunked VJPs, and a CPU memory meter.

A guided step (DPS, DSG, and every plugin calling :meth:`~onmanifold.sampler.StepState.loss_gradient` or
``loss_gradient_at``) differentiates a loss of ``x0_hat(x_t)`` through the network:
``g = grad_{x_t} sum_b L_b(x0_hat_b)``. Plain autograd keeps every activation the network saved for its
backward pass alive from the model call to the gradient: for an ADM-shaped UNet that graph, not the
weights, is what bounds the batch size. :class:`MemorySavingModel` wraps the eps-model and trades
compute for that memory, in two ways that combine:

* ``checkpoint=True``: gradient checkpointing inside a diffusers UNet (its
  ``enable_gradient_checkpointing``, switched on for the wrapper's calls only and restored after).
  Each ResNet block keeps only its inputs; its inner activations are recomputed in the backward pass.
  Cost: about one more forward pass of the checkpointed blocks per gradient. In diffusers 0.42 a block
  checkpoints whenever ``torch.is_grad_enabled()`` and its flag is set, in eval mode too (the flag is
  not tied to ``training``).
* ``vjp_chunk_size=k``: the model call of the whole batch runs without a graph; when the gradient
  flows back to it, the network is called again on ``k`` rows at a time with a graph, and the
  vector-Jacobian product ``J^T v`` is taken chunk by chunk, so only one chunk's graph is alive at
  once. Exact because the network treats the samples of a batch independently (eval mode: group
  norm, no batch statistics), so ``J`` is block diagonal over samples. Cost: one more forward pass
  per gradient; memory of the graph: ``k`` rows instead of the batch.

What stays the same: the samples and gradients. The forward values are the network's own; the
gradients are the same derivative computed again, equal to float rounding (bit for bit with
``checkpoint=True`` and with ``vjp_chunk_size`` at least the batch size on this machine's CPU
kernels; smaller chunks let the kernels choose other algorithms for the smaller batch, so the last
bits can differ). Both are checked by ``tests/core/test_memory.py``.

What it needs: a deterministic network (eval mode, no dropout: the backward pass recomputes the
forward) and, for the chunks, samples that do not interact inside the network. Gradients flow to
``x_t`` only, never to the network's weights or to ``cond`` (guidance needs no more); do not train
through the wrapper.

Usage::

    from onmanifold.memory import MemorySavingModel
    model = MemorySavingModel(loaded.model, checkpoint=True, vjp_chunk_size=4)
    x = sampler.sample(model, shape=..., num_samples=64, plugins=[SphericalGaussianGuidance(loss)])

Measuring it: :class:`TensorMemoryMeter` counts the peak bytes of the tensors allocated inside a
``with`` block and alive at once, on any device (torch has no peak-memory counter on the CPU;
:func:`peak_tensor_bytes` uses ``torch.cuda.max_memory_allocated`` on CUDA instead).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .prediction import ModelPrediction

__all__ = ["MemorySavingModel", "TensorMemoryMeter", "peak_tensor_bytes"]


class MemorySavingModel(nn.Module):
    """An eps-model whose guided calls hold less autograd memory (module docstring: what it trades).

    Args:
        model: the eps-model ``(x, t, cond) -> eps`` (e.g. :class:`~onmanifold.model.DiffusersUNetEpsModel`).
        checkpoint: gradient checkpointing inside the diffusers UNet ``model.unet`` during the wrapper's calls.
        vjp_chunk_size: compute the vector-Jacobian product through the network ``vjp_chunk_size`` rows at a
            time (None: the whole batch at once).

    Calls without gradient (every unguided step) go straight to ``model``. Every attribute the wrapper
    does not define is ``model``'s (``data_range``, ``prediction_type``, ``learned_variance``,
    ``full_prediction``, ...), so the sampler and the plugins see the same model.
    """

    def __init__(self, model: Callable, checkpoint: bool = False, vjp_chunk_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(checkpoint, bool):
            raise ValueError(f"checkpoint: expected True or False, got {checkpoint!r}")
        if vjp_chunk_size is not None and (isinstance(vjp_chunk_size, bool) or not isinstance(vjp_chunk_size, int) or vjp_chunk_size < 1):
            raise ValueError(f"vjp_chunk_size: expected a positive number of rows or None, got {vjp_chunk_size!r}")
        if not checkpoint and vjp_chunk_size is None:
            raise ValueError("checkpoint, vjp_chunk_size: neither is set, so the wrapper would save nothing; "
                             "pass checkpoint=True and/or vjp_chunk_size=k")
        if checkpoint:
            unet = getattr(model, "unet", None)
            if unet is None or not getattr(unet, "_supports_gradient_checkpointing", False) or not hasattr(unet, "enable_gradient_checkpointing"):
                raise ValueError(f"checkpoint: needs a diffusers UNet that supports gradient checkpointing as model.unet (a "
                                 f"DiffusersUNetEpsModel), got {type(model).__name__}; for other networks use vjp_chunk_size=k")
        self.model = model
        self.checkpoint = checkpoint
        self.vjp_chunk_size = vjp_chunk_size

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "model":
                raise
        inner = getattr(self._modules["model"], name)  # AttributeError when the model has none either
        if name == "full_prediction":
            return lambda x, t, cond=None: self._call(inner, x, t, cond, prediction=True)
        return inner

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return self._call(self.model, x, t, cond, prediction=False)

    @contextmanager
    def _checkpointing(self) -> Iterator[None]:
        """The UNet's own gradient checkpointing for the duration of one call (its previous setting restored)."""
        unet = self.model.unet if self.checkpoint else None
        if unet is None or unet.is_gradient_checkpointing:
            yield
            return
        unet.enable_gradient_checkpointing()
        try:
            yield
        finally:
            unet.disable_gradient_checkpointing()

    def _call(self, fn: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any, prediction: bool):
        def run(rows: slice, xr: torch.Tensor) -> tuple:
            tr = t[rows] if torch.is_tensor(t) and t.dim() > 0 else t
            cr = cond[rows] if torch.is_tensor(cond) and cond.dim() > 0 and cond.shape[0] == x.shape[0] else cond
            with self._checkpointing():
                out = fn(xr, tr, cr)
            return tuple(out) if prediction else (out,)

        if self.vjp_chunk_size is None or not (torch.is_grad_enabled() and x.requires_grad):
            out = run(slice(None), x)
        else:
            layout: dict = {}
            tensors = _ChunkedVJP.apply(x, run, self.vjp_chunk_size, layout)
            it = iter(tensors)
            out = tuple(None if absent else next(it) for absent in layout["absent"])
        return ModelPrediction(*out) if prediction else out[0]


class _ChunkedVJP(torch.autograd.Function):
    """``run(all rows, x)`` without a graph; in the backward pass ``J^T v`` chunk by chunk (module docstring).

    ``run(rows, x_rows) -> tuple`` calls the network on the rows ``rows`` of the batch (``t`` and a per-row
    ``cond`` sliced along); ``None`` entries (a model without learned variance) are left out of the outputs and
    recorded in ``layout["absent"]``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, run: Callable, chunk_size: int, layout: dict):  # type: ignore[override]
        outs = run(slice(None), x)  # autograd is off inside forward: no graph, transient activations only
        layout["absent"] = tuple(o is None for o in outs)
        ctx.run, ctx.chunk_size, ctx.absent = run, chunk_size, layout["absent"]
        ctx.save_for_backward(x)
        ctx.set_materialize_grads(False)
        return tuple(o for o in outs if o is not None)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        grad_x = torch.zeros_like(x)
        if all(g is None for g in grads):
            return grad_x, None, None, None
        for start in range(0, x.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            with torch.enable_grad():
                xr = x[rows].detach().requires_grad_(True)
                outs = [o for o in ctx.run(rows, xr) if o is not None]
                pairs = [(o, g[rows]) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
                if not pairs:
                    continue
                (gr,) = torch.autograd.grad([o for o, _ in pairs], xr, [g for _, g in pairs], allow_unused=True)
            if gr is not None:
                grad_x[rows] = gr
            del outs, pairs, xr  # this chunk's graph goes before the next chunk's is built
        return grad_x, None, None, None


class TensorMemoryMeter(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the ``with`` block and alive at the same time.

    Every operator's outputs are seen (a ``TorchDispatchMode``, forward and backward passes alike, on any
    device); a storage counts from the operator that allocated it until it is freed. Views and in-place
    results share their input's storage and are not counted again; tensors that existed before the block
    (weights, the start noise) are not counted. What it does not see: memory a kernel uses internally
    without a tensor (workspaces) and the allocator's caching and rounding, so on CUDA it reads a little
    below ``torch.cuda.max_memory_allocated``. Slows every operator down (Python per call): measure apart
    from timing.

    Attributes after (or during) the block: ``peak_bytes``, ``live_bytes``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._tracked: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live_bytes -= self._tracked.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a.untyped_storage()) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor) and _has_storage(a)}
        for o in tree_flatten(out)[0]:
            if not isinstance(o, torch.Tensor) or not _has_storage(o):
                continue
            st = o.untyped_storage()
            key = id(st)
            if key in inputs or key in self._tracked:
                continue
            self._tracked[key] = st.nbytes()
            self.live_bytes += st.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(st, self._free, key)
        return out


def _has_storage(t: torch.Tensor) -> bool:
    try:
        t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def peak_tensor_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int, str]:
    """``(fn(), peak bytes allocated during the call above what was allocated before, how it was measured)``.

    On CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (``"cuda max_memory_allocated"``);
    elsewhere: :class:`TensorMemoryMeter` (``"tensor storages (dispatch meter)"``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, int(torch.cuda.max_memory_allocated(device) - base), "cuda max_memory_allocated"
    with TensorMemoryMeter() as meter:
        out = fn()
    return out, int(meter.peak_bytes), "tensor storages (dispatch meter)"
