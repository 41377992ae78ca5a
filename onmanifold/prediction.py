"""What one network call returns, and calling a network in fixed micro-batches.

Kept apart from :mod:`onmanifold.model` (the adapters and loading) so that the sampling loop can use
both without importing the loaders.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

__all__ = ["ModelPrediction", "FixedMicroBatch"]


class ModelPrediction(NamedTuple):
    """One network call's full output: ``eps``, the model's own ``x0`` estimate and, for a learned-variance
    UNet, its variance channels ``v`` in [-1, 1] (None otherwise). The sampler asks for it only where it
    needs more than eps (``abar_t = 0``, ``variance="learned_range"``)."""

    eps: torch.Tensor
    x0: torch.Tensor
    variance: torch.Tensor | None



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
        return self._chunked(self.model, x, t, cond)

    def full_prediction(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> ModelPrediction:
        """The wrapped model's :class:`ModelPrediction`, in the same fixed micro-batches."""
        parts = self._chunked(lambda xb, tb, cb: torch.cat([p for p in self.model.full_prediction(xb, tb, cb) if p is not None], 1), x, t, cond)
        c = x.shape[1]
        eps, x0 = parts[:, :c], parts[:, c : 2 * c]
        return ModelPrediction(eps, x0, parts[:, 2 * c :] if parts.shape[1] > 2 * c else None)

    def _chunked(self, fn: Callable, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
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
            outs.append(fn(xb, tb, cb)[:k])
        return torch.cat(outs)
