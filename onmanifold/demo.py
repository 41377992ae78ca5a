"""``onmanifold demo``: the main job on the bundled checkpoints.

At this stage: sample every bundled diffusion model with the onmanifold loop (DDIM, eta = 0),
print a quality table (FD, precision, recall in evaluation-classifier features; exact W1 for gmm2d)
next to the floor (training data scored the same way), and write image grids.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

__all__ = ["run_demo", "DEMO_MODELS"]

DEMO_MODELS = ("gmm2d-mlp", "digits-unet", "shapes-unet")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` (dicts) over ``columns`` (missing values shown as '-')."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) if c in r else "-" for c in columns) + " |")
    return "\n".join(lines)


# DPS step size for digits box inpainting at DDIM-50: the value the validation sweep of
# `onmanifold bench dsg` selected (docs/results/dsg.md); DSG uses the paper's Table 3 (k = 1, g_r = 0.2).
DEMO_DPS_ZETA = 1.0


def dsg_vs_dps_rows(n: int, seed: int) -> list[dict]:
    """DSG vs DPS (and unguided) on digits box inpainting, DDIM-50 eta = 1, ``n`` held-out images."""
    from .bench.dsg import _inverse_metrics, clean_images, guided_run, make_task
    from .losses import MeasurementLoss
    from .model import load_diffusion_model
    from .operators import make_measurements

    loaded = load_diffusion_model("digits-unet")
    truth, labels = clean_images("digits", "heldout", n)
    loss = MeasurementLoss(make_task("digits", "box", n, seed), make_measurements(make_task("digits", "box", n, seed), truth, 0.05, seed))
    rows = []
    for method, knobs, kw in (("unguided", "-", {}), ("DPS", f"zeta={DEMO_DPS_ZETA}", {"zeta": DEMO_DPS_ZETA}), ("DSG", "k=1, g_r=0.2", {"g_r": 0.2, "k": 1})):
        x, sec = guided_run(loaded, {"unguided": "none", "DPS": "dps", "DSG": "dsg"}[method], loss, 50, n, seed, **kw)
        m = _inverse_metrics("digits", x, truth, labels, sec)
        rows.append({"method": method, "knobs": knobs, **{k if k != "s_per_sample" else "s/sample": v for k, v in m.items()}})
    return rows


def run_demo(args, progress: bool) -> int:
    from .commands import sampler_for
    from .evaluate import bed_of_model, quality, reference_set
    from .images import save_grid, save_scatter
    from .model import load_diffusion_model

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in DEMO_MODELS:
        loaded = load_diffusion_model(name)
        bed = bed_of_model(name)
        steps = min(args.steps, loaded.schedule.T)
        sampler = sampler_for(loaded, steps, eta=0.0)
        t0 = time.time()
        x = sampler.sample(loaded.model, shape=loaded.sample_shape, num_samples=args.num_samples, seed=args.seed, progress=progress)
        seconds = time.time() - t0
        q = quality(bed, x)
        floor = quality(bed, reference_set(bed, "train"))
        row = {"model": name, "sampler": f"DDIM-{steps} eta=0", "n": args.num_samples, "s/sample": seconds / args.num_samples}
        row.update(q)
        row.update({f"floor {k}": v for k, v in floor.items()})
        rows.append(row)
        if x.dim() == 4:
            save_grid(x[:64], out / f"{name}.png")
        else:
            save_scatter({"data": reference_set(bed)[:1000], name: x[:1000]}, out / f"{name}.png")
        print(f"[demo] {name}: {', '.join(f'{k}={_fmt(v)}' for k, v in q.items())} ({seconds:.1f} s)", flush=True)
    cols = ["model", "sampler", "n", "fd", "floor fd", "precision", "recall", "w1", "floor w1", "s/sample"]
    table = markdown_table(rows, cols)
    print("\nSample quality of the bundled models (floor = training data scored the same way):\n")
    print(table)
    dsg_rows = dsg_vs_dps_rows(args.dsg_samples, args.seed)
    dsg_table = markdown_table(dsg_rows, ["method", "knobs", "psnr", "ssim", "fd", "acc", "s/sample"])
    print("\nDSG vs DPS, digits box inpainting (4x4 hole, sigma_y = 0.05), DDIM-50 eta = 1, held-out images:\n")
    print(dsg_table)
    (out / "summary.md").write_text("# onmanifold demo\n\n" + table + "\n\n## DSG vs DPS, digits box inpainting\n\n" + dsg_table + "\n")
    (out / "summary.json").write_text(json.dumps({"models": rows, "dsg_vs_dps": dsg_rows}, indent=2))
    print(f"\nwrote grids and summary to {out}/ in {time.time() - t_start:.0f} s")
    return 0
