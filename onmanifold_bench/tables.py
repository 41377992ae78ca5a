"""The one table formatter of the results pages: how a value is written in a markdown table.

Every page (``docs/results/*.md``), the runner's raw cell tables and the demo's table format their
numbers here, so one rule holds everywhere:

* ``None`` is ``missing`` (``-`` on the pages, empty in the raw cell tables);
* a float has ``digits`` significant digits (``f"{v:.3g}"``), or ``decimals`` fixed decimals when
  given; a value that would need an exponent to show its integer part (``1.23e+03``) is written as
  a rounded integer instead (``1234``), never in scientific notation;
* a bool is ``true`` / ``false``, an int or a string is itself, anything else compact JSON.

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
from typing import Any, Sequence

__all__ = ["format_value", "percent", "markdown_table", "escape_cell"]


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
