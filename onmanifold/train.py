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
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .nets.checkpoint import save_network, write_json_atomic
from .schedule import NoiseSchedule
from .testbeds import TESTBEDS, get_testbed

__all__ = ["train_diffusion", "train_classifier", "train_time_predictor", "bed_schedule", "classifier_accuracy", "BED_ATTRIBUTES"]

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
    raise ValueError(f"bed: expected 'gmm2d', 'digits', 'shapes' or 'mosaic', got {bed!r}")


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
    bed: str,
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
) -> Path:
    """Train the diffusion model of ``bed`` and save it to ``out`` (EMA weights).

    ``save_every > 0`` also writes ``out/step-XXXXXX`` snapshots (kept for the ASCED study of
    earlier checkpoints) and the resumable training state ``out/training-state.pt`` (weights, EMA,
    optimiser, step, generator state; written atomically). ``resume=True`` continues from that state
    when it exists: the result equals an uninterrupted run. ``unet_overrides`` replaces entries of
    the bed's :func:`~onmanifold.nets.networks.unet_config` (e.g. wider ``block_out_channels``).
    Returns the output folder.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from .nets.networks import EpsMLP, unet_config

    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 0:
        raise ValueError(f"save_every: expected 0 (never) or a positive number of steps, got {save_every!r}")
    if not (isinstance(ema_decay, (int, float)) and 0 <= ema_decay < 1):
        raise ValueError(f"ema_decay: expected a value in [0, 1), got {ema_decay!r}")
    _check_unet_overrides(bed, unet_overrides)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    schedule = bed_schedule(bed)
    if bed == "gmm2d":
        model = EpsMLP()
        scheduler = None
    else:
        model = UNet2DModel(**{**unet_config(bed), **(unet_overrides or {})})
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    draw = _data_sampler(bed, gen)
    out = Path(out)
    t0 = time.time()
    losses: list[float] = []

    def meta(step: int) -> dict:
        return {
            "bed": bed,
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

    state_path = out / "training-state.pt"
    first = 1
    if resume and state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        losses = [float(v) for v in st["losses"]]
        first = int(st["step"]) + 1
    bar = tqdm(range(first, steps + 1), desc=f"train {bed} diffusion", disable=not progress, mininterval=5, initial=first - 1, total=steps)
    for step in bar:
        x0, _ = draw(batch_size)
        t = torch.randint(0, schedule.T, (batch_size,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        xt = schedule.add_noise(x0, t, eps)
        loss = F.mse_loss(forward(model, xt, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
        if save_every and step % save_every == 0 and step < steps:
            save_network(ema, out / "snapshots" / f"step-{step:06d}", meta=meta(step), scheduler=scheduler)
            _save_training_state(state_path, step, model, ema, opt, gen, losses)
    save_network(ema, out, meta=meta(steps), scheduler=scheduler)
    return out


def _save_training_state(path: Path, step: int, model, ema, opt, gen: torch.Generator, losses: list[float]) -> None:
    """Write the resumable training state atomically (:func:`onmanifold.io.save_tensors_atomic`)."""
    from .io import save_tensors_atomic

    save_tensors_atomic(
        path,
        {"step": step, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
         "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "losses": torch.tensor(losses[-1000:])},
    )


def train_classifier(
    bed: str,
    role: str,
    out: str | Path,
    steps: int = 3000,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int | None = None,
    command: str = "",
    progress: bool = True,
) -> Path:
    """Train the ``role`` ('guidance' or 'eval') classifier of ``bed`` ('digits' or 'shapes').

    Reports held-out accuracy in the saved metadata: the digits held-out split, or 2000 fresh
    shapes from a fixed seed (per attribute: type, size).
    """
    from .nets.networks import ConvClassifier, ResidualClassifier

    if role not in ("guidance", "eval"):
        raise ValueError(f"role: expected 'guidance' or 'eval', got {role!r}")
    if bed not in ("digits", "shapes"):
        raise ValueError(f"bed: expected 'digits' or 'shapes', got {bed!r}")
    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    if seed is None:
        seed = 1 if role == "guidance" else 2
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    size, classes = (8, [10]) if bed == "digits" else (32, [3, 3])
    cls = ConvClassifier if role == "guidance" else ResidualClassifier
    model = cls(in_channels=1, image_size=size, num_classes=classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    draw = _data_sampler(bed, gen)
    max_noise = 0.3 if role == "guidance" else 0.05
    t0 = time.time()
    model.train()
    bar = tqdm(range(1, steps + 1), desc=f"train {bed} {role} classifier", disable=not progress, mininterval=5)
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
    model.eval()
    acc = classifier_accuracy(model, bed)
    meta = {
        "bed": bed,
        "kind": "classifier",
        "role": role,
        "heads": ["digit"] if bed == "digits" else ["type", "size"],
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
    """Held-out accuracy per head: digits held-out split; 2000 fresh shapes (seed 12345) for shapes."""
    if bed == "digits":
        x, y = get_testbed(bed).images("classifier-test")
        return {"digit": float((model(x).argmax(1) == y[:, 0]).float().mean())}
    x, y = get_testbed(bed).images("classifier-test", 2000)
    logits = model(x)
    return {
        "type": float((logits[0].argmax(1) == y[:, 0]).float().mean()),
        "size": float((logits[1].argmax(1) == y[:, 1]).float().mean()),
    }


def train_time_predictor(
    bed: str,
    out: str | Path,
    steps: int = 5000,
    batch_size: int = 256,
    lr: float = 1e-3,
    conditions: list[str] = (),
    widths: list[int] = (16, 32, 64, 128),
    seed: int = 3,
    command: str = "",
    progress: bool = True,
) -> Path:
    """Train the time predictor ``phi(x[, c])`` of ``bed`` (Temporal Alignment Guidance, docs/methods/tag.md#R1).

    Loss ``E_{t ~ U{0..T-1}, x0, eps}[-log softmax(phi(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps))_t]`` with a
    fresh ``t`` and ``eps`` per example, the diffusion model's schedule and data scaling. Networks:
    :class:`~onmanifold.nets.networks.TimeCNN` (images) or :class:`~onmanifold.nets.networks.TimeMLP`
    (gmm2d). ``conditions`` names label attributes (``digit``; ``type``, ``size``) the predictor is
    conditioned on (``p(t | x, c)``).

    Deviation from the paper (Adam 1e-4, 300 k iterations; docs/methods/tag.md#D9): Adam with ``lr`` (default 1e-3) and cosine
    decay over a few thousand iterations, so a predictor trains in minutes on a CPU; the iterations,
    wall time and accuracy curves are recorded in the checkpoint metadata.
    """
    from .nets.networks import TimeCNN, TimeMLP
    from .temporal.predictor import predictor_accuracy

    conditions = list(conditions)
    known = BED_ATTRIBUTES.get(bed)
    if known is None:
        raise ValueError(f"bed: expected 'gmm2d', 'digits' or 'shapes', got {bed!r}")
    for c in conditions:
        if c not in known:
            raise ValueError(f"conditions: bed {bed!r} has attributes {known}, got {c!r}")
    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    schedule = bed_schedule(bed)
    cond_classes = [_ATTRIBUTE_CLASSES[c] for c in conditions]
    columns = [known.index(c) for c in conditions]
    if bed == "gmm2d":
        model = TimeMLP(num_timesteps=schedule.T, cond_classes=cond_classes)
    else:
        model = TimeCNN(in_channels=1, image_size=8 if bed == "digits" else 32, num_timesteps=schedule.T, widths=list(widths), cond_classes=cond_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    draw = _data_sampler(bed, gen)
    t0 = time.time()
    losses: list[float] = []
    bar = tqdm(range(1, steps + 1), desc=f"train {bed} time predictor", disable=not progress, mininterval=5)
    for step in bar:
        x0, labels = draw(batch_size)
        t = torch.randint(0, schedule.T, (batch_size,), generator=gen)
        xt = schedule.add_noise(x0, t, torch.randn(x0.shape, generator=gen))
        cond = labels[:, columns] if columns else None
        loss = F.cross_entropy(model(xt, cond), t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    minutes = round((time.time() - t0) / 60, 2)
    model.eval()
    with torch.no_grad():  # the checkpoint stores float16: measure exactly the weights that are shipped
        for p in model.parameters():
            p.copy_(p.half().float())
    curves = predictor_accuracy(model, bed, schedule, conditions=conditions)
    meta = {
        "bed": bed,
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
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_network(model, out, meta=meta, half=True)
    write_json_atomic(Path(out) / "accuracy_curve.json", curves)
    return Path(out)
