"""The figure a reader wants for each method, drawn from a run's finished records and saved samples.

One home for these figures: the suites' results pages (``docs/results/figures/``) and ``onmanifold
report RUN_DIR`` (``RUN_DIR/figures/methods/``) both draw them here. Every PNG carries a caption
(:func:`onmanifold.images.read_caption`) saying what it shows and with how many samples it was run.

* **DSG / DPS** (``onmanifold bench dsg``): per (bed, task), the measurement, the truth and the DPS and
  DSG samples of the same test images side by side (the ``dps``/``dsg`` cells' ``artifacts/<key>.pt``).
* **TAG** (``onmanifold bench tag``): the gmm2d toy's samples before (drift) and after TAG, beside the
  clean run (the ``toy`` cells' artifacts), and the time-gap curves of the corrupted-digits runs (from
  the ``corrupt`` records themselves).
* **ASCED** (``onmanifold bench asced``): shapes samples with the detected correction mask ``M_d`` and
  the ground-truth artifact mask ``G`` overlaid, before (original sampler) and after correction (ASCED,
  same seeds) (the ``original``/``asced`` cells' artifacts).

A figure whose data the run does not hold (records imported from a summary carry no samples) is not
drawn; the reason comes back as a note, never an exception. ``artifact(record)`` resolves a record to
its sample file (``None`` when absent), so the report can refuse files outside the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .runner import Cell

__all__ = ["FigureDataMissing", "method_figures", "ensure_caption", "dsg_figure", "tag_toy_figure", "tag_time_gap_figure", "asced_overlay_figure", "run_dir_artifacts"]

Artifact = Callable[[dict], "Path | None"]
MAX_COLUMNS = 10


class FigureDataMissing(Exception):
    """The data a figure needs is not in the run (the message says what is missing and how to get it)."""


def run_dir_artifacts(run_dir: str | Path) -> Artifact:
    """``record -> run_dir/artifacts/<cell key>.pt`` when that file exists, else None (the suites' layout)."""
    run_dir = Path(run_dir)

    def artifact(rec: dict) -> Path | None:
        p = run_dir / "artifacts" / f"{Cell.from_description(rec['cell']).key}.pt"
        return p if p.is_file() else None

    return artifact


def _load(artifact: Artifact, rec: dict, what: str):
    from onmanifold.io import load_tensors

    p = artifact(rec)
    if p is None:
        raise FigureDataMissing(f"{what}: the samples of cell {Cell.from_description(rec['cell']).key} are not in the run directory "
                                "(records imported from a summary carry none); recompute that cell to draw it")
    return load_tensors(p, "artifact")


def _find(records: list[dict], method: str, **setting) -> dict | None:
    for r in records:
        s = r["cell"]["setting"]
        if r["cell"]["method"] == method and all(s.get(k) == v for k, v in setting.items()):
            return r
    return None


def ensure_caption(path: Path, caption: str) -> None:
    """Store ``caption`` in the PNG at ``path`` when it has none (pixels unchanged; written atomically): for figures drawn
    by code that takes no caption, or kept from a run that drew them before figures carried captions."""
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from onmanifold.images import read_caption
    from onmanifold.io import write_bytes_atomic

    path = Path(path)
    if not path.is_file() or read_caption(path):
        return
    info = PngInfo()
    info.add_text("Description", caption)
    buf = io.BytesIO()
    with Image.open(path) as img:
        img.save(buf, format="PNG", pnginfo=info)
    write_bytes_atomic(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ DSG / DPS
def _to_size(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A measurement shown at the images' size (super-resolution's small ``y`` upscaled, nearest neighbour)."""
    if y.shape[-2:] == like.shape[-2:]:
        return y
    return torch.nn.functional.interpolate(y, size=like.shape[-2:], mode="nearest")


Measurement = Callable[[str, str, int], torch.Tensor]
"""``(bed, task, n) -> y``: the measurements of the first ``n`` test images (``onmanifold_bench.dsg.inverse_problem``)."""


def dsg_figure(records: list[dict], artifact: Artifact, path: Path, bed: str, task: str, steps: int,
               measurement: Measurement | None = None) -> str:
    """Measurement / truth / DPS / DSG rows of ``bed``'s ``task`` at ``steps``; returns the caption.

    Samples saved before the measurement was kept (no ``y`` in the artifact) get it from ``measurement``
    (the same seeds draw the same noise); without one the figure is not drawn.
    """
    from onmanifold.images import save_rows

    dps, dsg = _find(records, "dps", bed=bed, task=task, steps=steps), _find(records, "dsg", bed=bed, task=task, steps=steps)
    if dps is None or dsg is None:
        raise FigureDataMissing(f"DSG/DPS figure ({bed} {task}, {steps} steps): needs both the dps and the dsg cell")
    a, b = _load(artifact, dps, f"DSG/DPS figure ({bed} {task}, {steps} steps)"), _load(artifact, dsg, f"DSG/DPS figure ({bed} {task}, {steps} steps)")
    k = min(MAX_COLUMNS, a["x"].shape[0], b["x"].shape[0])
    n = dps["cell"]["setting"]["n"]
    if "y" in a:
        y, y_note = a["y"][:k], ""
    elif measurement is not None:  # samples saved before the measurement was kept: regenerated from its seed
        y, y_note = measurement(bed, task, n)[:k], " (regenerated from its seed: this run saved no measurement)"
    else:
        raise FigureDataMissing(f"DSG/DPS figure ({bed} {task}, {steps} steps): the samples were saved without their measurement")
    rows = [_to_size(y, a["truth"]), a["truth"][:k], a["x"][:k], b["x"][:k]]
    s = dsg["cell"]["setting"]
    labels = ["measurement y", "truth", f"DPS zeta={dps['metrics'].get('zeta')}", f"DSG k={s.get('k')}, g_r={s.get('g_r')}"]
    m_dps, m_dsg = dps["metrics"], dsg["metrics"]
    caption = (f"DSG vs DPS, {bed} {task}, DDIM-{steps} eta 1, sigma_y 0.05: the first {k} of the {n} test images per cell; rows: the "
               f"measurement y{y_note}{' (upscaled, nearest)' if y.shape[-2:] != a['truth'].shape[-2:] else ''}, the truth, DPS's and DSG's "
               f"reconstructions. Over all {n}: PSNR DPS {m_dps.get('psnr', float('nan')):.2f} / DSG {m_dsg.get('psnr', float('nan')):.2f} dB.")
    save_rows(rows, labels, path, caption=caption)
    return caption


def _dsg_pairs(records: list[dict]) -> list[tuple[str, str, int]]:
    """One (bed, task, steps) per (bed, task) that has both methods: 100 steps when there, else the most steps."""
    have: dict[tuple[str, str], set[int]] = {}
    for r in records:
        s = r["cell"]["setting"]
        if r["cell"]["method"] in ("dps", "dsg") and {"bed", "task", "steps"} <= set(s):
            have.setdefault((s["bed"], s["task"]), set()).add((r["cell"]["method"], s["steps"]))  # type: ignore[arg-type]
    out = []
    for (bed, task), ms in have.items():
        both = sorted({st for m, st in ms if ("dps", st) in ms and ("dsg", st) in ms})
        if both:
            out.append((bed, task, 100 if 100 in both else both[-1]))
    return sorted(out)


# ------------------------------------------------------------------------------------------ TAG
def tag_toy_figure(records: list[dict], artifact: Artifact, path: Path, eps: str = "mlp", seed: int = 0) -> str:
    """gmm2d: the clean run, the drifted run (before TAG) and the drifted run with TAG (after), over the reference points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onmanifold.images import save_figure
    from onmanifold.testbeds import get_testbed

    recs = {v: _find(records, "toy", eps=eps, variant=v, seed=seed) for v in ("clean", "drift", "tag-learned")}
    if any(r is None for r in recs.values()):
        raise FigureDataMissing(f"TAG toy figure: needs the toy cells clean, drift and tag-learned (eps {eps}, seed {seed})")
    xs = {v: _load(artifact, r, "TAG toy figure")["x"] for v, r in recs.items()}
    n = recs["drift"]["cell"]["setting"]["n"]
    ref = get_testbed("gmm2d").images(f"reference-{seed}", n)[0]
    titles = {"clean": "clean (no drift)", "drift": "drift, before TAG", "tag-learned": f"drift + TAG (omega0 {recs['tag-learned']['metrics'].get('omega0')})"}
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.9), sharex=True, sharey=True)
    for ax, (v, x) in zip(axes, xs.items()):
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.75", label="reference")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, label="samples")
        ax.set_title(f"{titles[v]}: W1 {recs[v]['metrics']['w1']:.2f}", fontsize=9)
        ax.set_aspect("equal")
    axes[0].legend(fontsize=7, markerscale=4, loc="lower left")
    caption = (f"TAG on the gmm2d toy ({eps} eps model, DDPM-100, every step pulled by a -0.01x drift, seed {seed}): {xs['drift'].shape[0]} of "
               f"the {n} samples per run over {n} fresh reference draws (grey). Left: no drift; middle: drift without TAG (before); right: "
               "drift with TAG and the learned time predictor (after). W1 against the reference in each title.")
    save_figure(fig, path, dpi=110, caption=caption)
    return caption


def tag_time_gap_figure(records: list[dict], path: Path) -> str:
    """Time gap |t_hat - t| along the sampler on corrupted digits, without TAG and with TAG (both placements), per sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onmanifold.images import save_figure

    sig = [s for s in (0.1, 0.2, 0.3) if _find(records, "corrupt", sigma=s, variant="none")]
    if not sig:
        raise FigureDataMissing("TAG time-gap curves: needs the corrupt cells (variant none) of the tag suite")
    fig, axes = plt.subplots(1, len(sig), figsize=(4.2 * len(sig), 3.4), squeeze=False)
    n = None
    for ax, s in zip(axes[0], sig):
        for v in ("none", "pre", "post"):
            r = _find(records, "corrupt", sigma=s, variant=v)
            if r:
                m, n = r["metrics"], r["cell"]["setting"]["n"]
                c = m["tg_curve"]
                ax.plot([x["t"] for x in c], [x["mean"] for x in c], label=f"{'no TAG' if v == 'none' else 'TAG, ' + v} (TG {m['tg']:.0f})")
        ax.invert_xaxis()
        ax.set(title=f"corrupted digits, sigma = {s}", xlabel="sampler time t", ylabel="time gap |t_hat - t|")
        ax.legend(fontsize=8)
    caption = (f"TAG's time-gap curves: digits sampled with DDIM-50 while Gaussian noise of std sigma is added after every step; the mean "
               f"gap |t_hat - t| between the learned time predictor's estimate and the sampler's t at each step over {n} samples, without "
               "TAG and with TAG applied before (pre) or after (post) the step. TG in the legend: the mean over the run.")
    save_figure(fig, path, dpi=110, caption=caption)
    return caption


# ------------------------------------------------------------------------------------------ ASCED
def _overlay(x: torch.Tensor, masks: list[tuple[torch.Tensor, tuple[float, float, float]]]) -> torch.Tensor:
    """Grey images ``x`` in [-1, 1] as RGB in [0, 1] with each boolean mask tinted in its colour (both: the colours added)."""
    rgb = ((x.clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1).clone()
    tint = torch.zeros_like(rgb)
    any_mask = torch.zeros(x.shape[0], 1, *x.shape[-2:], dtype=torch.bool)
    for m, colour in masks:
        m = m.reshape(x.shape[0], 1, *x.shape[-2:]).bool()
        tint += m * torch.tensor(colour).view(1, 3, 1, 1)
        any_mask |= m
    return torch.where(any_mask, 0.45 * rgb + 0.55 * tint.clamp(0, 1), rgb)


def asced_overlay_figure(records: list[dict], artifact: Artifact, path: Path) -> str:
    """Shapes: the original samples with M_d (red) and G (green) overlaid, and the same seeds after ASCED with their G (green)."""
    from onmanifold.images import save_grid

    def cell(method):
        return next((r for r in records if r["cell"]["method"] == method and r["cell"]["shard"] == 0 and r["cell"]["setting"].get("bed") == "shapes"
                     and r["cell"]["setting"].get("tc_frac") == 0.48 and "variant" not in r["cell"]["setting"]), None)

    o_rec, a_rec = cell("original"), cell("asced")
    if o_rec is None or a_rec is None:
        raise FigureDataMissing("ASCED figure: needs the first original and asced shapes cells (tc_frac 0.48)")
    o, a = _load(artifact, o_rec, "ASCED figure"), _load(artifact, a_rec, "ASCED figure")
    flagged, has = o["flagged"].bool(), o["gt_has"].bool()
    order: list[int] = []
    for sel, k in ((flagged & has, 4), (flagged & ~has, 2), (~flagged & has, 2), (~flagged & ~has, 2)):
        order += torch.nonzero(sel).flatten()[:k].tolist()
    idx = torch.tensor(order)
    red, green = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    rows = [((o["x"][idx] + 1) / 2).expand(-1, 3, -1, -1),
            _overlay(o["x"][idx], [(o["correction_mask"][idx], red), (o["gt_mask"][idx], green)]),
            ((a["x"][idx] + 1) / 2).expand(-1, 3, -1, -1),
            _overlay(a["x"][idx], [(a["gt_mask"][idx], green)])]
    caption = (
        f"ASCED on shapes (DDIM-25, the same seeds before and after): {len(order)} of the {o_rec['cell']['setting']['n']} samples of the first "
        f"cell, columns: flagged with a ground-truth artifact ({int((flagged & has).sum())} in the cell) first, then flagged without one, "
        "missed, clean. Rows, top to bottom: the original sample; the same with the detector's correction mask M_d in red and the "
        "ground-truth artifact mask G in green (overlap yellow); ASCED's corrected sample; the same with its own ground-truth mask G "
        "in green (no green: no artifact left).")
    save_grid(torch.cat(rows), path, nrow=len(order), scale=4, data_range=(0.0, 1.0), caption=caption)
    return caption


# ------------------------------------------------------------------------------------------ all of them
def method_figures(records: list[dict], artifact: Artifact, out_dir: Path,
                   measurement: Measurement | None = None) -> tuple[list[tuple[Path, str]], list[str]]:
    """Every method figure the records call for, drawn into ``out_dir``: ``([(png, caption)], [notes on figures not drawn])``."""
    out_dir = Path(out_dir)
    jobs: list[tuple[str, Callable[[Path], str]]] = []
    for bed, task, steps in _dsg_pairs(records):
        jobs.append((f"dsg_{bed}_{task}_{steps}.png", lambda p, b=bed, t=task, s=steps: dsg_figure(records, artifact, p, b, t, s, measurement)))
    methods = {r["cell"]["method"] for r in records}
    if "toy" in methods:
        jobs.append(("tag_toy_scatter.png", lambda p: tag_toy_figure(records, artifact, p)))
    if "corrupt" in methods:
        jobs.append(("tag_time_gap_curves.png", lambda p: tag_time_gap_figure(records, p)))
    if {"original", "asced"} <= methods:
        jobs.append(("asced_overlay_shapes.png", lambda p: asced_overlay_figure(records, artifact, p)))
    for r in records:
        if r["cell"]["method"] == "fronts":  # the fronts suite's analysis cell: its points are the figure's data
            from .fronts_report import fronts_figure

            bed = r["cell"]["setting"]["bed"]
            jobs.append((f"fronts_{bed}.png", lambda p, b=bed, a=r["metrics"]: fronts_figure(b, a, p)))
    made, notes = [], []
    for name, draw in jobs:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            made.append((out_dir / name, draw(out_dir / name)))
        except FigureDataMissing as e:
            notes.append(str(e))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:  # a malformed record or sample file: said, not a crash
            notes.append(f"{name}: not drawn ({type(e).__name__}: {str(e)[:120]})")
    return made, notes
