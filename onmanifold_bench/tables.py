"""The one table formatter of the results pages: how a value is written in a markdown table.

Every page (``docs/results/*.md``), the runner's raw cell tables and the demo's table format their
numbers here, so one rule holds everywhere:

* ``None`` is ``missing`` (``-`` on the pages, empty in the raw cell tables);
* a float has ``digits`` significant digits (``f"{v:.3g}"``), or ``decimals`` fixed decimals when
  given; a value that would need an exponent to show its integer part (``1.23e+03``) is written as
  a rounded integer instead (``1234``), never in scientific notation;
* a bool is ``true`` / ``false``, an int or a string is itself, anything else compact JSON;
* a *metric* on a results page (:class:`MetricFormat`) is printed with no more decimals than its measured
  rounding spread supports (:func:`decimals_for`; the spreads: ``docs/results/precision.json``), and never
  with more digits than the rule above gives.

>>> format_value(0.123456), format_value(1234.5), format_value(None), format_value(2.0, decimals=2)
('0.123', '1234', '-', '2.00')
>>> percent(0.1234)
'12.3 %'
>>> print(markdown_table(["method", "FD"], [["DSG", 1.23456], ["DPS", None]]))
| method | FD |
|---|---|
| DSG | 1.23 |
| DPS | - |
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

__all__ = ["format_value", "percent", "markdown_table", "escape_cell", "decimals_for", "MetricFormat"]


def format_value(value: Any, digits: int = 3, *, decimals: int | None = None, missing: str = "-") -> str:
    """``value`` as table text (see the module docstring for the rule)."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.{decimals}f}" if decimals is not None else f"{value:.{digits}g}"
        return f"{value:.0f}" if "e+" in text else text
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def percent(value: float | None, decimals: int = 1) -> str:
    """A share as a percentage: ``0.1234 -> '12.3 %'``; ``None -> '-'``."""
    return "-" if value is None else f"{100 * value:.{decimals}f} %"


def escape_cell(text: str) -> str:
    """``text`` safe inside one markdown table cell (``|`` escaped, line breaks removed)."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], digits: int = 3, *, missing: str = "-") -> str:
    """A markdown table: ``header``, then one line per row; non-string entries go through :func:`format_value`."""

    def cell(v: Any) -> str:
        return escape_cell(v if isinstance(v, str) else format_value(v, digits, missing=missing))

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def decimals_for(value: float, spread: float) -> int | None:
    """Decimals that ``value`` holds given its rounding ``spread`` (None: keep four significant digits).

    ``d = floor(-log10(spread))`` (the last digit printed is at least the spread: 0.15 -> 0, 0.003 -> 2),
    clipped to ``[0, 4 - 1 - floor(log10|value|)]``.
    """
    if not (math.isfinite(spread) and spread >= 0):
        raise ValueError(f"spread: expected a finite number >= 0, got {spread!r}")
    if spread == 0:
        return None
    d = max(0, math.floor(-math.log10(spread)))
    if value != 0 and math.isfinite(value):
        d = min(d, max(0, 3 - math.floor(math.log10(abs(value)))))
    return d


def _shown_decimals(value: float, digits: int, decimals: int | None) -> int:
    """Decimals :func:`format_value` prints for ``value`` (``digits`` significant, or ``decimals``)."""
    if decimals is not None:
        return decimals
    text = f"{value:.{digits}g}"
    if "e+" in text:
        return 0
    if "e-" in text:
        mantissa, exp = text.split("e-")
        return len(mantissa.split(".")[1]) + int(exp) if "." in mantissa else int(exp)
    return len(text.split(".")[1]) if "." in text else 0


class MetricFormat:
    """How one suite's results page prints its metrics: each to the decimals its measured rounding spread supports.

    The spreads come from ``onmanifold bench SUITE --measure-spread``
    (:func:`onmanifold_bench.precision.measure_suite_spread`): a representative cell per method, re-run
    with eps x (1 +- 1e-6) and with 1 vs 2 threads. The spread of ``(method, metric)`` is used when that
    method was probed, else the largest spread of that metric over the suite's probes (conservative). A
    value prints with ``min(the decimals the stored rule shows, decimals_for(value, spread))``: fewer
    digits where rounding moves them, never more than before. A metric without a probe keeps the stored
    rule and is named in :meth:`note`.

    >>> f = MetricFormat("x", {("dps", "fd"): 0.25, ("dsg", "fd"): 0.004})
    >>> f(7.0312, "fd", "dps"), f(7.0312, "fd", "dsg"), f(7.0312, "fd"), f(0.91234, "ssim")
    ('7', '7.03', '7', '0.912')
    """

    def __init__(self, suite: str, spreads: dict[tuple[str, str], float] | None = None, source: str = "") -> None:
        self.suite = suite
        self.source = source
        if spreads is None:
            from .spreads import load_suite_spread

            loaded = load_suite_spread(suite)
            spreads = loaded["spreads"] if loaded else {}
            self.source = f"measured {loaded['date']} by `{loaded['command']}`" if loaded else ""
        self.spreads = dict(spreads)
        self.unmeasured: set[str] = set()

    def spread(self, metric: str, method: str | None = None) -> float | None:
        """The rounding spread of ``metric`` (of ``method`` when it was probed, else the suite's largest), or None."""
        if method is not None and (method, metric) in self.spreads:
            return self.spreads[(method, metric)]
        found = [s for (_, m), s in self.spreads.items() if m == metric]
        return max(found) if found else None

    def decimals(self, value: float, metric: str, method: str | None = None, digits: int = 3, decimals: int | None = None) -> int:
        """Decimals printed for ``value``: the stored rule's, or fewer where the spread says so."""
        shown = _shown_decimals(value, digits, decimals)
        spread = self.spread(metric, method)
        if spread is None:
            self.unmeasured.add(metric)
            return shown
        d = decimals_for(value, spread)
        return shown if d is None else min(shown, d)

    def __call__(self, value: Any, metric: str, method: str | None = None, digits: int = 3, decimals: int | None = None) -> str:
        """``value`` as table text (non-floats as :func:`format_value` writes them)."""
        if not isinstance(value, float) or not math.isfinite(value):
            return format_value(value, digits, decimals=decimals)
        d = self.decimals(value, metric, method, digits, decimals)
        return f"{value:.{d}f}"

    def percent(self, value: float | None, metric: str, method: str | None = None, decimals: int = 1) -> str:
        """A share as a percentage (:func:`percent`) with the decimals the spread of the share supports."""
        if value is None:
            return "-"
        spread = self.spread(metric, method)
        if spread is None:
            self.unmeasured.add(metric)
            d = decimals
        else:
            supported = decimals_for(100 * value, 100 * spread)
            d = decimals if supported is None else min(decimals, supported)
        return f"{100 * value:.{d}f} %"

    def outcome(self, a: float, b: float, metric: str, method_a: str, method_b: str, lower_is_better: bool) -> int:
        """``+1`` when ``a`` (of ``method_a``) beats ``b`` (of ``method_b``) on ``metric`` by more than the two rounding spreads
        together, ``-1`` when it loses by more, ``0`` when the difference is within them (a difference rounding could make).

        >>> MetricFormat("x", {("dps", "fd"): 0.2, ("dsg", "fd"): 0.05}).outcome(3.0, 3.2, "fd", "dsg", "dps", lower_is_better=True)
        0
        """
        margin = self._summed_spread(metric, method_a, method_b) or 0.0
        gain = (b - a) if lower_is_better else (a - b)
        return 1 if gain > margin else (-1 if gain < -margin else 0)

    def difference(self, value: float, metric: str, method_a: str | None = None, method_b: str | None = None,
                   digits: int = 3, decimals: int | None = None) -> str:
        """``value = a - b`` (``a`` of ``method_a``, ``b`` of ``method_b``: ``ΔFD = FD(a) - FD(b)``, or a bound of its confidence
        interval) signed, with the decimals the two methods' rounding spreads summed support (each value moves by up to its own
        spread, so their difference by up to both together, as in :meth:`outcome`).

        >>> MetricFormat("x", {("dps", "fd"): 0.02, ("dsg", "fd"): 0.005}).difference(3.0 - 3.2123, "fd", "dsg", "dps")
        '-0.2'
        """
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return format_value(value, digits, decimals=decimals)
        value = float(value)
        d = _shown_decimals(value, digits, decimals)
        spread = self._summed_spread(metric, method_a, method_b)
        supported = None if spread is None else decimals_for(value, spread)
        if supported is not None:
            d = min(d, supported)
        return f"{value:+.{d}f}"

    def _summed_spread(self, metric: str, method_a: str | None, method_b: str | None) -> float | None:
        """The rounding spread of ``metric`` of ``method_a`` plus that of ``method_b`` (None, noted, when it was never probed)."""
        if metric not in {k for _, k in self.spreads}:
            self.unmeasured.add(metric)
            return None
        return sum(self.spread(metric, m) or 0.0 for m in (method_a, method_b))

    def note(self) -> str:
        """The page's line on where its digits come from."""
        if not self.spreads:
            return ("Digits: no rounding spread was measured for this suite (`onmanifold bench " f"{self.suite} --measure-spread`); "
                    "values keep the stored digits.")
        worst = sorted(((s, k) for k, s in self.spreads.items()), reverse=True)[:3]
        text = (f"Digits: each metric is printed with no more decimals than its rounding spread supports (`docs/results/precision.md`, "
                f"{self.source}: a representative cell per method at the suite's cheapest step count and a low n, re-run with eps x "
                "(1 +- 1e-6) and with 1 vs 2 threads; a method without its own probe takes the suite's largest spread of that metric). "
                "Largest spreads: " + ", ".join(f"{m} {k} {format_value(s, 2)}" for s, (m, k) in worst) + ". Cells at other step "
                "counts, knobs or n may spread more or less than their representative.")
        if self.unmeasured:
            text += f" Not probed, printed as stored: {', '.join(sorted(self.unmeasured))}."
        return text
