"""Foundation suites: the quality of the bundled models (``models``) and the loop's speed (``speed``)."""

from __future__ import annotations

import statistics

import torch

from onmanifold.nets.checkpoint import read_metadata

from .models import diffusion_model, on_cpu
from .paper_numbers import TARGETS
from .runner import Cell, Suite
from .timing import alternating, timed

__all__ = ["models_suite", "model_quality", "speed_suite"]

_DIFFUSION = ("gmm2d-mlp", "digits-unet", "shapes-unet")
_CLASSIFIERS = ("digits-classifier", "digits-eval-classifier", "shapes-classifier", "shapes-eval-classifier")


def _training_columns(name: str) -> dict:
    meta = read_metadata(name)
    return {"train_steps": meta.get("train_steps"), "train_minutes": meta.get("minutes"), "command": meta.get("command", "")}


def model_quality(name: str, n: int) -> dict:
    """The models suite's measurement of a bundled diffusion model: ``n`` samples of DDIM-50 (eta = 0, the
    checkpoint's own clipping; fewer steps when ``T < 50``), seed 1000, scored by :func:`onmanifold.evaluate.quality`
    against the bed's held-out data (FD / precision / recall, W1 for gmm2d)."""
    from onmanifold.commands import sampler_for
    from onmanifold.evaluate import bed_of_model, quality

    loaded = diffusion_model(name)
    sampler = sampler_for(loaded, min(50, loaded.schedule.T), eta=0.0)
    x = on_cpu(sampler.sample(loaded.model, shape=loaded.sample_shape, num_samples=n, seed=1000, batch_size=500))
    return quality(bed_of_model(name), x)


def models_suite(quick: bool = False, run_dir=None) -> Suite:
    """Quality of every bundled model: FD / precision / recall (W1 for gmm2d) of 1000 DDIM-50 samples vs held-out data, next to the training-data floor; classifier held-out accuracy."""
    n = 100 if quick else 1000
    cells = [Cell(name, {"n": n, "sampler": "DDIM-50 eta=0"}) for name in _DIFFUSION]
    cells += [Cell(name, {"heldout": "digits split" if name.startswith("digits") else "2000 shapes, seed 12345"}) for name in _CLASSIFIERS]
    speed = speed_suite(quick)
    cells += speed.cells

    def run_cell(cell: Cell) -> dict:
        from onmanifold.evaluate import bed_of_model, quality, reference_set
        from onmanifold.nets.checkpoint import load_network
        from onmanifold.train import classifier_accuracy

        if cell.method == "ddim50-vs-DDIMPipeline":
            return speed.run_cell(cell)
        out = _training_columns(cell.method)
        if cell.method in _DIFFUSION:
            bed = bed_of_model(cell.method)
            floor = quality(bed, reference_set(bed, "train"))
            out.update(model_quality(cell.method, cell.setting["n"]))
            out.update({f"floor_{k}": v for k, v in floor.items()})
        else:
            bed = cell.method.split("-")[0]
            acc = classifier_accuracy(load_network(cell.method), bed)
            out.update({f"acc_{k}": v for k, v in acc.items()})
        return out

    return Suite(
        "models",
        cells,
        run_cell,
        description=(
            "Bundled models. Diffusion models: n samples with DDIM-50 (eta = 0, x0 clamped for images) scored against held-out data "
            "(digits: the 400-image held-out split; shapes: 2000 shapes of seed 777; gmm2d: 2000 exact draws of seed 777) in the "
            "evaluation classifier's features (FD, improved precision/recall k = 3) or by exact W1 (gmm2d); floor_* = the training "
            "data (digits train split; 2000 shapes / draws of seed 778) scored the same way, what a perfect model would reach. "
            "Classifiers: held-out accuracy per head. Speed (last row): " + speed.description
        ),
        columns=["fd", "floor_fd", "precision", "recall", "floor_precision", "floor_recall", "w1", "floor_w1",
                 "acc_digit", "acc_type", "acc_size", "train_steps", "train_minutes", "ratio_median", "ratio_min", "ratio_max",
                 "ours_s_median", "diffusers_s_median", "command"],
    )


def speed_suite(quick: bool = False, run_dir=None) -> Suite:
    """Plain DDIM-50 with the digits UNet: onmanifold loop time / diffusers DDIMPipeline time, same UNet, batch, steps, same run."""
    repeats = 2 if quick else 7
    cells = [Cell("ddim50-vs-DDIMPipeline", {"model": "digits-unet", "batch": 256, "steps": 50, "repeats": repeats, "threads": torch.get_num_threads()})]

    def run_cell(cell: Cell) -> dict:
        from diffusers import DDIMPipeline, DDIMScheduler

        from onmanifold.sampler import DDIMSampler

        s = cell.setting
        loaded = diffusion_model(s["model"])
        unet = loaded.model.unet
        folder_sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=True)
        pipe = DDIMPipeline(unet=unet, scheduler=folder_sched)
        pipe.set_progress_bar_config(disable=True)
        sampler = DDIMSampler(loaded.schedule, s["steps"], eta=0.0)

        def ours() -> float:
            return timed(sampler.sample, loaded.model, shape=loaded.sample_shape, num_samples=s["batch"], seed=0)[1]

        def theirs() -> float:
            with torch.no_grad():
                return timed(pipe, batch_size=s["batch"], num_inference_steps=s["steps"], eta=0.0,
                             generator=torch.Generator().manual_seed(0), output_type="np")[1]

        # the order alternates from round to round, so drift of the machine hits both
        t = alternating({"ours": ours, "theirs": theirs}, s["repeats"], warmup=[ours, theirs], swap=True)
        t_ours, t_theirs = t["ours"], t["theirs"]
        ratios = [a / b for a, b in zip(t_ours, t_theirs)]
        return {
            "ours_s_median": statistics.median(t_ours),
            "diffusers_s_median": statistics.median(t_theirs),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }

    return Suite(
        "speed",
        cells,
        run_cell,
        description=(
            "Plain DDIM-50 (eta = 0) on the bundled digits UNet, batch 256: wall time of the onmanifold loop "
            "(per-sample generators, plugin points, NaN checks) over diffusers' DDIMPipeline on the same UNet, measured "
            f"alternately in the same process after one warm-up each. Target ratio <= {TARGETS['loop_over_ddim_pipeline']:.2f}."
        ),
    )
