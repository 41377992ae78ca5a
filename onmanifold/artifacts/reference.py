"""Beyond the paper: what normal trajectories change at each step, the yardstick of the normalised detector.

The paper's detector compares a pixel's change with the rest of the *same image* (docs/methods/asced.md#R3). The
normalised variant (``DetectorConfig(normalization="reference")``, docs/methods/asced.md#V1) compares it with what
*normal* trajectories change at that step and pixel:

    z_n(i, j) = (D_n(i, j) - mu_n(i, j)) / (1.4826 s_n(i, j) + 1e-6),
    flag_n(i, j) = D_n(i, j) > max(mu_n(i, j) + k * 1.4826 s_n(i, j), a_min)

with ``D_n(i, j)`` the pixel change of the step pair ``(n-1, n)`` built exactly as the detector builds it
(:mod:`onmanifold.artifacts.change`) and ``(mu_n, s_n)`` the median and MAD of ``D_n`` over ``K`` reference
trajectories (:func:`~onmanifold.artifacts.change.normal_change_statistics`). :class:`ReferenceChangeStatistics`
holds them; it is built

* from real data (:meth:`ReferenceChangeStatistics.from_real_data`): each real image ``x0`` with one fixed noise
  ``e`` (:func:`onmanifold.random.generator_for` ``(seed, i, REFERENCE_STREAM)``), at every needed step
  ``x_{t_n} = sqrt(abar_{t_n}) x0 + sqrt(1 - abar_{t_n}) e`` and ``x0_hat_n`` from one network call, clamped as the
  sampler's step (the loop's own model call). Cost: one network call per image and needed frame (the window's
  ``n_c - n_d`` frames by default), no sampling;
* from given clean-estimate trajectories (:meth:`ReferenceChangeStatistics.from_trajectories`), e.g. sampled ones;
* from pixel changes (:meth:`ReferenceChangeStatistics.from_changes`), which both of the above end in.

The statistics are float64 ``(P, H, W)`` tensors, one row per step pair; the detector moves them to the run's
device once, in its setup.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from ..device import model_placement
from ..random import generator_for
from ..sampler import DDIMSampler, StepState
from .change import MIN_NORMAL_SAMPLES, change_map, frame_of, normal_change_statistics, pixel_change
from .config import DetectorConfig, check_window

__all__ = ["ReferenceChangeStatistics", "REFERENCE_STREAM", "FRAME_SETTINGS"]

REFERENCE_STREAM = zlib.crc32(b"asced-reference")  # generator_for(seed, i, REFERENCE_STREAM): the fixed noise e of image i
FRAME_SETTINGS = ("quantity", "quantize", "sigma", "blur_channels", "pool_pixels")  # what the statistics depend on


def _pairs_of(pairs: str | Sequence[int], config: DetectorConfig, num_steps: int, abar_of_steps: Sequence[float] | None) -> tuple[int, ...]:
    """The step pairs ``n`` (frames ``n-1, n``): ``"window"`` (``n_d < n < n_c``), ``"all"`` (``1 .. N-1``) or given."""
    if pairs == "window":
        n_d, n_c = config.window(num_steps, abar_of_steps)
        check_window(n_d, n_c, num_steps, explicit=not config.is_default_window)
        out = tuple(range(n_d + 1, n_c))
    elif pairs == "all":
        out = tuple(range(1, num_steps))
    elif isinstance(pairs, str):
        raise ValueError(f"pairs: expected 'window', 'all' or a list of step pairs, got {pairs!r}")
    else:
        out = tuple(int(n) for n in pairs)
        if any(isinstance(n, bool) for n in pairs) or list(out) != sorted(set(out)) or (out and not 1 <= out[0] <= out[-1] <= num_steps - 1):
            raise ValueError(f"pairs: expected increasing step pairs in [1, {num_steps - 1}], got {list(pairs)}")
    if not out:
        raise ValueError(f"pairs: no step pair to compute (N = {num_steps}); the detection window of the config is empty")
    return out


@dataclass(frozen=True, eq=False)
class ReferenceChangeStatistics:
    """Per step pair and pixel, the median and MAD of normal trajectories' change (module docstring).

    Attributes:
        median, mad: ``(P, H, W)`` float64, ``mu_n`` and ``s_n`` of pair ``pairs[p]`` in row ``p`` (constant over the
            pixels when built with ``config.pool_pixels``).
        pairs: the step pairs ``n`` of the rows (frames ``n-1, n``), increasing.
        num_steps: ``N`` of the trajectories.
        config: the detector settings the changes were computed with; a detector using the statistics must agree on
            :data:`FRAME_SETTINGS` (the frame, the blur and the pooling).
        timesteps: the sampler's training steps when built from a sampler (a run must use the same), else None.
        num_references: ``K``, the number of reference trajectories (None when given by hand).
    """

    median: torch.Tensor
    mad: torch.Tensor
    pairs: tuple[int, ...]
    num_steps: int
    config: DetectorConfig
    timesteps: tuple[int, ...] | None = None
    num_references: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.config, DetectorConfig):
            raise TypeError(f"config: expected a DetectorConfig, got {type(self.config).__name__}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 2:
            raise ValueError(f"num_steps: expected an integer >= 2, got {self.num_steps!r}")
        object.__setattr__(self, "pairs", _pairs_of(tuple(self.pairs), self.config, self.num_steps, None))
        for name in ("median", "mad"):
            v = getattr(self, name)
            if not torch.is_tensor(v) or v.dim() != 3 or v.shape[0] != len(self.pairs):
                raise ValueError(f"{name}: expected a ({len(self.pairs)}, height, width) tensor (one row per pair), got "
                                 f"{tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}")
            if not torch.isfinite(v).all():
                raise ValueError(f"{name}: contains NaN or Inf")
            object.__setattr__(self, name, v.double())
        if self.median.shape != self.mad.shape:
            raise ValueError(f"mad: expected the median's shape {tuple(self.median.shape)}, got {tuple(self.mad.shape)}")
        if self.median.device != self.mad.device:
            raise ValueError(f"mad: expected the median's device {self.median.device}, got {self.mad.device}")
        if bool((self.mad < 0).any()):
            raise ValueError("mad: a median absolute deviation is never negative")
        if self.timesteps is not None:
            object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
            if len(self.timesteps) != self.num_steps:
                raise ValueError(f"timesteps: expected {self.num_steps} training steps, got {len(self.timesteps)}")

    # ------------------------------------------------------------------ use
    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the statistics."""
        return int(self.median.shape[-2]), int(self.median.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.median.device

    def to(self, device: torch.device | str) -> "ReferenceChangeStatistics":
        """The same statistics on ``device`` (itself when they are there already)."""
        device = torch.device(device)
        if self.device == device:
            return self
        return replace(self, median=self.median.to(device), mad=self.mad.to(device))

    def of_pair(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_n, s_n)``, each ``(H, W)``, of the step pair ``n`` (frames ``n-1, n``)."""
        try:
            row = self.pairs.index(int(n))
        except ValueError:
            raise ValueError(f"n: the statistics hold the step pairs {list(self.pairs)}, not {n}") from None
        return self.median[row], self.mad[row]

    def check_run(self, config: DetectorConfig, num_steps: int, window: tuple[int, int], image_size: tuple[int, int],
                  timesteps: Sequence[int] | None = None, name: str = "reference") -> None:
        """Refuse a run these statistics do not describe (``ValueError`` naming ``name``): other frame or blur settings,
        another number of steps or timesteps, other image sizes, or a window pair they do not hold."""
        differ = [f for f in FRAME_SETTINGS if getattr(config, f) != getattr(self.config, f)]
        if differ:
            raise ValueError(f"{name}: built with {', '.join(f'{f}={getattr(self.config, f)!r}' for f in differ)}, the detector uses "
                             f"{', '.join(f'{f}={getattr(config, f)!r}' for f in differ)}; build the statistics with the detector's config")
        if num_steps != self.num_steps:
            raise ValueError(f"{name}: built for N = {self.num_steps} steps, the run has N = {num_steps}")
        if timesteps is not None and self.timesteps is not None and tuple(int(t) for t in timesteps) != self.timesteps:
            raise ValueError(f"{name}: built for the timesteps {list(self.timesteps)[:4]}..., the run samples {list(timesteps)[:4]}...; "
                             "build the statistics with the run's sampler")
        if tuple(image_size) != self.image_size:
            raise ValueError(f"{name}: built for {self.image_size[0]}x{self.image_size[1]} images, the run's are "
                             f"{image_size[0]}x{image_size[1]}")
        missing = [n for n in range(window[0] + 1, window[1]) if n not in self.pairs]
        if missing:
            raise ValueError(f"{name}: holds the step pairs {list(self.pairs)}, not the window's {missing} (n_d = {window[0]}, "
                             f"n_c = {window[1]}); build it with pairs='window' for this config or pairs='all'")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_changes(cls, changes: torch.Tensor, pairs: Sequence[int], num_steps: int, config: DetectorConfig,
                     timesteps: Sequence[int] | None = None) -> "ReferenceChangeStatistics":
        """From the pixel changes ``D_n^k(i, j)`` of ``K >= 3`` reference trajectories, ``changes`` of shape ``(K, P, H, W)``
        (pair ``pairs[p]`` in column ``p``): per pair the median and MAD over ``k`` (and the pixels with ``config.pool_pixels``)."""
        if not torch.is_tensor(changes) or changes.dim() != 4 or changes.shape[1] != len(tuple(pairs)):
            raise ValueError(f"changes: expected a (references, {len(tuple(pairs))} pairs, height, width) tensor, got "
                             f"{tuple(changes.shape) if torch.is_tensor(changes) else type(changes).__name__}")
        stats = [normal_change_statistics(changes[:, p], config.pool_pixels) for p in range(changes.shape[1])]
        return cls(torch.stack([m for m, _ in stats]), torch.stack([s for _, s in stats]), tuple(pairs), int(num_steps), config,
                   None if timesteps is None else tuple(timesteps), int(changes.shape[0]))

    @classmethod
    def from_trajectories(cls, x0_hats: Sequence[torch.Tensor], config: DetectorConfig, pairs: str | Sequence[int] = "window",
                          timesteps: Sequence[int] | None = None) -> "ReferenceChangeStatistics":
        """From the clean estimates of ``K`` reference trajectories: ``x0_hats[n]`` is frame ``n`` ``(K, C, H, W)`` for every
        step ``n = 0 .. N-1`` (``quantity="x0"``; frames and changes as the detector builds them)."""
        if config.quantity != "x0":
            raise ValueError("config.quantity: from_trajectories takes clean estimates (quantity 'x0'); from_real_data also "
                             "builds 'weighted_score' frames")
        frames = list(x0_hats)
        if len(frames) < 2 or any(not torch.is_tensor(f) or f.dim() != 4 or f.shape != frames[0].shape for f in frames):
            raise ValueError("x0_hats: expected N >= 2 frames, each a (references, channels, height, width) tensor of one shape")
        pairs = _pairs_of(pairs, config, len(frames), None)
        changes = _pair_changes({n: frame_of(frames[n], config) for n in _positions(pairs)}, pairs, config)
        return cls.from_changes(changes, pairs, len(frames), config, timesteps)

    @classmethod
    def from_real_data(cls, model: Callable, sampler: DDIMSampler, images: torch.Tensor, seed: int,
                       config: DetectorConfig | str = "auto", pairs: str | Sequence[int] = "window", cond: Any = None,
                       batch_size: int = 16) -> "ReferenceChangeStatistics":
        """The statistics of real images noised to every needed step with one fixed noise each (module docstring).

        Args:
            model: the eps-model the detector will watch (on its device; the statistics are made there).
            sampler: the run's sampler (its timesteps, clamping and micro-batching).
            images: ``(K, C, H, W)`` real images in the model's data range, ``K >= 3``.
            seed: base seed of the fixed noises, ``e_i`` from ``generator_for(seed, i, REFERENCE_STREAM)``.
            config: the detector's settings (``"auto"``: :meth:`DetectorConfig.for_resolution` of the images' height).
            pairs: ``"window"`` (the config's window for this sampler, the default and cheapest), ``"all"`` or a list.
            cond: the model's conditioning: a tensor with one row per image (split with the images) or any object.
            batch_size: images per network call.
        """
        if not isinstance(sampler, DDIMSampler):
            raise TypeError(f"sampler: expected a DDIMSampler, got {type(sampler).__name__}")
        if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"images: expected a floating (references, channels, height, width) tensor, got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if images.shape[0] < MIN_NORMAL_SAMPLES:
            raise ValueError(f"images: the median and MAD of normal change need at least {MIN_NORMAL_SAMPLES} reference images, got {images.shape[0]}")
        if not torch.isfinite(images).all():
            raise ValueError("images: contains NaN or Inf")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if config == "auto":
            config = DetectorConfig.for_resolution(int(images.shape[-2]))
        if not isinstance(config, DetectorConfig):
            raise TypeError(f"config: expected a DetectorConfig or 'auto', got {type(config).__name__}")
        config.check_image_size(int(images.shape[-2]), int(images.shape[-1]))
        generator_for(seed, 0, REFERENCE_STREAM)  # refuses a bad seed before any work
        if sampler.clamp_x0 and getattr(model, "data_range", ()) is None:
            sampler = sampler.without_clamping()  # as DDIMSampler.sample: data without a range is never clamped
        sampler._check_model_outputs(model)
        if sampler.micro_batch is not None:
            from ..prediction import FixedMicroBatch

            model = FixedMicroBatch(model, sampler.micro_batch)
        pairs = _pairs_of(pairs, config, sampler.num_steps, [sampler.schedule.alphas_cumprod[t] for t in sampler.timesteps])
        m_device, m_dtype = model_placement(model)
        device = m_device if m_device is not None else images.device
        dtype = m_dtype if m_dtype is not None else images.dtype
        k = int(images.shape[0])
        parts = []
        with torch.no_grad():
            for start in range(0, k, batch_size):
                idx = list(range(start, min(start + batch_size, k)))
                x0 = images[start : idx[-1] + 1].to(device, dtype)
                e = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=generator_for(seed, i, REFERENCE_STREAM), dtype=dtype)
                                 for i in idx]).to(device)
                c = cond[start : idx[-1] + 1] if (torch.is_tensor(cond) and cond.dim() > 0 and cond.shape[0] == k) else cond
                c = c.to(device) if torch.is_tensor(c) else c
                frames = {n: _real_frame(model, sampler, x0, e, n, c, idx, config) for n in _positions(pairs)}
                parts.append(_pair_changes(frames, pairs, config))
        return cls.from_changes(torch.cat(parts), pairs, sampler.num_steps, config, sampler.timesteps)


def _positions(pairs: Sequence[int]) -> list[int]:
    """The frames the pairs need: ``n - 1`` and ``n`` of each."""
    return sorted({m for n in pairs for m in (n - 1, n)})


def _pair_changes(frames: dict[int, torch.Tensor], pairs: Sequence[int], config: DetectorConfig) -> torch.Tensor:
    """``(K, P, H, W)`` float64: the pixel change of every pair, as the detector computes it (steps 1-2 and the channel max)."""
    return torch.stack([pixel_change(change_map(frames[n - 1], frames[n], config)) for n in pairs], 1)


def _real_frame(model: Callable, sampler: DDIMSampler, x0: torch.Tensor, e: torch.Tensor, n: int, cond: Any, indices: list[int],
                config: DetectorConfig) -> torch.Tensor:
    """Frame ``n`` of the real images ``x0`` noised with ``e`` to step ``n``: ``x0_hat`` from the sampling loop's own
    model call at ``x_{t_n}`` (clamping, zero terminal SNR and the weighted score as a step of the loop)."""
    t = sampler.timesteps[n]
    coeffs = sampler.coefficients(n)
    b = x0.shape[0]
    x_t = sampler.schedule.add_noise(x0, torch.full((b,), t, dtype=torch.long, device=x0.device), e)
    state = StepState(sampler=sampler, model=model, position=n, index=sampler.num_steps - 1 - n, num_steps=sampler.num_steps, t=t,
                      t_prev=sampler.previous_timesteps[n], coeffs=coeffs, x_t=x_t, cond=cond, sample_indices=indices,
                      rows=torch.arange(b, device=x0.device), rng=None)
    sampler._model_call(model, state, x_t, cond)
    return frame_of(state.x0_hat, config, state.eps, coeffs.abar_t)
