"""How many digits the demo's numbers hold: their rounding spread, measured (``onmanifold bench precision``).

A number computed through a diffusion sampler is only reproducible to the float rounding of the
machine: guided samplers amplify it (DPS with ``zeta = 10`` moves FD by 0.15 when eps changes by one
part in a million). This module measures that spread for every value of the demo's table and turns
it into the number of decimals the table may print.

The measurement runs the demo's rows under four conditions in one process:

===============  =============================================================================
condition        what changes
===============  =============================================================================
``base``         nothing (one torch thread)
``eps+1e-06``    every diffusion model's output multiplied by ``1 + 1e-6``
``eps-1e-06``    every diffusion model's output multiplied by ``1 - 1e-6``
``threads=2``    two torch threads (another summation order inside the network)
===============  =============================================================================

The spread of a value is ``max - min`` over the conditions. It is printed with ``d`` decimals, the
largest ``d`` whose last digit is at least the spread: ``d = floor(-log10(spread))`` (0.15 -> 0
decimals, 0.003 -> 2), never below 0 and never more than four significant digits; a spread of 0
keeps four significant digits.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from onmanifold.nets.checkpoint import write_json_atomic, write_text_atomic

from . import tables

__all__ = ["CONDITIONS", "decimals_for", "format_with_spread", "measure_demo_spread", "load_demo_spread", "SPREAD_FILE", "TIMING_COLUMNS"]

CONDITIONS = ("base", "eps+1e-06", "eps-1e-06", "threads=2")
TIMING_COLUMNS = ("s/sample", "time ratio")
"""Columns that are wall times: machine-dependent by nature, never part of the reproducible table."""
SPREAD_FILE = Path(__file__).resolve().parents[1] / "docs" / "results" / "precision.json"


def decimals_for(value: float, spread: float) -> int | None:
    """Decimals that ``value`` holds given its rounding ``spread`` (None: keep four significant digits).

    ``d = floor(-log10(spread))`` clipped to ``[0, 4 - 1 - floor(log10|value|)]``.
    """
    if not (math.isfinite(spread) and spread >= 0):
        raise ValueError(f"spread: expected a finite number >= 0, got {spread!r}")
    if spread == 0:
        return None
    d = max(0, math.floor(-math.log10(spread)))
    if value != 0 and math.isfinite(value):
        d = min(d, max(0, 3 - math.floor(math.log10(abs(value)))))
    return d


def format_with_spread(value: Any, spread: float | None) -> str:
    """``value`` as table text with the decimals its ``spread`` supports (four significant digits without one)."""
    if not isinstance(value, float) or spread is None:
        return tables.format_value(value, 4)
    d = decimals_for(value, spread)
    return tables.format_value(value, 4) if d is None else tables.format_value(value, decimals=d)


@contextmanager
def _condition(name: str) -> Iterator[None]:
    """Run the block under one of :data:`CONDITIONS` (models reloaded inside, restored after)."""
    import onmanifold.model as model_module

    from . import models

    threads = torch.get_num_threads()
    original = model_module.load_diffusion_model
    scale = {"eps+1e-06": 1 + 1e-6, "eps-1e-06": 1 - 1e-6}.get(name)

    def perturbed(*args, **kwargs):
        loaded = original(*args, **kwargs)
        inner = loaded.model

        def model(x, t, cond=None):
            return inner(x, t, cond) * scale

        return dataclasses.replace(loaded, model=model)

    models.clear()
    torch.set_num_threads(2 if name == "threads=2" else 1)
    if scale is not None:
        model_module.load_diffusion_model = perturbed
    try:
        yield
    finally:
        model_module.load_diffusion_model = original
        models.clear()
        torch.set_num_threads(threads)


def _row_key(row: dict) -> str:
    return f"{row['experiment']} | {row['method']}"


def measure_demo_spread(rows_fn, columns: list[str], out: str | Path = SPREAD_FILE, command: str = "", samples: dict | None = None) -> dict:
    """Run ``rows_fn()`` (the demo's rows) under every condition and write the spreads (``precision.json`` + ``.md``)."""
    runs: dict[str, list[dict]] = {}
    for name in CONDITIONS:
        with _condition(name):
            print(f"[precision] condition {name}", flush=True)
            runs[name] = rows_fn()
    keys = [_row_key(r) for r in runs["base"]]
    spreads: dict[str, dict[str, float]] = {}
    for i, key in enumerate(keys):
        spreads[key] = {}
        for col in columns:
            vals = [runs[c][i].get(col) for c in CONDITIONS]
            if col in TIMING_COLUMNS or not all(isinstance(v, float) for v in vals):
                continue
            spreads[key][col] = max(vals) - min(vals)
    record = {
        "command": command,
        "date": _dt.date.today().isoformat(),
        "conditions": list(CONDITIONS),
        "samples": samples or {},
        "spreads": spreads,
        "values": {c: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in runs[c]] for c in CONDITIONS},
    }
    out = Path(out)
    write_json_atomic(out, record)
    write_text_atomic(out.with_suffix(".md"), _page(record))
    return record


def _page(record: dict) -> str:
    lines = [
        "# Rounding spread of the demo's numbers",
        "",
        f"Command: `{record['command']}` ({record['date']}). The demo's rows run four times in one process: as is (one torch "
        "thread), with every diffusion model's eps multiplied by 1 + 1e-6 and by 1 - 1e-6, and with two torch threads. The spread of a "
        "value is max - min over the four; the demo prints each value with the decimals its spread supports "
        "(`onmanifold_bench/precision.py`). Timings are excluded (machine-dependent by nature).",
        "",
    ]
    rows = []
    for key, cols in record["spreads"].items():
        for col, spread in cols.items():
            vals = [r for r in record["values"]["base"] if _row_key(r) == key][0]
            d = decimals_for(vals[col], spread)
            rows.append([key, col, tables.format_value(vals[col], 6), tables.format_value(spread, 2), "4 significant digits" if d is None else str(d)])
    lines.append(tables.markdown_table(["row", "column", "value (base)", "spread", "decimals printed"], rows))
    return "\n".join(lines) + "\n"


def load_demo_spread(path: str | Path = SPREAD_FILE) -> dict[str, dict[str, float]] | None:
    """The measured spreads by row key and column, or None when they were never measured here."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("spreads"), dict):
        raise ValueError(f"{path}: not a precision record (no 'spreads' object)")
    return data["spreads"]
