"""Accuracy–FD fronts: dominance, the area between two fronts, and paired bootstrap intervals.

A method swept over guidance strength gives points ``(accuracy, FD)``; higher accuracy and lower FD
are better. Its *front* is the best FD it reaches at a given accuracy or more:

.. math::
    f_M(a) = \\min \\{\\, \\mathrm{FD}_i : \\mathrm{acc}_i \\ge a \\,\\}, \\qquad a \\le \\max_i \\mathrm{acc}_i ,

a non-decreasing staircase. A point is *dominated* when another point (of any method) has accuracy
at least as high and FD at least as low, one of them strictly.

The area between the fronts of methods ``A`` and ``B`` is

.. math::
    \\mathrm{area}(A, B) = \\int_{a_0}^{a_1} \\big(f_A(a) - f_B(a)\\big)\\, da ,
    \\qquad a_0 = \\max(\\min \\mathrm{acc}_A, \\min \\mathrm{acc}_B),\\; a_1 = \\min(\\max \\mathrm{acc}_A, \\max \\mathrm{acc}_B),

over the accuracy range both methods cover (``None`` when they share none): negative when ``A``'s
front lies below ``B``'s, i.e. ``A`` reaches the same accuracy at lower FD. Divided by
``a_1 - a_0`` it is the mean FD gap over that range.

Intervals are paired bootstrap percentiles: every method's sample ``i`` comes from the same seed, so
one resampling of the indices ``1..n`` is applied to every point at once (accuracy and FD recomputed
from per-sample correctness and features; the FD reference set is held fixed).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["dominated", "front_value", "area_between", "Point", "bootstrap_points", "percentile_interval", "analyse_bed", "FRONT_PAIRS"]

Point = tuple[float, float]  # (accuracy, FD)


def dominated(points: Sequence[Point]) -> list[bool]:
    """For each point, whether another point has accuracy >= and FD <= it, one of them strictly."""
    out = []
    for i, (a, f) in enumerate(points):
        out.append(any(j != i and a2 >= a and f2 <= f and (a2 > a or f2 < f) for j, (a2, f2) in enumerate(points)))
    return out


def front_value(points: Sequence[Point], accuracy: float) -> float:
    """``f(a)``: the lowest FD among the points with accuracy >= ``accuracy`` (``inf`` if none)."""
    vals = [f for a, f in points if a >= accuracy]
    return min(vals) if vals else float("inf")


def area_between(points_a: Sequence[Point], points_b: Sequence[Point]) -> tuple[float, float, float] | None:
    """``(area, a_0, a_1)``: the signed area between the fronts of ``points_a`` and ``points_b`` (module docstring).

    ``None`` when the accuracy ranges of the two point sets do not overlap in an interval of positive length.
    """
    if not points_a or not points_b:
        raise ValueError("points: each front needs at least one point")
    lo = max(min(a for a, _ in points_a), min(a for a, _ in points_b))
    hi = min(max(a for a, _ in points_a), max(a for a, _ in points_b))
    if not hi > lo:
        return None
    # both staircases are constant between consecutive accuracies of either set: integrate piecewise
    cuts = sorted({lo, hi, *(a for a, _ in points_a if lo < a < hi), *(a for a, _ in points_b if lo < a < hi)})
    area = 0.0
    for left, right in zip(cuts[:-1], cuts[1:]):
        # on (left, right] the front is the min over points with accuracy >= right
        area += (right - left) * (front_value(points_a, right) - front_value(points_b, right))
    return area, lo, hi


def bootstrap_points(correct: Mapping[str, np.ndarray], features: Mapping[str, np.ndarray], fd: Callable[[np.ndarray], float],
                     reps: int, seed: int) -> dict[str, np.ndarray]:
    """``{name: (reps, 2)}`` bootstrap replicates of each point's ``(accuracy, FD)``, paired across points.

    ``correct[name]``: ``(n,)`` booleans; ``features[name]``: ``(n, d)``; every point has the same ``n``
    (the same seeds). Replicate ``r`` draws one index vector and applies it to every point.
    """
    names = list(correct)
    if not names:
        raise ValueError("correct: no points to resample")
    n = len(correct[names[0]])
    if any(len(correct[k]) != n or len(features[k]) != n for k in names):
        raise ValueError("correct/features: every point needs the same number of samples (paired seeds)")
    if reps < 1:
        raise ValueError(f"reps: expected at least 1, got {reps!r}")
    rng = np.random.default_rng(seed)
    out = {k: np.empty((reps, 2)) for k in names}
    for r in range(reps):
        idx = rng.integers(0, n, n)
        for k in names:
            out[k][r] = (float(np.mean(correct[k][idx])), fd(features[k][idx]))
    return out


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``values`` (NaN-free; ``None`` entries dropped)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        raise ValueError("values: no finite replicate")
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# (A, B): area(A, B) < 0 means A reaches the same accuracy at lower FD than B
FRONT_PAIRS = (("dsg", "dps"), ("dps+tag", "dps"), ("dps+tag-inline", "dps"), ("dps+es", "dps"), ("dps+tcs", "dps"), ("dps+tss", "dps"),
               ("dps+langevin", "dps"), ("dps+asced", "dps"), ("dsg+tag", "dsg"), ("dsg+asced", "dsg"), ("dps+tag", "dps+es"), ("dps+tag", "dps+tcs"))


def _fronts(points: dict[str, list[tuple[float, float, float]]]) -> dict[str, list[tuple[float, float]]]:
    """``{method: [(acc, fd), ...]}`` with the unguided point added to every method's front (its strength 0)."""
    none = points.get("none", [])
    return {m: [(a, f) for _, a, f in none + pts] for m, pts in points.items() if m != "none"}


def analyse_bed(tests: list[dict], load_point: Callable[[dict], dict], reference: np.ndarray, reps: int, seed: int = 0) -> dict:
    """Points, dominance, areas between fronts and per-strength differences, with paired bootstrap intervals.

    ``tests``: the bed's finished test records; ``load_point(setting)`` returns a point's per-sample
    ``{"correct": (n,), "features": (n, d)}``; ``reference``: the FD reference features.
    """
    from threadpoolctl import threadpool_limits

    from onmanifold.metrics import FrechetReference

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
        data = load_point(r["cell"]["setting"])
        key = (r["cell"]["setting"]["method"], r["cell"]["setting"]["strength"])
        correct[key], feats[key] = np.asarray(data["correct"]), np.asarray(data["features"], dtype=np.float64)
    with threadpool_limits(1):
        fd = FrechetReference(reference)
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
