"""The analysis and the results page of ``onmanifold bench fronts``: ``docs/results/fronts.md`` and its figures."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Sequence

from onmanifold.nets.checkpoint import write_text_atomic

from .runner import Cell
from .tables import MetricFormat, decimals_for, format_value, markdown_table

__all__ = ["write_fronts_report", "fronts_figure"]

def _area_text(x: dict, fm: MetricFormat):
    """A formatter of ``x``'s area and its interval bounds: an area integrates the FD gap over the accuracy range, so it
    holds the decimals of the two methods' FD rounding spreads summed, times the range's width."""
    margin = sum(fm.spread("fd", m) or 0.0 for m in (x["a"], x["b"])) * (x["acc_hi"] - x["acc_lo"])

    def show(v):
        d = decimals_for(v, margin) if margin > 0 else None
        return format_value(v) if d is None else format_value(v, decimals=d)

    return show


def _interval(ci, show=format_value) -> str:
    return f"[{show(ci[0])}, {show(ci[1])}]"


def fronts_figure(bed: str, analysis: dict, path: Path) -> str:
    """Draw ``bed``'s fronts (the analysis cell's points) into ``path``: accuracy against FD (log scale) and against the
    time gap, one line per method from the unguided point to the strongest, dominated points hollow. Returns the caption."""
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
    caption = (f"{bed}: every method's points from the unguided sampler (strength 0) to the strongest setting, accuracy against FD "
               f"(left, log scale) and against the time gap (right); hollow markers are dominated by a point of some method. "
               f"n = {analysis['n']} test samples per point.")
    save_figure(fig, path, dpi=110, caption=caption)
    return caption


def _claims(bed: str, a: dict, fm: MetricFormat) -> list[str]:
    areas = {(x["a"], x["b"]): x for x in a["areas"] if x.get("area") is not None}

    def verdict(pair: tuple[str, str]) -> str:
        x = areas.get(pair)
        if x is None:
            return "not measurable (the two fronts share no accuracy range)"
        lo, hi = x["ci"]
        show = _area_text(x, fm)
        where = f"area {show(x['area'])} {_interval(x['ci'], show)} over accuracy {x['acc_lo']:.3f}-{x['acc_hi']:.3f}"
        margin = sum(fm.spread("fd", m) or 0.0 for m in pair)  # the FD two runs on two machines can differ by, per point
        if x.get("mean_gap") is not None and abs(x["mean_gap"]) <= margin:
            return (f"not established: the mean FD gap {fm.difference(x['mean_gap'], 'fd', *pair)} is within the two methods' rounding spread "
                    f"of FD ({format_value(margin, 2)}, docs/results/precision.md) ({where})")
        if hi < 0:
            return f"yes: {pair[0]}'s front lies below ({where})"
        if lo > 0:
            return f"no: {pair[0]}'s front lies above ({where})"
        return f"not established: the interval contains 0 ({where})"

    tag = sorted((d for d in a["diffs"] if d["method"] == "dps+tag"), key=lambda d: d["strength"])
    def gap(v):  # an FD difference of DPS+TAG against DPS, to the digits their spreads support
        return fm.difference(v, "fd", "dps+tag", "dps")

    gains = ", ".join(f"zeta {d['strength']:g}: {gap(d['d_fd'])} {_interval(d['d_fd_ci'], gap)}" for d in tag)
    L = [f"- Does DSG reach a given accuracy at lower FD than DPS? {verdict(('dsg', 'dps'))}.",
         f"- Does TAG (pre) move DPS's front? {verdict(('dps+tag', 'dps'))}. Inline: {verdict(('dps+tag-inline', 'dps'))}.",
         f"- Is TAG's gain largest where guidance is strongest? FD(DPS+TAG) - FD(DPS) per strength: {gains or 'no points'}."]
    if tag:
        strongest = tag[-1]
        best = min(tag, key=lambda d: d["d_fd"])
        L.append(f"  The largest FD reduction is at zeta {best['strength']:g}; at the strongest zeta ({strongest['strength']:g}) the "
                 f"difference is {gap(strongest['d_fd'])} {_interval(strongest['d_fd_ci'], gap)}"
                 + (" (interval below 0)." if strongest["d_fd_ci"][1] < 0 else " (interval not below 0)."))
    L.append(f"- Does TAG beat Epsilon Scaling on the front? {verdict(('dps+tag', 'dps+es'))}. TCS? {verdict(('dps+tag', 'dps+tcs'))}.")
    return L


def _bed_notes(bed: str) -> list[str]:
    """What a reader of ``bed``'s section must know beyond the protocol: where its decimals come from, what its time gap measures."""
    L = []
    if bed != "digits":
        L.append("The decimals printed here follow the rounding spreads measured on the digits bed (the suite's spread probes are "
                 "digits cells, docs/results/precision.md); this bed's own spread was not measured.")
    if bed == "shapes-latent":
        L.append("The latent model is guided through its VAE decoder; its time gap is that of the latent state under the latent time "
                 "predictor `shapes-latent-time` (its held-out error is on docs/results/latent.md), and ASCED is not among its methods "
                 "(the protocol says why).")
    return [" ".join(L), ""] if L else []


def write_fronts_report(records: list[dict], results_dir, command: str, run_dir, protocol: str = "",
                        beds: Sequence[str] = ("digits", "shapes", "shapes-latent"), cells: Sequence[Cell] | None = None) -> Path:
    """``docs/results/fronts.md``: the protocol (the suite's docstring), per bed the front figure, the points, the areas and the claims.

    ``beds``: the suite's beds, in page order (a bed without a finished cell is listed as not run); ``cells``: the suite's
    cell list: only records of those cells are counted and shown (a record of a cell the suite no longer has, e.g. of an
    earlier layout, is left out), and each bed's count is out of its cells.
    """
    results_dir = Path(results_dir)
    if cells is not None:
        keys = {c.key for c in cells}
        records = [r for r in records if Cell.from_description(r["cell"]).key in keys]
    fm = MetricFormat("fronts")  # each point's accuracy, FD and time gap to the decimals its measured rounding spread supports
    L = ["# Accuracy–FD fronts across guidance strength", "", protocol.split("\n\n", 1)[-1].strip(), "", "Command(s):", "", "```", command, "```", "",
         f"Date: {_dt.date.today().isoformat()}", ""]
    analyses = {r["cell"]["setting"]["bed"]: r for r in records if r["cell"]["method"] == "fronts"}
    for bed in beds:
        recs = [r for r in records if r["cell"]["setting"].get("bed") == bed]
        L += [f"## {bed}", ""]
        if not recs:
            L += [f"Not run: no cell of this bed has finished (`onmanifold bench fronts --only bed={bed}`).", ""]
            continue
        hours = sum(r["seconds"] for r in recs) / 3600
        total = "" if cells is None else f" of {sum(1 for c in cells if c.setting.get('bed') == bed)}"
        L += [f"Cells finished: {len(recs)}{total}; compute: {hours:.1f} h of wall time summed over the cells (on a 2-core machine, "
              f"shared with other jobs while they ran).", ""]
        L += _bed_notes(bed)
        if bed not in analyses:
            L += ["The analysis cell has not run yet (some points are missing).", ""]
            continue
        a = analyses[bed]["metrics"]
        (results_dir / "figures").mkdir(parents=True, exist_ok=True)
        caption = fronts_figure(bed, a, results_dir / "figures" / f"fronts_{bed}.png")
        L += [f"![{bed} fronts](figures/fronts_{bed}.png)", "", f"*Figure: {caption}*", ""]
        ratio = a["max_dps_fd_ratio"]
        L += [f"Unguided FD {fm(a['unguided_fd'], 'fd', 'none')}; the strongest DPS reaches {format_value(ratio)} x that"
              + (" (the 5x target of the sweep is reached)." if ratio is not None and ratio >= 5 else " (below the 5x the sweep aims for: the grid did not break fidelity that far)."), ""]
        pts = sorted(a["points"], key=lambda p: (p["method"] != "none", p["method"], p["strength"]))
        L += ["### Points", "", markdown_table(["method", "strength", "knob (chosen on validation)", "accuracy", "FD", "time gap", "dominated"],
                                                [[p["method"], f"{p['strength']:g}", "-" if p["value"] is None else f"{p['value']:g}",
                                                  fm(p["acc"], "acc", p["method"], decimals=3), fm(p["fd"], "fd", p["method"]),
                                                  fm(p["tg"], "tg", p["method"]), "yes" if p["dominated"] else ""] for p in pts]), ""]
        L += ["### Area between fronts", "", f"area(A, B) < 0: A reaches the same accuracy at lower FD. 95 % paired bootstrap intervals "
              f"({a['reps']} replicates).", "",
              markdown_table(["A", "B", "area", "95 % interval", "accuracy range", "mean FD gap"],
                             [[x["a"], x["b"], _area_text(x, fm)(x["area"]) if x.get("area") is not None else "-",
                               _interval(x["ci"], _area_text(x, fm)) if x.get("area") is not None else "-",
                               f"{x['acc_lo']:.3f}-{x['acc_hi']:.3f}" if x.get("area") is not None else "no overlap",
                               fm.difference(x.get("mean_gap"), "fd", x["a"], x["b"])] for x in a["areas"]]), ""]
        diffs = sorted(a["diffs"], key=lambda d: (d["method"], d["strength"]))
        L += ["### Each correction against its guidance at the same strength", "",
              markdown_table(["method", "strength", "accuracy diff", "95 % interval", "FD diff", "95 % interval"],
                             [[d["method"], f"{d['strength']:g}", fm.difference(d["d_acc"], "acc", d["method"], d["method"].split("+")[0]),
                               _interval(d["d_acc_ci"], lambda v, m=d["method"]: fm.difference(v, "acc", m, m.split("+")[0])),
                               fm.difference(d["d_fd"], "fd", d["method"], d["method"].split("+")[0]),
                               _interval(d["d_fd_ci"], lambda v, m=d["method"]: fm.difference(v, "fd", m, m.split("+")[0]))] for d in diffs]), ""]
        L += ["### The claims, from the fronts", "", *_claims(bed, a, fm), ""]
    L += [fm.note(), ""]
    path = results_dir / "fronts.md"
    write_text_atomic(path, "\n".join(L))
    return path
