"""Implementations of the ``onmanifold sample`` command (kept apart from argument parsing)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

__all__ = ["run_sample", "sampler_for"]


def sampler_for(loaded, steps: int, eta: float = 0.0, spacing: str = "leading", clamp: bool = True):
    """A :class:`~onmanifold.sampler.DDIMSampler` for a loaded model (clamping only where it has a data range)."""
    from .sampler import DDIMSampler

    if steps > loaded.schedule.T:
        raise ValueError(f"--steps: expected at most the model's T = {loaded.schedule.T}, got {steps}")
    rng = loaded.data_range or (-1.0, 1.0)
    return DDIMSampler(loaded.schedule, steps, eta=eta, spacing=spacing, clamp_x0=clamp and loaded.data_range is not None, data_range=rng)


def run_sample(args, progress: bool) -> int:
    from .evaluate import bed_of_model
    from .images import save_grid, save_scatter
    from .model import load_diffusion_model

    if args.num_samples < 1:
        raise SystemExit(f"--num-samples: expected a positive integer, got {args.num_samples}")
    loaded = load_diffusion_model(args.model)
    sampler = sampler_for(loaded, args.steps, args.eta, args.spacing, clamp=not args.no_clamp)
    x = sampler.sample(loaded.model, shape=loaded.sample_shape, num_samples=args.num_samples, seed=args.seed,
                       batch_size=args.batch_size, progress=progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(x, out / "samples.pt")
    if x.dim() == 4:
        save_grid(x[:64], out / "grid.png")
    else:
        save_scatter({"samples": x}, out / "scatter.png")
    info = {"model": args.model, "steps": args.steps, "eta": args.eta, "spacing": args.spacing, "seed": args.seed,
            "num_samples": args.num_samples, "timesteps": sampler.timesteps, "bed": bed_of_model(args.model, loaded.sample_shape)}
    (out / "samples.json").write_text(json.dumps(info, indent=2))
    print(f"wrote {args.num_samples} samples to {out / 'samples.pt'}")
    return 0
