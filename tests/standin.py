"""The stand-in device of the tests: a device that rejects every stray CPU tensor, on a machine without a GPU.

``StandIn`` tensors hold CPU data but report the ``meta`` device (:data:`STAND_IN`); inside the
:class:`StandInDevice` dispatch mode an op that mixes a CPU tensor (other than a 0-dim scalar) with them raises
:class:`StrayTensorError`, while explicit transfers (``.to(STAND_IN)``, ``.cpu()``) are allowed. The ops run on
the same CPU kernels, so a run on the stand-in gives the CPU run's numbers (up to the dispatch of some
kernels). Shared by tests/core/test_device.py (the library) and tests/bench/test_bench_devices.py (the
suites); importable as ``standin`` because tests/conftest.py puts this folder on ``sys.path``.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["STAND_IN", "StrayTensorError", "StandIn", "StandInDevice", "plain"]

STAND_IN = torch.device("meta")


class StrayTensorError(AssertionError):
    """An op mixed a CPU tensor with tensors of the run's device."""


class StandIn(torch.Tensor):
    """A tensor of the stand-in device: its data is a CPU tensor (``inner``), its reported device ``meta``."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
                                                dtype=inner.dtype, device=STAND_IN, requires_grad=inner.requires_grad)
        r.inner = inner
        return r

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"StandIn({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func}: a stand-in tensor used outside StandInDevice")


class StandInDevice(TorchDispatchMode):
    """Ops on stand-in tensors run on their CPU data; a CPU tensor with a dimension meeting them raises.

    Factory calls with ``device="meta"`` and transfers ``.to("meta")`` make stand-in tensors; ``.cpu()``
    gives a plain CPU tensor back. ``torch.tensor``/``torch.as_tensor`` build their data outside the
    dispatcher, so inside the mode they make it on the CPU and transfer it.
    """

    _constructors = ("tensor", "as_tensor")

    def __enter__(self):
        self._saved = {name: getattr(torch, name) for name in self._constructors}
        for name, original in self._saved.items():
            setattr(torch, name, _constructing_on_the_cpu_first(original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch, name, original)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if StandIn not in types and not (kwargs and "device" in kwargs):  # CPU tensors only (data, metrics): as they are
            return func(*args, **(kwargs or {}))
        kwargs = dict(kwargs or {})
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        on_device = any(isinstance(a, StandIn) for a in tensors)
        target = kwargs.get("device")
        to_device = target is not None and torch.device(target).type == "meta"
        if to_device:
            kwargs["device"] = torch.device("cpu")
        transfer = func is torch.ops.aten._to_copy.default
        if on_device and not transfer:
            for a in tensors:
                if not isinstance(a, StandIn) and a.dim() > 0:
                    raise StrayTensorError(f"{func}: a CPU tensor of shape {tuple(a.shape)} ({a.dtype}) meets tensors of the run's device")
        out = func(*tree_map(_inner, args), **tree_map(_inner, kwargs))
        wrap = (to_device or (on_device and target is None)) if transfer else (on_device or to_device)
        if not wrap:
            return out
        if func._schema.name.endswith("_") and args and isinstance(args[0], StandIn):
            return args[0]  # in place: the same tensor
        return tree_map(lambda a: StandIn(a) if isinstance(a, torch.Tensor) else a, out)


def _constructing_on_the_cpu_first(original):
    def construct(data, *args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "meta":
            if isinstance(data, StandIn):
                return original(data, *args, **kwargs)
            return original(data, *args, **kwargs).to(STAND_IN)
        return original(data, *args, device=device, **kwargs)

    return construct


def _inner(a):
    return a.inner if isinstance(a, StandIn) else a


def plain(x: torch.Tensor) -> torch.Tensor:
    """A stand-in tensor's CPU data (any other tensor moved to the CPU)."""
    return x.inner if isinstance(x, StandIn) else x.cpu()
