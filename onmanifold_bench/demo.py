"""``onmanifold demo``: the main job on the bundled checkpoints.

Runs each method against its baseline on the bundled models, small enough for 2 CPU cores in about
two minutes: DSG vs DPS on digits box inpainting, Temporal Alignment Guidance on the gmm2d drift and on
corrupted digits, ASCED on shapes, and DSG + TAG + ASCED in one run on shapes super-resolution. Prints
one table, writes ``summary.md`` / ``summary.json`` and the self-contained ``report.html``.
"""

from __future__ import annotations

import time
from pathlib import Path

from onmanifold.nets.checkpoint import write_json_atomic, write_text_atomic

from . import tables
from .models import diffusion_model
from .timing import timed

__all__ = ["run_demo", "markdown_table"]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A markdown table of ``rows`` (dicts) over ``columns`` (missing values shown as '-'; floats to 4 significant digits)."""
    return tables.markdown_table(columns, [[r.get(c) for c in columns] for r in rows], digits=4)


# DPS step size for digits box inpainting at DDIM-50: the value the validation sweep of
# `onmanifold bench dsg` selected (docs/results/dsg.md); DSG uses the paper's Table 3 (k = 1, g_r = 0.2).
DEMO_DPS_ZETA = 1.0


def dsg_vs_dps_rows(n: int, seed: int) -> list[dict]:
    """DSG vs DPS (and unguided) on digits box inpainting, DDIM-50 eta = 1, ``n`` held-out images."""
    from onmanifold_bench.dsg import _inverse_metrics, guided_run, inverse_problem

    loaded = diffusion_model("digits-unet")
    loss, truth, labels, _ = inverse_problem("digits", "box", "test", n, seed)
    rows = []
    for method, knobs, kw in (("unguided", "-", {}), ("DPS", f"zeta={DEMO_DPS_ZETA}", {"zeta": DEMO_DPS_ZETA}), ("DSG", "k=1, g_r=0.2", {"g_r": 0.2, "k": 1})):
        x, sec = guided_run(loaded, {"unguided": "none", "DPS": "dps", "DSG": "dsg"}[method], loss, 50, n, seed, **kw)
        m = _inverse_metrics("digits", x, truth, labels, sec)
        rows.append({"method": method, "knobs": knobs, **{k if k != "s_per_sample" else "s/sample": v for k, v in m.items()}})
    return rows


DEMO_TOY_SAMPLES = 1000
"""Samples of the gmm2d drift rows (exact W1 against as many fresh draws)."""

# Composition knobs: the ones the validation sweeps of `onmanifold bench compose` chose (docs/results/compose.md).
DEMO_COMPOSE = {"zeta": 10.0, "g_r": 0.1, "omega0": 1.0}

COLUMNS = ["experiment", "method", "knobs", "W1", "FD", "PSNR", "accuracy", "time gap", "GT artifact rate", "ASCED flagged", "s/sample"]


def _rows_dsg(n: int, seed: int) -> list[dict]:
    rows = []
    for r in dsg_vs_dps_rows(n, seed):
        rows.append({"experiment": "DSG: digits box inpainting, DDIM-50", "method": r["method"], "knobs": r["knobs"], "PSNR": r["psnr"],
                     "FD": r["fd"], "accuracy": r.get("acc", "-"), "s/sample": r["s/sample"]})
    return rows


def _rows_tag(seed: int, n_digits: int) -> list[dict]:
    from onmanifold_bench.tag import tag_demo_rows

    rows = []
    for r in tag_demo_rows(n_toy=DEMO_TOY_SAMPLES, n_digits=n_digits, seed=seed):
        rows.append({"experiment": "TAG: " + r["task"], "method": r["method"], "knobs": f"omega0={r['omega0']}" if r["omega0"] != "-" else "-",
                     "W1": r.get("w1", "-"), "FD": r.get("fd", "-"), "time gap": r.get("time gap", "-"), "s/sample": r["s/sample"]})
    return rows


def _rows_asced(n: int, seed: int) -> list[dict]:
    from onmanifold_bench.asced import asced_demo_rows

    rows = []
    for r in asced_demo_rows(n, seed):
        rows.append({"experiment": "ASCED: shapes, DDIM-25", "method": r["method"], "knobs": "defaults for 32x32",
                     "GT artifact rate": r["GT artifact rate"], "ASCED flagged": r["flagged"], "s/sample": r.get("s/sample", "-"),
                     "time ratio": r["time ratio"]})
    return rows


def _rows_compose(n: int, seed: int, out: Path | None) -> list[dict]:
    from onmanifold_bench.compose import compose_run
    from onmanifold.images import save_grid

    rows = []
    for method in ("dps", "dsg", "dsg+tag+asced"):
        keep: dict = {}
        m = compose_run(method, n, "test", seed=seed, samples_out=keep, **DEMO_COMPOSE)
        if out is not None:
            save_grid(keep["x"][:32], out / f"compose_{method.replace('+', '_')}.png", nrow=8,
                      caption=f"The first {min(32, n)} of {n} held-out shapes reconstructed by {method.upper().replace('+', ' + ')} from their "
                              f"x4-downsampled measurements (sigma_y = 0.05, DDIM-25, eta = 1, knobs {DEMO_COMPOSE}).")
        knobs = {"dps": f"zeta={DEMO_COMPOSE['zeta']}", "dsg": f"g_r={DEMO_COMPOSE['g_r']}",
                 "dsg+tag+asced": f"g_r={DEMO_COMPOSE['g_r']}, omega0={DEMO_COMPOSE['omega0']}"}[method]
        rows.append({"experiment": "Composition: shapes SR x4, DDIM-25", "method": method.upper().replace("+", " + "), "knobs": knobs,
                     "PSNR": m["psnr"], "FD": m["fd"], "GT artifact rate": m["gt_artifact_rate"],
                     "ASCED flagged": m.get("corrected_share", "-"), "s/sample": m["s_per_sample"]})
    return rows


def demo_rows(args, out_dir: Path | None) -> tuple[list[dict], dict]:
    """The demo's rows and the seconds of each section (``out_dir``: where the composition grids go; None: nowhere)."""
    rows: list[dict] = []
    sections = [
        ("DSG vs DPS", lambda: _rows_dsg(args.dsg_samples, args.seed)),
        ("TAG", lambda: _rows_tag(args.seed, args.tag_samples)),
        ("ASCED", lambda: _rows_asced(args.asced_samples, args.seed)),
        ("composition", lambda: _rows_compose(args.compose_samples, args.seed, out_dir)),
    ]
    timings = {}
    for name, fn in sections:
        new, timings[name] = timed(fn)
        rows += new
        print(f"[demo] {name}: {len(new)} rows in {timings[name]:.0f} s", flush=True)
    return rows, timings


def demo_table(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    """The demo's markdown table, every value to the decimals its measured rounding spread supports.

    Spreads come from ``docs/results/precision.json`` (``onmanifold bench precision``,
    :mod:`onmanifold_bench.precision`); without them values keep four significant digits.
    """
    from .precision import format_with_spread, load_demo_spread

    spreads = load_demo_spread() or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        key = f"{r['experiment']} | {r['method']}"
        cells = [tables.escape_cell(format_with_spread(r.get(c), spreads.get(key, {}).get(c))) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(args, progress: bool) -> int:
    """All three methods against their baselines on the bundled models, one table, one report."""
    from .report import write_report

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, timings = demo_rows(args, out)
    table = demo_table(rows)
    print("\nonmanifold demo: DSG, TAG and ASCED against their baselines, and all three in one run (bundled models):\n")
    print(table)
    notes = ("DSG vs DPS: held-out digits with a 4x4 hole, sigma_y = 0.05, eta = 1; accuracy of the evaluation classifier on the "
             "inpainted digits. TAG: exact W1 to fresh draws (gmm2d), FD in the evaluation classifier's features and the time gap "
             "|argmax p(t|x) - t| (digits). ASCED: share of samples that deviate from their nearest valid shape (ground truth) and "
             "share the detector flagged and corrected. Composition: shapes super-resolution x4, sigma_y = 0.05, DDIM-25 eta = 1; "
             "grids in compose_*.png. Small n: the full measurements are in docs/results/ (dsg.md, tag.md, asced.md, compose.md).")
    samples = {"DSG vs DPS (digits)": args.dsg_samples, "TAG (gmm2d toy)": DEMO_TOY_SAMPLES, "TAG (digits)": args.tag_samples,
               "ASCED (shapes)": args.asced_samples, "composition (shapes)": args.compose_samples}
    notes += " Samples as run: " + ", ".join(f"{k} n = {v}" for k, v in samples.items()) + "."
    total = time.time() - t_start
    md = ("# onmanifold demo\n\n" + table + "\n\n" + notes + "\n\n"
          + f"Wall time {total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ").\n")
    write_text_atomic(out / "summary.md", md)
    write_json_atomic(out / "summary.json", {"rows": rows, "samples": samples, "seconds": timings, "total_seconds": total})
    html_path, _ = write_report(out, title="onmanifold demo")
    print(f"\nwrote {out}/summary.md, summary.json and the report {html_path} in {total:.0f} s")
    if getattr(args, "update_readme", None):
        update_readme(args.update_readme, table)
        print(f"wrote the table into {args.update_readme}")
    return 0


README_MARKERS = ("<!-- demo-table -->", "<!-- /demo-table -->")


def readme_table(text: str) -> str:
    """The demo table kept in a README between :data:`README_MARKERS` (the lines inside the code fence)."""
    start, end = text.find(README_MARKERS[0]), text.find(README_MARKERS[1])
    if start < 0 or end < start:
        raise ValueError(f"README: no block between {README_MARKERS[0]} and {README_MARKERS[1]}")
    inner = text[start + len(README_MARKERS[0]):end].strip().splitlines()
    return "\n".join(line for line in inner if line.startswith("|"))


def update_readme(path: str | Path, table: str) -> None:
    """Replace the demo table of the README at ``path`` by ``table`` without its wall-time columns (atomically).

    Wall times differ from machine to machine; every other cell is printed to the digits its rounding
    spread supports, so another machine prints the same table (``tests/bench/test_demo_table.py``).
    """
    path = Path(path)
    text = path.read_text()
    readme_table(text)  # refuses a README without the markers
    start = text.index(README_MARKERS[0]) + len(README_MARKERS[0])
    end = text.index(README_MARKERS[1])
    cells = reproducible_columns(table)
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])] + ["| " + " | ".join(r) + " |" for r in cells[1:]]
    write_text_atomic(path, text[:start] + "\n```\n" + "\n".join(lines) + "\n```\n" + text[end:])


def reproducible_columns(table: str) -> list[list[str]]:
    """The table's cells without the wall-time columns (what another machine must print identically)."""
    from .precision import TIMING_COLUMNS

    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    keep = [i for i, c in enumerate(header) if c not in TIMING_COLUMNS]
    out = []
    for line in [lines[0]] + lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out.append([cells[i] for i in keep])
    return out
