"""The measured rounding spreads, read back: ``docs/results/precision.json`` (written by :mod:`onmanifold_bench.precision`).

A module of its own so that the page formatter (:class:`onmanifold_bench.tables.MetricFormat`) can read
the spreads without importing the suites that measure them.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["SPREAD_FILE", "load_demo_spread", "load_suite_spread"]

SPREAD_FILE = Path(__file__).resolve().parents[1] / "docs" / "results" / "precision.json"


def load_demo_spread(path: str | Path = SPREAD_FILE) -> dict[str, dict[str, float]] | None:
    """The measured spreads by row key and column, or None when they were never measured here."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("spreads"), dict):
        raise ValueError(f"{path}: not a precision record (no 'spreads' object)")
    return data["spreads"]


def _read_record(path: Path) -> dict:
    """The precision record at ``path`` ({} when there is none yet)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a precision record (not a JSON object)")
    return data


def load_suite_spread(suite: str, path: str | Path | None = None) -> dict | None:
    """``{"date", "command", "spreads": {(method, metric): spread}}`` of ``suite`` (the largest over its probes), or None.

    ``path`` defaults to :data:`SPREAD_FILE` (read when called).
    """
    entry = _read_record(Path(path or SPREAD_FILE)).get("suites", {}).get(suite)
    if entry is None:
        return None
    spreads: dict[tuple[str, str], float] = {}
    for row in entry["probes"]:
        for metric, s in row["spreads"].items():
            spreads[(row["method"], metric)] = max(s, spreads.get((row["method"], metric), 0.0))
    return {"date": entry["date"], "command": entry["command"], "spreads": spreads}
