"""Implementations of the ``onmanifold sample`` command (kept apart from argument parsing)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["run_sample", "sampler_for", "guidance_setup"]


def sampler_for(loaded, steps: int, eta: float = 0.0, spacing: str = "leading", clamp: bool = True, micro_batch: int | None = None):
    """A :class:`~onmanifold.sampler.DDIMSampler` for a loaded model (clamping only where it has a data range)."""
    from .sampler import DDIMSampler

    if steps > loaded.schedule.T:
        raise ValueError(f"--steps: expected at most the model's T = {loaded.schedule.T}, got {steps}")
    rng = loaded.data_range or (-1.0, 1.0)
    return DDIMSampler(loaded.schedule, steps, eta=eta, spacing=spacing, clamp_x0=clamp and loaded.data_range is not None, data_range=rng,
                       micro_batch=micro_batch or None)


def guidance_setup(args, loaded, bed: str | None, n: int):
    """``(plugin, loss, measurement, truth)`` for ``--method``/``--task`` (``(None, ...)`` without guidance)."""
    from .guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
    from .losses import ClassifierLoss, MeasurementLoss

    if args.method == "none":
        return None, None, None, None
    if args.task is None:
        raise ValueError("--task: --method dps/dsg needs a task (box, random, sr, blur or label)")
    if len(loaded.sample_shape) != 3:
        raise ValueError(f"--task: guidance tasks need an image model, got sample shape {loaded.sample_shape}")
    y = truth = None
    if args.task == "label":
        if bed not in ("digits", "shapes"):
            raise ValueError("--task label: needs a bundled guidance classifier (digits or shapes models)")
        from .evaluate import guidance_classifier

        ncls = 10 if bed == "digits" else 3
        target = torch.full((n,), args.target) if args.target is not None else torch.arange(n) % ncls
        loss = ClassifierLoss(guidance_classifier(bed), target)
    else:
        from .operators import make_measurements
        from .testbeds import get_testbed

        if args.images is not None:
            truth = torch.load(args.images)
            if not torch.is_tensor(truth) or tuple(truth.shape[1:]) != tuple(loaded.sample_shape):
                raise ValueError(f"--images: expected a tensor (N, {', '.join(map(str, loaded.sample_shape))}), got {getattr(truth, 'shape', type(truth))}")
        elif bed in ("digits", "shapes"):
            truth = get_testbed(bed).images("test", n)[0]
        else:
            raise ValueError("--images: a model folder of unknown data needs ground-truth images to measure")
        if truth.shape[0] < n:
            raise ValueError(f"--images: has {truth.shape[0]} images, fewer than --num-samples {n}")
        truth = truth[:n]
        op = get_testbed("digits" if loaded.sample_shape[-1] <= 8 else "shapes").make_task(args.task, n, seed=args.seed)
        y = make_measurements(op, truth, args.sigma_y, seed=args.seed)
        loss = MeasurementLoss(op, y)
    plugin = DiffusionPosteriorSampling(loss, args.zeta) if args.method == "dps" else SphericalGaussianGuidance(loss, args.guidance_rate, args.interval)
    return plugin, loss, y, truth


def run_sample(args, progress: bool) -> int:
    from .evaluate import bed_of_model
    from .images import save_grid, save_rows, save_scatter
    from .model import load_diffusion_model

    if args.num_samples < 1:
        raise SystemExit(f"--num-samples: expected a positive integer, got {args.num_samples}")
    loaded = load_diffusion_model(args.model)
    bed = bed_of_model(args.model, loaded.sample_shape)
    plugin, loss, y, truth = guidance_setup(args, loaded, bed, args.num_samples)
    if args.micro_batch < 0:
        raise SystemExit(f"--micro-batch: expected 0 (off) or a positive size, got {args.micro_batch}")
    sampler = sampler_for(loaded, args.steps, args.eta, args.spacing, clamp=not args.no_clamp, micro_batch=args.micro_batch)
    x = sampler.sample(loaded.model, shape=loaded.sample_shape, num_samples=args.num_samples, seed=args.seed,
                       batch_size=args.batch_size, progress=progress, plugins=[plugin] if plugin else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(x, out / "samples.pt")
    info = {"model": args.model, "steps": args.steps, "eta": args.eta, "spacing": args.spacing, "seed": args.seed,
            "num_samples": args.num_samples, "timesteps": sampler.timesteps, "bed": bed, "method": args.method, "task": args.task}
    if x.dim() == 4:
        save_grid(x[:64], out / "grid.png")
    else:
        save_scatter({"samples": x}, out / "scatter.png")
    if truth is not None:
        from . import metrics

        k = min(8, x.shape[0])
        shown_y = y if y.shape == truth.shape else torch.nn.functional.interpolate(y, size=truth.shape[-2:], mode="nearest")
        save_rows([shown_y[:k], x[:k], truth[:k]], ["measurement", args.method, "truth"], out / "comparison.png")
        info.update({"psnr": float(metrics.psnr(x, truth).mean()), "ssim": float(metrics.ssim(x, truth).mean())})
        print(f"PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.3f}")
    (out / "samples.json").write_text(json.dumps(info, indent=2))
    print(f"wrote {args.num_samples} samples to {out / 'samples.pt'}")
    return 0
