"""Training of every bundled network (``onmanifold train ...``).

* :func:`train_diffusion` — eps-prediction diffusion models, loss
  ``E_{t, x0, eps} ||eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)||^2`` (Ho et al. 2020),
  Adam, an exponential moving average of the weights (the EMA weights are saved), periodic
  checkpoints. Beds: ``digits`` / ``shapes`` (UNet2DModel, linear betas 1e-4 .. 0.02, T = 1000),
  ``gmm2d`` (:class:`EpsMLP`, linear betas 1e-3 .. 0.2, T = 100).
* :func:`train_classifier` — the guidance (``role='guidance'``, :class:`ConvClassifier`) and the
  independent evaluation (``role='eval'``, :class:`ResidualClassifier`, another seed) classifiers,
  cross-entropy on the training split (digits) or on fresh procedural shapes (type and size heads).
  Guidance classifiers see inputs with Gaussian noise of random std in [0, 0.3] (they are applied to
  Tweedie estimates ``x0_hat``, which are blurred/noisy early in sampling); evaluation classifiers see
  clean inputs with light noise (std in [0, 0.05]).

The user's own data (``data=``, ``onmanifold train ... --data PATH``, read by :mod:`onmanifold.userdata`)
replaces a bed's stream: batches are drawn uniformly from the images with the same generator, the
networks are sized from the data's channels and resolution (:func:`user_unet_config`; ``ConvClassifier``
and ``TimeCNN`` with ``in_channels`` and ``image_size``), and a held-out part (:func:`split_heldout`: the
last 10 %, at most 512 images; none below 10 images) is kept out of training and scored at the end:
the diffusion model's denoising loss, the classifier's accuracy, the time predictor's exact-step and
within-k accuracy. A time predictor trained for a diffusion model (``model=``) uses that model's
schedule and, for a latent model, the VAE's latents of the images; its metadata records the model's
identity (:func:`onmanifold.binding.model_binding`), so it is refused with another model.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .nets.checkpoint import save_network, write_json_atomic
from .schedule import NoiseSchedule
from .testbeds import TESTBEDS, get_testbed

__all__ = ["train_diffusion", "train_classifier", "train_time_predictor", "bed_schedule", "classifier_accuracy", "BED_ATTRIBUTES",
           "user_unet_config", "split_heldout", "USER_SCHEDULE"]

BED_ATTRIBUTES = {name: list(bed.attributes) for name, bed in TESTBEDS.items()}
"""The categorical attributes of each bed's labels (columns of the label tensor); from :mod:`onmanifold.testbeds`."""
_ATTRIBUTE_CLASSES = {k: v for bed in TESTBEDS.values() for k, v in bed.attribute_classes.items()}


def bed_schedule(bed: str) -> NoiseSchedule:
    """The training schedule of a test bed (:meth:`onmanifold.testbeds.TestBed.schedule`)."""
    return get_testbed(bed).schedule()


def _data_sampler(bed: str, generator: torch.Generator):
    """A function ``batch_size -> (x0, labels or None)`` drawing training data of ``bed``."""
    if bed == "digits":
        from .data.digits import load_digits_split

        x, y = load_digits_split("train")

        def draw(b: int):
            idx = torch.randint(0, x.shape[0], (b,), generator=generator)
            return x[idx], y[idx][:, None]

        return draw
    if bed == "shapes":
        from .data.shapes import sample_shapes

        def draw(b: int):
            img, p = sample_shapes(b, generator)
            return img, torch.stack([p.type, p.size], dim=1)

        return draw
    if bed == "gmm2d":
        from .data.gmm2d import sample_gmm2d

        return lambda b: (sample_gmm2d(b, generator), None)
    if bed == "mosaic":  # full 64x64 mosaics (no crops: the tile grid stays where the model saw it)
        from .data.mosaic import sample_mosaic

        return lambda b: (sample_mosaic(b, generator)[0], None)
    if bed == "mosaic-tiles":  # the 16x16 tiles of fresh mosaics with their [type, size] (the tile-level eval classifier)
        from .data.mosaic import GRID, sample_mosaic, split_tiles, tile_labels

        def draw(b: int):
            img, p = sample_mosaic(-(-b // (GRID * GRID)), generator)
            return split_tiles(img)[:b], tile_labels(p)[:b]

        return draw
    raise ValueError(f"bed: expected 'gmm2d', 'digits', 'shapes' or 'mosaic', got {bed!r}")


USER_SCHEDULE = {"kind": "linear", "num_train_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
"""The schedule a diffusion model trained on the user's data gets (DDPM's linear betas, T = 1000, as the image beds)."""


def _check_user_images(data: torch.Tensor, what: str = "data") -> tuple[int, int]:
    """``(channels, size)`` of square ``(N, C, S, S)`` images in [-1, 1]; ``ValueError`` naming ``what`` otherwise."""
    if not torch.is_tensor(data) or data.dim() != 4 or not data.is_floating_point():
        raise ValueError(f"{what}: expected float images (N, C, H, W), got {getattr(data, 'shape', type(data).__name__)}")
    n, c, h, w = data.shape
    if h != w:
        raise ValueError(f"{what}: the networks take square images, got {h} x {w} (give --crop {min(h, w)})")
    if h < 8:
        raise ValueError(f"{what}: images of {h} x {w} pixels are too small (at least 8 x 8)")
    if not torch.isfinite(data).all() or float(data.min()) < -1 - 1e-4 or float(data.max()) > 1 + 1e-4:
        raise ValueError(f"{what}: expected finite values in [-1, 1]")
    return int(c), int(h)


def split_heldout(n: int) -> tuple[slice, slice]:
    """``(train, heldout)`` slices of ``n`` user images: the last 10 % (at most 512) held out; none below 10 images."""
    k = 0 if n < 10 else min(512, max(1, n // 10))
    return slice(0, n - k), slice(n - k, n)


def user_unet_config(channels: int, size: int) -> dict:
    """A ``UNet2DModel`` configuration sized from the data: ``size`` halves down to 4 x 4 (at most 4 levels,
    widths 32, 64, 128, 128), attention at the lowest level when it is at most 8 x 8."""
    levels = 1
    while levels < 4 and size % (2 ** levels) == 0 and size // (2 ** levels) >= 4:
        levels += 1
    widths = (32, 64, 128, 128)[:levels]
    attention = size // 2 ** (levels - 1) <= 8 and levels > 1
    down = ["DownBlock2D"] * levels
    up = ["UpBlock2D"] * levels
    if attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return dict(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1, block_out_channels=widths,
                down_block_types=tuple(down), up_block_types=tuple(up), norm_num_groups=8)


def _user_sampler(x: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator):
    """``batch_size -> (x0, labels or None)`` drawn uniformly (with replacement) from the user's images."""

    def draw(b: int):
        idx = torch.randint(0, x.shape[0], (b,), generator=generator)
        return x[idx], (labels[idx][:, None] if labels is not None else None)

    return draw


def _data_meta(data: torch.Tensor, source: dict | None, train: slice, held: slice) -> dict:
    return {**(source or {}), "images": int(data.shape[0]), "shape": list(data.shape[1:]), "train_images": train.stop - train.start,
            "heldout_images": held.stop - held.start}


def _check_positive(**values) -> None:
    """``ValueError`` naming the first argument that is not a positive number (steps, batch_size, lr, ...)."""
    import math

    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}: expected a positive value, got {v!r}")


def _check_unet_overrides(bed: str, unet_overrides: dict | None) -> None:
    """Refuse UNet settings the bed's network cannot take (never ignore them)."""
    from .nets.networks import unet_config

    if not unet_overrides:
        return
    if bed == "gmm2d":
        raise ValueError(f"block_out_channels: the gmm2d bed trains an EpsMLP, which takes no UNet settings (got {sorted(unet_overrides)})")
    base = unet_config(bed)
    boc = unet_overrides.get("block_out_channels")
    if boc is not None:
        n, groups = len(base["block_out_channels"]), base["norm_num_groups"]
        if len(boc) != n or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % groups for c in boc):
            raise ValueError(f"block_out_channels: expected {n} positive multiples of {groups} (one per down block of the {bed} UNet), got {list(boc)}")


def train_diffusion(
    bed: str | None,
    out: str | Path,
    steps: int = 6000,
    batch_size: int = 128,
    lr: float = 3e-4,
    ema_decay: float = 0.999,
    seed: int = 0,
    save_every: int = 0,
    command: str = "",
    progress: bool = True,
    resume: bool = False,
    unet_overrides: dict | None = None,
    data: torch.Tensor | None = None,
    data_source: dict | None = None,
) -> Path:
    """Train the diffusion model of ``bed`` and save it to ``out`` (EMA weights).

    ``save_every > 0`` also writes ``out/step-XXXXXX`` snapshots (kept for the ASCED study of
    earlier checkpoints) and the resumable training state ``out/training-state.pt`` (weights, EMA,
    optimiser, step, generator state; written atomically). ``resume=True`` continues from that state
    when it exists: the result equals an uninterrupted run. ``unet_overrides`` replaces entries of
    the bed's :func:`~onmanifold.nets.networks.unet_config` (e.g. wider ``block_out_channels``).
    ``data`` (with ``bed=None``): the user's images ``(N, C, S, S)`` in [-1, 1] instead of a bed (module
    docstring); ``data_source`` describes them in the metadata. Returns the output folder.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from .nets.networks import EpsMLP, unet_config

    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise ValueError(f"save_every: expected 0 (never) or a positive number of steps, got {save_every!r}")
    if not (isinstance(ema_decay, (int, float)) and 0 <= ema_decay < 1):
        raise ValueError(f"ema_decay: expected a value in [0, 1), got {ema_decay!r}")
    if (bed is None) == (data is None):
        raise ValueError("bed: give a test bed or data, not both or neither")
    if data is not None:
        channels, size = _check_user_images(data)
        train_part, held_part = split_heldout(data.shape[0])
        if unet_overrides:
            raise ValueError("block_out_channels: the UNet of user data is sized from the data (user_unet_config); not settable")
    else:
        _check_unet_overrides(bed, unet_overrides)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    schedule = bed_schedule(bed) if bed is not None else NoiseSchedule.from_config(USER_SCHEDULE)
    if data is not None:
        model = UNet2DModel(**user_unet_config(channels, size))
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True)
    elif bed == "gmm2d":
        model = EpsMLP()
        scheduler = None
    else:
        model = UNet2DModel(**{**unet_config(bed), **(unet_overrides or {})})
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    draw = _data_sampler("mosaic-tiles" if bed == "mosaic" else bed, gen) if data is None else _user_sampler(data[train_part], None, gen)
    out = Path(out)
    t0 = time.time()
    losses: list[float] = []

    def meta(step: int) -> dict:
        extra = {"data": _data_meta(data, data_source, train_part, held_part)} if data is not None else {}
        return {
            "bed": bed,
            **extra,
            "kind": "diffusion",
            "prediction_type": "epsilon",
            "schedule": schedule.to_config(),
            "train_steps": step,
            "batch_size": batch_size,
            "lr": lr,
            "ema_decay": ema_decay,
            "seed": seed,
            "minutes": round((time.time() - t0) / 60, 2),
            "final_loss_avg100": sum(losses[-100:]) / max(len(losses[-100:]), 1),
            "command": command,
            "parameters": sum(p.numel() for p in model.parameters()),
        }

    def forward(m, x, t):
        return m(x, t) if bed == "gmm2d" else m(x, t).sample

    name = bed if bed is not None else "user-data"

    state_path = out / "training-state.pt"
    first = 1
    if resume and state_path.exists():
        done, losses = _load_training_state(state_path, model, ema, opt, gen)
        first = done + 1
    bar = tqdm(range(first, steps + 1), desc=f"train {name} diffusion", disable=not progress, mininterval=5, initial=first - 1, total=steps)
    for step in bar:
        x0, _ = draw(batch_size)
        t = torch.randint(0, schedule.T, (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = schedule.add_noise(x0, t, eps)
        loss = F.mse_loss(forward(model, xt, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema_update(ema, model, step, ema_decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
        if save_every and step % save_every == 0 and step < steps:
            save_network(ema, out / "snapshots" / f"step-{step:06d}", meta=meta(step), scheduler=scheduler)
            _save_training_state(state_path, step, model, ema, opt, gen, losses)
    final = meta(steps)
    if data is not None:
        final["heldout"] = _heldout_denoising_loss(ema, data[held_part], schedule, seed)
    save_network(ema, out, meta=final, scheduler=scheduler)
    return out


@torch.no_grad()
def _heldout_denoising_loss(model, x: torch.Tensor, schedule: NoiseSchedule, seed: int) -> dict:
    """The EMA model's eps-MSE on the held-out images at 10 evenly spaced ``t`` (fixed noise, ``seed``); its mean."""
    if x.shape[0] == 0:
        return {"images": 0, "note": "no held-out images (fewer than 10 images)"}
    gen = torch.Generator().manual_seed(seed + 1)
    rows = []
    for t in torch.linspace(0, schedule.T - 1, 10).round().long().tolist():
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        eps = torch.randn(x.shape, generator=gen)
        rows.append({"t": t, "eps_mse": float(F.mse_loss(model(schedule.add_noise(x, tt, eps), tt).sample, eps))})
    return {"images": int(x.shape[0]), "eps_mse": sum(r["eps_mse"] for r in rows) / len(rows), "rows": rows}


def _ema_update(ema, model, step: int, ema_decay: float) -> None:
    """``ema <- ema + (1 - d) (model - ema)`` with ``d = min(ema_decay, (1 + step) / (10 + step))`` (warm-up)."""
    decay = min(ema_decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)


def _load_training_state(path: Path, model, ema, opt, gen: torch.Generator, lr_scheduler=None) -> tuple[int, list[float]]:
    """Restore what :func:`_save_training_state` wrote; returns ``(step, losses)``. ``ema``/``lr_scheduler`` may be None."""
    st = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(st["model"])
    if ema is not None:
        ema.load_state_dict(st["ema"])
    opt.load_state_dict(st["optimizer"])
    if lr_scheduler is not None:
        lr_scheduler.load_state_dict(st["lr_scheduler"])
    gen.set_state(st["generator"])
    torch.set_rng_state(st["torch_rng"])
    return int(st["step"]), [float(v) for v in st["losses"]]


def _save_training_state(path: Path, step: int, model, ema, opt, gen: torch.Generator, losses: list[float], lr_scheduler=None) -> None:
    """Write the resumable training state atomically (:func:`onmanifold.io.save_tensors_atomic`)."""
    from .io import save_tensors_atomic

    save_tensors_atomic(
        path,
        {"step": step, "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else {}, "optimizer": opt.state_dict(),
         "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": torch.tensor(losses[-1000:]),
         **({"lr_scheduler": lr_scheduler.state_dict()} if lr_scheduler is not None else {})},
    )


def train_classifier(
    bed: str | None,
    role: str,
    out: str | Path,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int | None = None,
    command: str = "",
    progress: bool = True,
    data: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    classes: list[str] | None = None,
    data_source: dict | None = None,
    save_every: int = 0,
    resume: bool = False,
) -> Path:
    """Train the ``role`` ('guidance' or 'eval') classifier of ``bed`` ('digits' or 'shapes'), or of the user's ``data``.

    Reports held-out accuracy in the saved metadata: the digits held-out split, or 2000 fresh
    shapes from a fixed seed (per attribute: type, size); for ``data`` (with ``bed=None``) the held-out
    part (:func:`split_heldout`). ``labels`` ``(N,)`` are the classes of ``data`` (0 .. K - 1; ``classes``
    names them, e.g. the subfolder names).

    ``save_every`` / ``resume``: every ``save_every`` steps the resumable state (weights, optimiser,
    one-cycle schedule, step, generator state) is written atomically to ``out/training-state.pt``;
    ``resume=True`` continues from it and ends with the same weights as an uninterrupted run. No EMA:
    the one-cycle schedule anneals the learning rate to zero, which already averages the end of
    training; the EMA is kept where it helps, for the diffusion models whose samples depend on it.
    """
    from .nets.networks import ConvClassifier, ResidualClassifier

    if role not in ("guidance", "eval"):
        raise ValueError(f"role: expected 'guidance' or 'eval', got {role!r}")
    if (bed is None) == (data is None):
        raise ValueError("bed: give a test bed or data, not both or neither")
    if bed is not None and bed not in ("digits", "shapes", "mosaic"):
        raise ValueError(f"bed: expected 'digits', 'shapes' or 'mosaic', got {bed!r}")
    if bed == "mosaic" and role != "eval":
        raise ValueError("role: the mosaic bed has only a tile-level evaluation classifier (role='eval'); no guidance task uses a classifier there")
    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    if not (isinstance(save_every, int) and save_every >= 0):
        raise ValueError(f"save_every: expected an integer >= 0, got {save_every!r}")
    if data is not None:
        channels, size = _check_user_images(data)
        if labels is None:
            raise ValueError("labels: a classifier of user data needs class labels (--labels FILE, or one subfolder per class)")
        if not torch.is_tensor(labels) or labels.shape != (data.shape[0],) or labels.is_floating_point() or int(labels.min()) < 0:
            raise ValueError(f"labels: expected {data.shape[0]} integer class labels >= 0, got {getattr(labels, 'shape', labels)}")
        num_classes = int(labels.max()) + 1
        if num_classes < 2:
            raise ValueError("labels: all images have the same class; a classifier needs at least two")
        train_part, held_part = split_heldout(data.shape[0])
    if seed is None:
        seed = 1 if role == "guidance" else 2
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if data is None:
        channels = 1
        size, heads = {"digits": (8, [10]), "shapes": (32, [3, 3]), "mosaic": (16, [3, 3])}[bed]
    else:
        heads = [num_classes]
    cls = ConvClassifier if role == "guidance" else ResidualClassifier
    # mosaic tiles (16x16, one shape on a gradient) need a narrow network; width 16 keeps the bundled package under its budget
    model = cls(in_channels=channels, image_size=size, num_classes=heads, **({"width": 16} if bed == "mosaic" else {}))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    draw = _data_sampler("mosaic-tiles" if bed == "mosaic" else bed, gen) if data is None else _user_sampler(data[train_part], labels[train_part], gen)
    max_noise = 0.3 if role == "guidance" else 0.05
    t0 = time.time()
    state_path = Path(out) / "training-state.pt"
    first = 1
    if resume and state_path.exists():
        done, _ = _load_training_state(state_path, model, None, opt, gen, lr_scheduler=sched)
        first = done + 1
    model.train()
    bar = tqdm(range(first, steps + 1), desc=f"train {bed or 'user-data'} {role} classifier", disable=not progress, mininterval=5,
               initial=first - 1, total=steps)
    for step in bar:
        x, y = draw(batch_size)
        if bed == "digits":  # small random shifts (+-1 px) against overfitting the 1197 training digits
            sh = torch.randint(-1, 2, (2,), generator=gen)
            x = torch.roll(x, shifts=(int(sh[0]), int(sh[1])), dims=(2, 3))
        noise_std = max_noise * torch.rand(x.shape[0], 1, 1, 1, generator=gen)
        x = x + noise_std * torch.randn(x.shape, generator=gen)
        logits = model(x)
        logits = logits if isinstance(logits, list) else [logits]
        loss = sum(F.cross_entropy(lg, y[:, k]) for k, lg in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if save_every and step % save_every == 0 and step < steps:
            _save_training_state(state_path, step, model, None, opt, gen, [], lr_scheduler=sched)
    model.eval()
    if data is None:
        acc = classifier_accuracy(model, bed)
    else:
        with torch.no_grad():
            xh, yh = data[held_part], labels[held_part]
            acc = {"class": float((model(xh).argmax(1) == yh).float().mean()) if xh.shape[0] else None, "images": int(xh.shape[0])}
    extra = {"data": _data_meta(data, data_source, train_part, held_part), "classes": classes or [str(k) for k in range(num_classes)]} if data is not None else {}
    meta = {
        "bed": bed,
        **extra,
        "kind": "classifier",
        "role": role,
        "heads": (["digit"] if bed == "digits" else ["type", "size"]) if data is None else ["class"],
        "train_steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "minutes": round((time.time() - t0) / 60, 2),
        "heldout_accuracy": acc,
        "command": command,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_network(model, out, meta=meta)
    return Path(out)


@torch.no_grad()
def classifier_accuracy(model: torch.nn.Module, bed: str) -> dict[str, float]:
    """Held-out accuracy per head: digits held-out split; 2000 fresh shapes (seed 12345) for shapes; the 2000 tiles of
    125 fresh mosaics (the ``classifier-test`` split) for mosaic."""
    if bed == "digits":
        x, y = get_testbed(bed).images("classifier-test")
        return {"digit": float((model(x).argmax(1) == y[:, 0]).float().mean())}
    if bed == "mosaic":
        from .data.mosaic import sample_mosaic, split_tiles, tile_labels

        img, p = sample_mosaic(get_testbed(bed).split_sizes["classifier-test"], get_testbed(bed).generator("classifier-test"))
        x, y = split_tiles(img), tile_labels(p)
    else:
        x, y = get_testbed(bed).images("classifier-test", 2000)
    logits = model(x)
    return {
        "type": float((logits[0].argmax(1) == y[:, 0]).float().mean()),
        "size": float((logits[1].argmax(1) == y[:, 1]).float().mean()),
    }


def train_time_predictor(
    bed: str | None,
    out: str | Path,
    steps: int = 5000,
    batch_size: int = 256,
    lr: float = 1e-3,
    conditions: list[str] = (),
    widths: list[int] = (16, 32, 64, 128),
    seed: int = 3,
    command: str = "",
    progress: bool = True,
    data: torch.Tensor | None = None,
    model: str | os.PathLike | None = None,
    data_source: dict | None = None,
    save_every: int = 0,
    resume: bool = False,
) -> Path:
    """Train the time predictor ``phi(x[, c])`` of ``bed``, or of diffusion ``model`` on the user's ``data``
    (Temporal Alignment Guidance, docs/methods/tag.md#R1).

    Loss ``E_{t ~ U{0..T-1}, x0, eps}[-log softmax(phi(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps))_t]`` with a
    fresh ``t`` and ``eps`` per example, the diffusion model's schedule and data scaling. Networks:
    :class:`~onmanifold.nets.networks.TimeCNN` (images) or :class:`~onmanifold.nets.networks.TimeMLP`
    (gmm2d). ``conditions`` names label attributes (``digit``; ``type``, ``size``) the predictor is
    conditioned on (``p(t | x, c)``).

    With ``model`` (a diffusers folder or bundled name) and ``data`` (``bed=None``): the predictor classifies
    that model's ``T`` training steps with its schedule; for a latent model the images are encoded once by
    its VAE (posterior mean, scaled) and the predictor trains on the latents. ``data`` must have the shape of
    the model's images. The metadata records the model's identity (``binding``), and the exact-step and
    within-5/20-step accuracy on the held-out images (:func:`split_heldout`). ``save_every`` / ``resume``: the
    resumable training state ``out/training-state.pt``, as :func:`train_diffusion`.

    Deviation from the paper (Adam 1e-4, 300 k iterations; docs/methods/tag.md#D9): Adam with ``lr`` (default 1e-3) and cosine
    decay over a few thousand iterations, so a predictor trains in minutes on a CPU; the iterations,
    wall time and accuracy curves are recorded in the checkpoint metadata.
    """
    from .nets.networks import TimeCNN, TimeMLP
    from .temporal.predictor import heldout_time_accuracy, predictor_accuracy

    conditions = list(conditions)
    if (bed is None) == (data is None):
        raise ValueError("bed: give a test bed or data (with model), not both or neither")
    if (data is None) != (model is None):
        raise ValueError("model: a time predictor of user data is trained for one diffusion model: give data and model together")
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise ValueError(f"save_every: expected 0 (never) or a positive number of steps, got {save_every!r}")
    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    binding = None
    if data is not None:
        if conditions:
            raise ValueError(f"conditions: a predictor of user data is unconditional, got {conditions}")
        known, columns, cond_classes = [], [], []
        x_all, schedule, binding = _model_space(model, data)
        channels, size = int(x_all.shape[1]), int(x_all.shape[2])
        if x_all.shape[2] != x_all.shape[3] or size < 2:
            raise ValueError(f"model: TimeCNN takes square samples, the model's are {tuple(x_all.shape[1:])}")
        train_part, held_part = split_heldout(x_all.shape[0])
    else:
        known = BED_ATTRIBUTES.get(bed)
        if known is None:
            raise ValueError(f"bed: expected 'gmm2d', 'digits' or 'shapes', got {bed!r}")
        for c in conditions:
            if c not in known:
                raise ValueError(f"conditions: bed {bed!r} has attributes {known}, got {c!r}")
        schedule = bed_schedule(bed)
        cond_classes = [_ATTRIBUTE_CLASSES[c] for c in conditions]
        columns = [known.index(c) for c in conditions]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if bed == "gmm2d":
        net = TimeMLP(num_timesteps=schedule.T, cond_classes=cond_classes)
    elif data is not None:
        net = TimeCNN(in_channels=channels, image_size=size, num_timesteps=schedule.T, widths=list(widths))
    else:
        net = TimeCNN(in_channels=1, image_size=8 if bed == "digits" else 32, num_timesteps=schedule.T, widths=list(widths), cond_classes=cond_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    draw = _data_sampler("mosaic-tiles" if bed == "mosaic" else bed, gen) if data is None else _user_sampler(x_all[train_part], None, gen)
    t0 = time.time()
    losses: list[float] = []
    out = Path(out)
    state_path = out / "training-state.pt"
    first = 1
    if resume and state_path.exists():
        done, losses = _load_training_state(state_path, net, None, opt, gen, lr_scheduler=sched)
        first = done + 1
    bar = tqdm(range(first, steps + 1), desc=f"train {bed or 'user-data'} time predictor", disable=not progress, mininterval=5,
               initial=first - 1, total=steps)
    for step in bar:
        x0, labels = draw(batch_size)
        t = torch.randint(0, schedule.T, (batch_size,), generator=gen)
        xt = schedule.add_noise(x0, t, torch.randn(x0.shape, generator=gen))
        cond = labels[:, columns] if columns else None
        loss = F.cross_entropy(net(xt, cond), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
        if save_every and step % save_every == 0 and step < steps:
            _save_training_state(state_path, step, net, None, opt, gen, losses, lr_scheduler=sched)
    minutes = round((time.time() - t0) / 60, 2)
    net.eval()
    with torch.no_grad():  # the checkpoint stores float16: measure exactly the weights that are shipped
        for p in net.parameters():
            p.copy_(p.half().float())
    if data is None:
        curves = predictor_accuracy(net, bed, schedule, conditions=conditions)
    elif held_part.stop > held_part.start:
        curves = {"model": str(model), **heldout_time_accuracy(net, x_all[held_part], schedule, num_times=min(100, schedule.T), per_time=50, seed=seed)}
    else:
        curves = {"model": str(model), "summary": {"note": "no held-out images (fewer than 10 images)"}}
    meta = {
        "bed": bed,
        **({"data": _data_meta(x_all, data_source, train_part, held_part), "binding": binding} if data is not None else {}),
        "kind": "time_predictor",
        "conditions": conditions,
        "schedule": schedule.to_config(),
        "train_steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "minutes": minutes,
        "final_loss_avg100": sum(losses[-100:]) / max(len(losses[-100:]), 1),
        "heldout": curves["summary"],
        "command": command,
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    save_network(net, out, meta=meta, half=True)
    write_json_atomic(out / "accuracy_curve.json", curves)
    return out


@torch.no_grad()
def _model_space(model: str | os.PathLike, data: torch.Tensor, batch_size: int = 64) -> tuple[torch.Tensor, NoiseSchedule, dict]:
    """``(x, schedule, binding)``: the user's images in the model's sample space (the VAE's latents for a latent
    model), its training schedule and its identity (:func:`onmanifold.binding.model_binding`)."""
    from .binding import model_binding
    from .model import load_diffusion_model

    loaded = load_diffusion_model(model)
    if len(loaded.sample_shape) != 3:
        raise ValueError(f"model: {model} samples points of shape {tuple(loaded.sample_shape)}, not images; train its predictor with --bed")
    latent = loaded.data_range is None and hasattr(loaded.model, "encode")
    if not torch.is_tensor(data) or data.dim() != 4:
        raise ValueError(f"data: expected images (N, C, H, W), got {getattr(data, 'shape', type(data).__name__)}")
    from .userdata import model_image_shape

    shape = model_image_shape(loaded)
    if tuple(data.shape[1:]) != tuple(shape):
        raise ValueError(f"data: the model {model} makes images of {' x '.join(map(str, shape))} (C x H x W), the data are "
                         f"{' x '.join(map(str, data.shape[1:]))} (give --resize/--crop, or images of that size)")
    if not torch.isfinite(data).all() or float(data.min()) < -1 - 1e-4 or float(data.max()) > 1 + 1e-4:
        raise ValueError("data: expected finite values in [-1, 1]")
    x = torch.cat([loaded.encode(data[i : i + batch_size]) for i in range(0, data.shape[0], batch_size)]).float() if latent else data
    return x, loaded.schedule, {**model_binding(model, loaded), "space": "latent" if latent else "pixel"}
