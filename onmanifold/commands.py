"""Implementations of the ``onmanifold sample`` command (kept apart from argument parsing).

Order of work, so that nothing is lost and nothing is ignored: every option is checked first (an
option that the chosen ``--method``/``--task`` would not use is an error, not a no-op), then the
model is loaded, then the output folder is checked (creatable, writable, room for the result),
and only then are the samples drawn. The outputs (``samples.pt``, ``grid.png`` or ``scatter.png``,
``comparison.png`` with a task, and the manifest ``samples.json``) are written as one
:class:`~onmanifold.io.OutputSet`: a full disk or a kill leaves the earlier set as it was.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["run_sample", "sampler_for", "guidance_setup", "check_sample_options", "SAMPLE_DEFAULTS", "SAMPLE_OUTPUTS"]

SAMPLE_DEFAULTS = {"zeta": 1.0, "guidance_rate": 0.2, "interval": 1, "sigma_y": 0.05}
"""Values of the guidance options when they are not given (the CLI leaves them None to know what was given)."""

SAMPLE_OUTPUTS = ("samples.pt", "grid.png", "scatter.png", "comparison.png")
"""Files an ``onmanifold sample`` output folder may hold besides the manifest ``samples.json``."""

# which options each --method / --task uses (given anywhere else, they are refused)
_METHOD_OPTIONS = {"zeta": ("dps",), "guidance_rate": ("dsg",), "interval": ("dsg",)}
_MEASUREMENT_TASKS = ("box", "random", "sr", "blur")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def check_sample_options(args) -> None:
    """Check the ``sample`` options before any work; ``ValueError`` naming the option otherwise.

    Refuses out-of-range numbers and options the run would not use: guidance knobs without the
    ``--method`` that uses them, ``--task`` without a method, measurement options with label
    guidance, ``--target`` without ``--task label``.
    """
    if args.num_samples < 1:
        raise ValueError(f"--num-samples: expected a positive integer, got {args.num_samples}")
    if args.steps < 1:
        raise ValueError(f"--steps: expected a positive integer, got {args.steps}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive integer, got {args.batch_size}")
    if args.micro_batch < 0:
        raise ValueError(f"--micro-batch: expected 0 (off) or a positive size, got {args.micro_batch}")
    if args.seed < 0:
        raise ValueError(f"--seed: expected an integer >= 0, got {args.seed}")
    for dest, methods in _METHOD_OPTIONS.items():
        if getattr(args, dest) is not None and args.method not in methods:
            raise ValueError(f"{_flag(dest)}: only --method {'/'.join(methods)} uses it, got --method {args.method}")
    if args.method == "none" and args.task is not None:
        raise ValueError(f"--task: needs --method dps or dsg (without a method nothing is guided towards the {args.task} task)")
    if args.method != "none" and args.task is None:
        raise ValueError("--task: --method dps/dsg needs a task (box, random, sr, blur or label)")
    if args.task not in _MEASUREMENT_TASKS:
        for dest in ("images", "sigma_y"):
            if getattr(args, dest) is not None:
                raise ValueError(f"{_flag(dest)}: only the measurement tasks ({', '.join(_MEASUREMENT_TASKS)}) use it, got --task {args.task}")
    if args.target is not None and args.task != "label":
        raise ValueError(f"--target: only --task label uses it, got --task {args.task}")
    if args.sigma_y is not None and not (math.isfinite(args.sigma_y) and args.sigma_y >= 0):
        raise ValueError(f"--sigma-y: expected a finite value >= 0, got {args.sigma_y}")


def _option(args, dest: str):
    v = getattr(args, dest, None)
    return SAMPLE_DEFAULTS[dest] if v is None else v


def sampler_for(loaded, steps: int, eta: float = 0.0, spacing: str = "leading", clamp: bool = True, micro_batch: int | None = None):
    """A :class:`~onmanifold.sampler.DDIMSampler` for a loaded model (clamping only where it has a data range)."""
    from .sampler import DDIMSampler

    if steps > loaded.schedule.T:
        raise ValueError(f"--steps: expected at most the model's T = {loaded.schedule.T}, got {steps}")
    rng = loaded.data_range or (-1.0, 1.0)
    return DDIMSampler(loaded.schedule, steps, eta=eta, spacing=spacing, clamp_x0=clamp and loaded.data_range is not None, data_range=rng,
                       micro_batch=micro_batch or None)


def _ground_truth(args, loaded, bed: str | None, n: int):
    """The ``n`` images to measure: ``--images`` (checked) or the bed's test split."""
    import torch

    from .io import load_tensors
    from .testbeds import get_testbed

    shape = tuple(loaded.sample_shape)
    if args.images is not None:
        truth = load_tensors(args.images, "--images")
        if not torch.is_tensor(truth):
            raise ValueError(f"--images: expected a tensor (N, {', '.join(map(str, shape))}), got a {type(truth).__name__}")
        if truth.dim() != len(shape) + 1 or tuple(truth.shape[1:]) != shape:
            raise ValueError(f"--images: expected a tensor (N, {', '.join(map(str, shape))}), got shape {tuple(truth.shape)}")
        if not truth.is_floating_point():
            raise ValueError(f"--images: expected floating-point images in the model's range [-1, 1], got dtype {truth.dtype}")
        finite = torch.isfinite(truth.reshape(truth.shape[0], -1)).all(dim=1)
        if not finite.all():
            raise ValueError(f"--images: images {(~finite).nonzero().flatten()[:5].tolist()} contain NaN or Inf")
        lo, hi = loaded.data_range or (-math.inf, math.inf)
        if truth.numel() and (float(truth.min()) < lo - 1e-3 or float(truth.max()) > hi + 1e-3):
            raise ValueError(f"--images: values must lie in the model's data range [{lo:g}, {hi:g}], got [{float(truth.min()):.3g}, {float(truth.max()):.3g}]")
        if truth.shape[0] < n:
            raise ValueError(f"--images: has {truth.shape[0]} images, fewer than --num-samples {n}")
        return truth[:n].float()
    if bed not in ("digits", "shapes"):
        raise ValueError("--images: a model folder of unknown data needs ground-truth images to measure")
    truth = get_testbed(bed).images("test", n)[0]
    if truth.shape[0] < n:
        raise ValueError(f"--num-samples: the {bed} test split has {truth.shape[0]} images, fewer than {n}; give --images")
    return truth


def guidance_setup(args, loaded, bed: str | None, n: int):
    """``(plugin, loss, measurement, truth)`` for ``--method``/``--task`` (``(None, ...)`` without guidance)."""
    import torch

    from .guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
    from .losses import ClassifierLoss, MeasurementLoss
    from .testbeds import get_testbed

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
        if args.target is not None and not 0 <= args.target < ncls:
            raise ValueError(f"--target: the {bed} guidance classifier has classes 0 .. {ncls - 1}, got {args.target}")
        target = torch.full((n,), args.target) if args.target is not None else torch.arange(n) % ncls
        loss = ClassifierLoss(guidance_classifier(bed), target)
    else:
        from .operators import make_measurements

        task_bed = bed if bed is not None and args.task in get_testbed(bed).tasks else None
        if task_bed is None:
            task_bed = next((b for b in ("digits", "shapes") if get_testbed(b).sample_shape == tuple(loaded.sample_shape)), None)
        if task_bed is None:
            raise ValueError(f"--task: no {args.task} operator for samples of shape {tuple(loaded.sample_shape)}")
        truth = _ground_truth(args, loaded, bed, n)
        op = get_testbed(task_bed).make_task(args.task, n, seed=args.seed)
        y = make_measurements(op, truth, _option(args, "sigma_y"), seed=args.seed)
        loss = MeasurementLoss(op, y)
    if args.method == "dps":
        plugin = DiffusionPosteriorSampling(loss, _option(args, "zeta"))
    else:
        plugin = SphericalGaussianGuidance(loss, _option(args, "guidance_rate"), _option(args, "interval"))
    return plugin, loss, y, truth


def _physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def run_sample(args, progress: bool) -> int:
    import torch

    from .images import save_grid, save_rows, save_scatter
    from .io import OutputSet, output_dir
    from .model import load_diffusion_model
    from .testbeds import bed_of_model

    check_sample_options(args)
    loaded = load_diffusion_model(args.model)
    bed = bed_of_model(args.model, loaded.sample_shape)
    if args.no_clamp and loaded.data_range is None:
        raise ValueError(f"--no-clamp: {args.model} has no data range, its x0_hat is never clamped")
    result_bytes = args.num_samples * math.prod(loaded.sample_shape) * 4
    memory = _physical_memory_bytes()
    if memory is not None and result_bytes > memory // 2:
        raise ValueError(f"--num-samples: {args.num_samples} samples of shape {tuple(loaded.sample_shape)} need {result_bytes / 1e9:.3g} GB "
                         f"of memory for the result; this machine has {memory / 1e9:.3g} GB")
    with output_dir(args.out, "--out", need_bytes=result_bytes + (4 << 20)) as out:  # the tensor + figures and the manifest
        sampler = sampler_for(loaded, args.steps, args.eta, args.spacing, clamp=not args.no_clamp, micro_batch=args.micro_batch)
        plugin, loss, y, truth = guidance_setup(args, loaded, bed, args.num_samples)
        x = sampler.sample(loaded.model, shape=loaded.sample_shape, num_samples=args.num_samples, seed=args.seed,
                           batch_size=args.batch_size, progress=progress, plugins=[plugin] if plugin else [])
    info = {"model": args.model, "steps": args.steps, "eta": args.eta, "spacing": args.spacing, "seed": args.seed,
            "num_samples": args.num_samples, "timesteps": sampler.timesteps, "bed": bed, "method": args.method, "task": args.task}
    if args.method == "dps":
        info["zeta"] = _option(args, "zeta")
    elif args.method == "dsg":
        info.update(guidance_rate=_option(args, "guidance_rate"), interval=_option(args, "interval"))
    if truth is not None:
        from . import metrics

        info.update({"psnr": float(metrics.psnr(x, truth).mean()), "ssim": float(metrics.ssim(x, truth).mean())})
    what = f"{args.method.upper()} {args.task} " if args.method != "none" else ""
    run = f"{args.model}, {what}{args.steps} steps, eta {args.eta:g}, seed {args.seed}"
    outputs = OutputSet(out, manifest="samples.json", owned=SAMPLE_OUTPUTS)
    try:
        outputs.add_tensors("samples.pt", x)
        if x.dim() == 4:
            shown = min(64, x.shape[0])
            outputs.add("grid.png", lambda f: save_grid(x[:64], f, caption=f"The first {shown} of {x.shape[0]} samples ({run})."))
        else:
            outputs.add("scatter.png", lambda f: save_scatter({"samples": x}, f, caption=f"All {x.shape[0]} samples ({run})."))
        if truth is not None:
            k = min(8, x.shape[0])
            shown_y = y if y.shape == truth.shape else torch.nn.functional.interpolate(y, size=truth.shape[-2:], mode="nearest")
            outputs.add("comparison.png", lambda f: save_rows(
                [shown_y[:k], x[:k], truth[:k]], ["measurement", args.method, "truth"], f,
                caption=f"Samples 0-{k - 1}: the measurement (top, shown at full size), the {args.method.upper()} reconstruction "
                        f"(middle) and the ground truth (bottom); {run}."))
        outputs.commit(info)
    except (OSError, RuntimeError) as e:  # a full disk, a lost mount: torch.save reports it as a RuntimeError
        outputs.discard()
        first = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"--out: could not write the samples into {str(out)!r} ({first}); the earlier outputs there are unchanged") from e
    if truth is not None:
        print(f"PSNR {info['psnr']:.2f} dB, SSIM {info['ssim']:.3f}")
    print(f"wrote {args.num_samples} samples to {out / 'samples.pt'}")
    return 0
