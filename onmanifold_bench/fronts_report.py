"""The analysis and the results page of ``onmanifold bench fronts``: ``docs/results/fronts.md`` and its figures."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from onmanifold.nets.checkpoint import write_text_atomic

from .fronts_analysis import area_between, bootstrap_points, dominated, percentile_interval
from .tables import format_value, markdown_table

__all__ = ["analyse_bed", "write_fronts_report", "FRONT_PAIRS"]

# (A, B): area(A, B) < 0 means A reaches the same accuracy at lower FD than B
FRONT_PAIRS = (("dsg", "dps"), ("dps+tag", "dps"), ("dps+tag-inline", "dps"), ("dps+es", "dps"), ("dps+tcs", "dps"), ("dps+tss", "dps"),
               ("dps+langevin", "dps"), ("dps+asced", "dps"), ("dsg+tag", "dsg"), ("dsg+asced", "dsg"), ("dps+tag", "dps+es"), ("dps+tag", "dps+tcs"))


def _fronts(points: dict[str, list[tuple[float, float, float]]]) -> dict[str, list[tuple[float, float]]]:
    """``{method: [(acc, fd), ...]}`` with the unguided point added to every method's front (its strength 0)."""
    none = points.get("none", [])
    return {m: [(a, f) for _, a, f in none + pts] for m, pts in points.items() if m != "none"}


def analyse_bed(bed: str, tests: list[dict], samples_dir: Path, reps: int, seed: int = 0) -> dict:
    """Points, dominance, areas between fronts and per-strength differences, with paired bootstrap intervals."""
    import torch
    from threadpoolctl import threadpool_limits

    from onmanifold.metrics import FrechetReference

    from .fronts import point_file, reference_features

    n = tests[0]["cell"]["setting"]["n"]
    rows = []
    for r in tests:
        s, m = r["cell"]["setting"], r["metrics"]
        rows.append({"method": s["method"], "strength": s["strength"], "value": m.get("value"), "acc": m["acc"], "fd": m["fd"], "tg": m["tg"],
                     "seconds": r["seconds"]})
    flags = dominated([(p["acc"], p["fd"]) for p in rows])
    for p, d in zip(rows, flags):
        p["dominated"] = d
    by_method: dict[str, list[tuple[float, float, float]]] = {}
    for p in rows:
        by_method.setdefault(p["method"], []).append((p["strength"], p["acc"], p["fd"]))
    point_estimate = _fronts(by_method)

    correct, feats = {}, {}
    for r in tests:
        data = torch.load(Path(samples_dir) / point_file(r["cell"]["setting"]), weights_only=True)
        key = (r["cell"]["setting"]["method"], r["cell"]["setting"]["strength"])
        correct[key], feats[key] = data["correct"].numpy(), data["features"].numpy()
    with threadpool_limits(1):
        fd = FrechetReference(reference_features(bed, n).double())
        boot = bootstrap_points(correct, feats, fd, reps, seed)

    def replicate(i: int) -> dict[str, list[tuple[float, float, float]]]:
        out: dict[str, list[tuple[float, float, float]]] = {}
        for (m, s), v in boot.items():
            out.setdefault(m, []).append((s, float(v[i, 0]), float(v[i, 1])))
        return out

    replicates = [_fronts(replicate(i)) for i in range(reps)]
    areas = []
    for a, b in FRONT_PAIRS:
        if a not in point_estimate or b not in point_estimate:
            continue
        est = area_between(point_estimate[a], point_estimate[b])
        if est is None:
            areas.append({"a": a, "b": b, "area": None})
            continue
        reps_area = [area_between(f[a], f[b]) for f in replicates]
        reps_area = [x[0] for x in reps_area if x is not None]
        lo, hi = percentile_interval(reps_area)
        areas.append({"a": a, "b": b, "area": est[0], "acc_lo": est[1], "acc_hi": est[2], "ci": [lo, hi],
                      "mean_gap": est[0] / (est[2] - est[1]), "defined_share": len(reps_area) / reps})
    diffs = []
    for (m, s), v in boot.items():
        if "+" not in m:
            continue
        base = boot.get((m.split("+")[0], s))
        if base is None:
            continue
        pe = next(p for p in rows if p["method"] == m and p["strength"] == s)
        pb = next(p for p in rows if p["method"] == m.split("+")[0] and p["strength"] == s)
        diffs.append({"method": m, "strength": s, "d_acc": pe["acc"] - pb["acc"], "d_acc_ci": list(percentile_interval(v[:, 0] - base[:, 0])),
                      "d_fd": pe["fd"] - pb["fd"], "d_fd_ci": list(percentile_interval(v[:, 1] - base[:, 1]))})
    unguided = next((p["fd"] for p in rows if p["method"] == "none"), None)
    max_dps = max((p["fd"] for p in rows if p["method"] == "dps"), default=None)
    return {"points": rows, "areas": areas, "diffs": diffs, "n": n, "reps": reps, "unguided_fd": unguided,
            "max_dps_fd_ratio": (max_dps / unguided) if unguided and max_dps is not None else None}


def _interval(ci) -> str:
    return f"[{format_value(ci[0])}, {format_value(ci[1])}]"


def _figure(bed: str, analysis: dict, fig_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onmanifold.images import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    rows = analysis["points"]
    none = [p for p in rows if p["method"] == "none"]
    methods = sorted({p["method"] for p in rows} - {"none"}, key=lambda m: (m.split("+")[0], m))
    for m in methods:
        pts = none + sorted((p for p in rows if p["method"] == m), key=lambda p: p["strength"])
        for ax, key in zip(axes, ("fd", "tg")):
            line, = ax.plot([p["acc"] for p in pts], [p[key] for p in pts], marker="o", ms=4, lw=1.2, label=m,
                            ls="-" if m.startswith("dps") else "--")
            dom = [p for p in pts if p["dominated"]]
            ax.scatter([p["acc"] for p in dom], [p[key] for p in dom], s=36, facecolors="white", edgecolors=line.get_color(), zorder=3)
    axes[0].set(xlabel="accuracy (evaluation classifier)", ylabel="FD (log scale)", yscale="log",
                title=f"{bed}: accuracy-FD fronts (hollow: dominated)")
    axes[1].set(xlabel="accuracy (evaluation classifier)", ylabel="mean time gap |t_hat - t|", title=f"{bed}: accuracy-time gap")
    axes[0].legend(fontsize=7, ncol=2)
    name = f"fronts_{bed}.png"
    save_figure(fig, fig_dir / name, dpi=110)
    return f"figures/{name}"


def _claims(bed: str, a: dict) -> list[str]:
    areas = {(x["a"], x["b"]): x for x in a["areas"] if x.get("area") is not None}

    def verdict(pair: tuple[str, str]) -> str:
        x = areas.get(pair)
        if x is None:
            return "not measurable (the two fronts share no accuracy range)"
        lo, hi = x["ci"]
        where = f"area {format_value(x['area'])} {_interval(x['ci'])} over accuracy {x['acc_lo']:.3f}-{x['acc_hi']:.3f}"
        if hi < 0:
            return f"yes: {pair[0]}'s front lies below ({where})"
        if lo > 0:
            return f"no: {pair[0]}'s front lies above ({where})"
        return f"not established: the interval contains 0 ({where})"

    tag = sorted((d for d in a["diffs"] if d["method"] == "dps+tag"), key=lambda d: d["strength"])
    gains = ", ".join(f"zeta {d['strength']:g}: {format_value(d['d_fd'])} {_interval(d['d_fd_ci'])}" for d in tag)
    L = [f"- Does DSG reach a given accuracy at lower FD than DPS? {verdict(('dsg', 'dps'))}.",
         f"- Does TAG (pre) move DPS's front? {verdict(('dps+tag', 'dps'))}. Inline: {verdict(('dps+tag-inline', 'dps'))}.",
         f"- Is TAG's gain largest where guidance is strongest? FD(DPS+TAG) - FD(DPS) per strength: {gains or 'no points'}."]
    if tag:
        strongest = tag[-1]
        best = min(tag, key=lambda d: d["d_fd"])
        L.append(f"  The largest FD reduction is at zeta {best['strength']:g}; at the strongest zeta ({strongest['strength']:g}) the "
                 f"difference is {format_value(strongest['d_fd'])} {_interval(strongest['d_fd_ci'])}"
                 + (" (interval below 0)." if strongest["d_fd_ci"][1] < 0 else " (interval not below 0)."))
    L.append(f"- Does TAG beat Epsilon Scaling on the front? {verdict(('dps+tag', 'dps+es'))}. TCS? {verdict(('dps+tag', 'dps+tcs'))}.")
    return L


def write_fronts_report(records: list[dict], results_dir, command: str, run_dir) -> Path:
    """``docs/results/fronts.md``: the protocol, per bed the front figure, the points, the areas and the claims."""
    from .fronts import __doc__ as protocol

    results_dir = Path(results_dir)
    L = ["# Accuracy–FD fronts across guidance strength", "", protocol.split("\n\n", 1)[1].strip(), "", "Command(s):", "", "```", command, "```", "",
         f"Date: {_dt.date.today().isoformat()}", ""]
    analyses = {r["cell"]["setting"]["bed"]: r for r in records if r["cell"]["method"] == "fronts"}
    for bed in ("digits", "shapes"):
        recs = [r for r in records if r["cell"]["setting"].get("bed") == bed]
        if not recs:
            continue
        hours = sum(r["seconds"] for r in recs) / 3600
        L += [f"## {bed}", "", f"Cells finished: {len(recs)}; compute: {hours:.1f} CPU-hours of wall time as run (2 cores shared).", ""]
        if bed not in analyses:
            L += ["The analysis cell has not run yet (some points are missing).", ""]
            continue
        a = analyses[bed]["metrics"]
        L += [f"![{bed} fronts]({_figure(bed, a, results_dir / 'figures')})", "",
              f"*Figure: every method's points from the unguided sampler (strength 0) to the strongest setting, accuracy against FD "
              f"(left, log scale) and against the time gap (right); hollow markers are dominated by a point of some method. "
              f"n = {a['n']} test samples per point.*", ""]
        ratio = a["max_dps_fd_ratio"]
        L += [f"Unguided FD {format_value(a['unguided_fd'])}; the strongest DPS reaches {format_value(ratio)} x that"
              + (" (the 5x target of the sweep is reached)." if ratio is not None and ratio >= 5 else " (below the 5x the sweep aims for: the grid did not break fidelity that far)."), ""]
        pts = sorted(a["points"], key=lambda p: (p["method"] != "none", p["method"], p["strength"]))
        L += ["### Points", "", markdown_table(["method", "strength", "knob (chosen on validation)", "accuracy", "FD", "time gap", "dominated"],
                                                [[p["method"], format_value(p["strength"]), format_value(p["value"]), f"{p['acc']:.3f}",
                                                  format_value(p["fd"]), format_value(p["tg"]), "yes" if p["dominated"] else ""] for p in pts]), ""]
        L += ["### Area between fronts", "", f"area(A, B) < 0: A reaches the same accuracy at lower FD. 95 % paired bootstrap intervals "
              f"({a['reps']} replicates).", "",
              markdown_table(["A", "B", "area", "95 % interval", "accuracy range", "mean FD gap"],
                             [[x["a"], x["b"], format_value(x.get("area")), _interval(x["ci"]) if x.get("area") is not None else "-",
                               f"{x['acc_lo']:.3f}-{x['acc_hi']:.3f}" if x.get("area") is not None else "no overlap",
                               format_value(x.get("mean_gap"))] for x in a["areas"]]), ""]
        diffs = sorted(a["diffs"], key=lambda d: (d["method"], d["strength"]))
        L += ["### Each correction against its guidance at the same strength", "",
              markdown_table(["method", "strength", "accuracy diff", "95 % interval", "FD diff", "95 % interval"],
                             [[d["method"], format_value(d["strength"]), f"{d['d_acc']:+.3f}", _interval(d["d_acc_ci"]), format_value(d["d_fd"]),
                               _interval(d["d_fd_ci"])] for d in diffs]), ""]
        L += ["### The claims, from the fronts", "", *_claims(bed, a), ""]
    path = results_dir / "fronts.md"
    write_text_atomic(path, "\n".join(L))
    return path
