"""One seeding rule for every random draw of the library: ``generator_for(seed, index, stream)``.

Every sample ``index`` of a run with base ``seed`` owns one CPU ``torch.Generator`` per *stream*, so
what is drawn for a sample depends only on ``(seed, index, stream)``: never on the batch size, the
number of samples drawn beside it, or what another stream consumed. The streams of the library:

========================  ==========================================================  =====================
stream                    what it draws                                               64-bit seed
========================  ==========================================================  =====================
``"trajectory"``          ``x_T`` and each step's noise ``z`` (the sampling loop)     ``SS([seed, i])``
``"measurement-mask"``    inpainting masks (:func:`~onmanifold.operators.box_masks`,  ``SS([seed, i, 1001])``
                          :func:`~onmanifold.operators.random_masks`)
``"measurement-noise"``   measurement noise ``w`` of ``y = A(x) + sigma_y w``         ``SS([seed, i, 1002])``
                          (:func:`~onmanifold.operators.make_measurements`)
``"asced-correction"``    TTC's fresh ``xi`` then ``eps`` (:mod:`onmanifold.artifacts`) ``SS([seed, i, c])``
``"asced-moved-mask"``    the random-location control of ASCED (a mask moved by a    ``seed * 1000003 + i``
                          random cyclic shift)
========================  ==========================================================  =====================

Devices: every generator is a CPU generator, whatever the device of the run; a draw is made on the
CPU (in the run's dtype) and then moved to the run's device (``device=`` of :meth:`PerSampleGenerators.randn`
and :meth:`~PerSampleGenerators.rand`), so a seed gives the same numbers on every device, as diffusers'
``randn_tensor`` does with a CPU generator.

``SS(words)`` is the first 64-bit word of numpy's ``SeedSequence(words)`` (a well-mixed hash: nearby
seeds and indices give unrelated generators); ``c = crc32("asced-correction")``. The last row is a
plain linear rule kept so that the control's recorded results stay bit-identical. An integer
``stream`` ``k >= 0`` gives ``SS([seed, i, k])``, for streams the table does not name.
"""

from __future__ import annotations

import zlib
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

__all__ = ["STREAMS", "seed_for", "generator_for", "PerSampleGenerators", "BatchGenerator"]


def _seed_sequence(*words: int) -> int:
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)[0])


STREAMS: dict[str, Callable[[int, int], int]] = {
    "trajectory": lambda seed, index: _seed_sequence(seed, index),
    "measurement-mask": lambda seed, index: _seed_sequence(seed, index, 1001),
    "measurement-noise": lambda seed, index: _seed_sequence(seed, index, 1002),
    "asced-correction": lambda seed, index: _seed_sequence(seed, index, zlib.crc32(b"asced-correction")),
    "asced-moved-mask": lambda seed, index: seed * 1_000_003 + index,
}


def _check_word(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    return int(value)


def seed_for(seed: int, index: int, stream: str | int = "trajectory") -> int:
    """The 64-bit seed of sample ``index``'s generator in ``stream`` under base ``seed`` (module table)."""
    seed, index = _check_word("seed", seed), _check_word("index", index)
    if isinstance(stream, str):
        rule = STREAMS.get(stream)
        if rule is None:
            raise ValueError(f"stream: expected one of {sorted(STREAMS)} or an integer >= 0, got {stream!r}")
        return rule(seed, index)
    return _seed_sequence(seed, index, _check_word("stream", stream))


def generator_for(seed: int, index: int, stream: str | int = "trajectory") -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`seed_for` ``(seed, index, stream)``; move its draws to the run's device
    (``torch.randn(shape, generator=g, dtype=dtype).to(device)``), never the generator."""
    return torch.Generator().manual_seed(seed_for(seed, index, stream))


class PerSampleGenerators:
    """One generator per sample (:func:`generator_for`); each draw is stacked over the batch.

    The sampling loop's randomness with ``seed=`` (stream ``"trajectory"``): sample ``i`` draws ``x_T``
    and then each step's noise from its own generator, so it is the same whatever the batch.
    """

    def __init__(self, seed: int, indices: Iterable[int], stream: str | int = "trajectory") -> None:
        self.seed = int(seed)
        self.stream = stream
        self.indices = [int(i) for i in indices]
        self.generators = [generator_for(seed, i, stream) for i in self.indices]

    def randn(self, shape_per_sample: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """Per sample ``N(0, I)`` of ``shape_per_sample`` in ``dtype``, drawn on the CPU and moved to ``device``."""
        return _to(torch.stack([torch.randn(tuple(shape_per_sample), generator=g, dtype=dtype) for g in self.generators]), device)

    def rand(self, shape_per_sample: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """Per sample ``U[0, 1)`` of ``shape_per_sample`` in ``dtype``, drawn on the CPU and moved to ``device``."""
        return _to(torch.stack([torch.rand(tuple(shape_per_sample), generator=g, dtype=dtype) for g in self.generators]), device)


class BatchGenerator:
    """The whole batch from one ``torch.Generator`` (diffusers' convention; the loop's ``generator=``)."""

    def __init__(self, generator: torch.Generator | None, batch: int) -> None:
        self.generator = generator
        self.batch = batch

    def _device(self) -> torch.device:
        return self.generator.device if self.generator is not None else torch.device("cpu")

    def randn(self, shape_per_sample: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """The batch's ``N(0, I)``, drawn where the generator lives and moved to ``device``."""
        return _to(torch.randn((self.batch, *shape_per_sample), generator=self.generator, dtype=dtype, device=self._device()), device)

    def rand(self, shape_per_sample: Sequence[int], dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
        """The batch's ``U[0, 1)``, drawn where the generator lives and moved to ``device``."""
        return _to(torch.rand((self.batch, *shape_per_sample), generator=self.generator, dtype=dtype, device=self._device()), device)


def _to(x: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return x if device is None else x.to(device)
