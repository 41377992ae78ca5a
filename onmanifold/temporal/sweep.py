"""Choosing Temporal Alignment Guidance's strength on validation seeds (docs/methods/tag.md#D12).

The paper tunes ``omega0`` per task and target on an unreported grid (best values span 0.2 .. 200). The
library ships the grid and the selection rule so that every result can say how its ``omega0`` was chosen:

    grid = omega_grid()                                   # 0 and a log grid 0.05 .. 200
    best, table = choose_omega(lambda w: fd_of(sample(w, seed=VALIDATION)), grid)

and the benchmark suites record ``table`` next to the test result (``docs/results/tag.md``).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

__all__ = ["omega_grid", "choose_omega"]


def omega_grid(low: float = 0.05, high: float = 200.0, per_decade: int = 2, include_zero: bool = True) -> list[float]:
    """``0`` (no TAG: the baseline competes) and ``per_decade`` log-spaced values per decade from ``low`` to ``high``.

    Values are rounded to 2 significant digits (0.05, 0.16, 0.5, 1.6, 5, 16, 50, 160 with the defaults, then ``high``).
    """
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"low, high: expected 0 < low < high < inf, got {low}, {high}")
    if not isinstance(per_decade, int) or per_decade < 1:
        raise ValueError(f"per_decade: expected an integer >= 1, got {per_decade!r}")
    n = int(math.floor(math.log10(high / low) * per_decade + 1e-9))
    vals = [float(f"{low * 10 ** (i / per_decade):.2g}") for i in range(n + 1)]
    if vals[-1] < high:
        vals.append(float(high))
    return ([0.0] if include_zero else []) + vals


def choose_omega(score: Callable[[float], float], grid: Sequence[float] | None = None, minimize: bool = True) -> tuple[float, list[dict]]:
    """Evaluate ``score(omega0)`` (on validation seeds) over ``grid``; return ``(best omega0, [{omega0, score}, ...])``.

    Ties go to the smaller ``omega0`` (the weaker intervention). A non-finite score raises ``ValueError``
    naming the value, rather than being silently skipped.
    """
    grid = omega_grid() if grid is None else [float(w) for w in grid]
    if not grid:
        raise ValueError("grid: expected at least one omega0 value")
    table = []
    for w in grid:
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"grid: omega0 values must be finite and >= 0, got {w}")
        s = float(score(w))
        if not math.isfinite(s):
            raise ValueError(f"score: not finite at omega0 = {w} ({s})")
        table.append({"omega0": w, "score": s})
    key = (lambda r: (r["score"], r["omega0"])) if minimize else (lambda r: (-r["score"], r["omega0"]))
    return min(table, key=key)["omega0"], table
