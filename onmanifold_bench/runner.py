"""Resumable runner shared by every benchmark suite.

A :class:`Suite` is a named list of :class:`Cell` (method x setting x shard x seeds) and a function
``run_cell(cell) -> dict`` of JSON-able metrics. :func:`run_suite` runs the cells in order and writes
one record per finished cell to ``<run_dir>/cells/<cell.key>.json`` (atomically), so an interrupted
run (Ctrl-C, SIGKILL, power loss) resumes where it stopped: finished cells are loaded, not rerun;
at most the cell in flight is lost. :func:`summarize` writes ``<results_dir>/<suite>.json`` and a
markdown table ``<results_dir>/<suite>.md`` carrying the exact command and date.

Results are strict JSON: a NaN or infinite metric raises :class:`ValueError` naming the cell and
the metric instead of being written.

Left-over temporary files (``.<key>.json.*.tmp``) of a killed writer are ignored, never read.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import shlex
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from onmanifold.nets.checkpoint import write_json_atomic, write_text_atomic as _write_text_atomic

__all__ = ["Cell", "Suite", "run_suite", "summarize", "import_records"]

_UNSAFE = re.compile(r"[^A-Za-z0-9.=+-]+")
_SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------------------------- JSON


def _canonical(value: Any, where: str) -> Any:
    """``value`` as plain strict-JSON data (dict with str keys, list, str, int, finite float, bool, None).

    Tuples become lists; numpy scalars and 0-d tensors become Python numbers. Raises
    :class:`TypeError` for anything else and :class:`ValueError` for NaN/Inf, naming ``where``.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value!r}: NaN/Inf is not allowed in results")
        return float(value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} has a non-string key {k!r}; JSON keys must be strings")
            out[k] = _canonical(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # numpy scalar, 0-d array/tensor
        return _canonical(value.item(), where)
    raise TypeError(f"{where} has type {type(value).__name__}, which is not JSON-able")


def _dumps_canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-strict JSON constant {name}")


def _loads_strict(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


# --------------------------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One unit of work: a method on a setting, for one shard and its seeds.

    ``setting`` is stored as plain JSON data (tuples become lists). Equality, hashing and
    :attr:`key` are all derived from the canonical JSON of the cell, so they agree with each other
    and are identical across processes (no use of Python's salted ``hash()``).
    """

    method: str
    setting: dict = field(default_factory=dict)
    shard: int = 0
    seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method:
            raise TypeError(f"Cell.method must be a non-empty string, got {self.method!r}")
        if not isinstance(self.setting, dict):
            raise TypeError(f"Cell.setting must be a dict, got {type(self.setting).__name__}")
        object.__setattr__(self, "setting", _canonical(self.setting, f"setting of cell {self.method!r}"))
        if isinstance(self.shard, bool) or not isinstance(self.shard, int):
            raise TypeError(f"Cell.shard must be an int, got {self.shard!r}")
        seeds = tuple(self.seeds)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise TypeError(f"Cell.seeds must be ints, got {seeds!r}")
        object.__setattr__(self, "seeds", tuple(int(s) for s in seeds))

    def describe(self) -> dict:
        """The JSON description stored in each record under ``"cell"``."""
        return {"method": self.method, "setting": self.setting, "shard": self.shard, "seeds": list(self.seeds)}

    def _canonical_json(self) -> str:
        return _dumps_canonical(self.describe())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cell):
            return NotImplemented
        return self._canonical_json() == other._canonical_json()

    def __hash__(self) -> int:
        return hash(self._canonical_json())

    @property
    def key(self) -> str:
        """Stable filesystem-safe id: ``<method>__<k=v_...>__shard<n>__<sha1[:10]>``."""
        digest = hashlib.sha1(self._canonical_json().encode("ascii")).hexdigest()[:10]
        method = _UNSAFE.sub("_", self.method).strip("._")[:40] or "cell"
        items = "_".join(
            f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
            for k, v in sorted(self.setting.items())
        )
        short = _UNSAFE.sub("_", items).strip("._")[:80] or "default"
        return f"{method}__{short}__shard{self.shard}__{digest}"


@dataclass
class Suite:
    """A named benchmark: its cells (run in order) and ``run_cell(cell) -> dict`` of metrics."""

    name: str
    cells: list[Cell]
    run_cell: Callable[[Cell], dict]
    description: str = ""
    columns: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SUITE_NAME.fullmatch(self.name):
            raise ValueError(f"suite name {self.name!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (it names files)")
        self.cells = list(self.cells)
        seen: dict[str, Cell] = {}
        for c in self.cells:
            if not isinstance(c, Cell):
                raise TypeError(f"suite {self.name!r}: cells must be Cell, got {type(c).__name__}")
            if c.key in seen:
                raise ValueError(f"suite {self.name!r}: duplicate cell {c.key}")
            seen[c.key] = c
        if self.columns is not None:
            self.columns = list(self.columns)


# --------------------------------------------------------------------------------------------- running


def _is_finished_record(rec: Any) -> bool:
    """Whether ``rec`` has the shape :func:`_compute` writes: ``{"cell", "metrics", "seconds", "finished_at"}``."""
    return (
        isinstance(rec, dict)
        and isinstance(rec.get("cell"), dict)
        and isinstance(rec.get("metrics"), dict)
        and "seconds" in rec
        and "finished_at" in rec
    )


def _load_record(path: Path, cell: Cell) -> dict | None:
    """The finished record of ``cell`` at ``path``, or None (absent, corrupt or another cell's; warns)."""
    if not path.is_file():
        return None
    try:
        rec = _loads_strict(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, NaN constants
        warnings.warn(f"cell file {path} is corrupt ({e}); recomputing cell {cell.key}", RuntimeWarning, stacklevel=3)
        return None
    if not _is_finished_record(rec):
        warnings.warn(f"cell file {path} is incomplete; recomputing cell {cell.key}", RuntimeWarning, stacklevel=3)
        return None
    try:
        same = _dumps_canonical(rec["cell"]) == cell._canonical_json()
    except (TypeError, ValueError):
        same = False
    if not same:
        warnings.warn(
            f"cell file {path} describes another cell ({rec['cell']!r}); recomputing cell {cell.key}",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return rec


def _compute(suite: Suite, cell: Cell) -> dict:
    t0 = time.perf_counter()
    try:
        metrics = suite.run_cell(cell)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"while running cell {cell.key} of suite {suite.name!r}")
        raise
    seconds = time.perf_counter() - t0
    if not isinstance(metrics, dict):
        raise TypeError(
            f"suite {suite.name!r}: run_cell returned {type(metrics).__name__} for cell {cell.key}; expected a dict of metrics"
        )
    metrics = _canonical(metrics, f"suite {suite.name!r}, cell {cell.key}: metric")
    record = {
        "cell": cell.describe(),
        "metrics": metrics,
        "seconds": seconds,
        "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    # exactly what a later run will load back
    return _loads_strict(json.dumps(record, allow_nan=False))


def _matches(method: str, setting: dict, cell_method: str, match: dict) -> bool:
    return method == cell_method and all(setting.get(k) == v for k, v in match.items())


class CellNotReady(RuntimeError):
    """A cell needs the result of another cell that has not finished yet (the runner retries it later)."""


def finished_records(cells: Sequence[Cell], run_dir: str | os.PathLike, cell_method: str, /, **match: Any) -> list[dict]:
    """The finished records of the cells of ``cell_method`` whose settings match ``match`` (suite order).

    Raises :class:`CellNotReady` if one of them has not finished: suites call this to read a
    validation choice, and the runner then retries the asking cell after the others.
    """
    out = []
    for c in cells:
        if _matches(c.method, c.setting, cell_method, match):
            rec = _load_record(Path(run_dir) / "cells" / f"{c.key}.json", c)
            if rec is None:
                raise CellNotReady(f"cell {c.key} must run before the cells that use its result")
            out.append(rec)
    return out


def select_records(records: Sequence[dict], cell_method: str, /, **match: Any) -> list[dict]:
    """The records of ``cell_method`` whose settings match ``match`` (results-page helper)."""
    return [r for r in records if _matches(r["cell"]["method"], r["cell"]["setting"], cell_method, match)]


def first_metrics(records: Sequence[dict], cell_method: str, /, **match: Any) -> dict | None:
    """The metrics of the first record :func:`select_records` finds, or None."""
    rs = select_records(records, cell_method, **match)
    return rs[0]["metrics"] if rs else None


def format_value(v: Any, nd: int = 3) -> str:
    """A table entry: ``-`` for None, floats to ``nd`` significant digits, anything else as text."""
    return "-" if v is None else (f"{v:.{nd}g}" if isinstance(v, float) else str(v))


def run_suite(
    suite: Suite,
    run_dir: str | os.PathLike,
    progress: bool = True,
    shard_filter: Callable[[Cell], bool] | None = None,
    rank: int = 0,
    world_size: int = 1,
    wait_seconds: float = 6 * 3600.0,
) -> list[dict]:
    """Run (or resume) ``suite``; one record per cell in ``<run_dir>/cells/<key>.json``.

    Cells whose file exists, parses and describes the same cell are loaded, not rerun; a corrupt or
    foreign file is recomputed with a warning. With ``shard_filter``, only cells for which it is
    true are run; the others are loaded if present, else omitted. Returns the records in suite order,
    each ``{"cell", "metrics", "seconds", "finished_at"}``.

    Several processes (``world_size > 1``, e.g. under ``torchrun``) share one ``run_dir``: process
    ``rank`` computes the cells ``i`` with ``i % world_size == rank``. A cell whose inputs are not
    finished (:class:`CellNotReady`) is retried after the others; in one process a round without
    progress is an error, with several the process waits (up to ``wait_seconds``) for the others'
    files. Every cell is computed by exactly one process from its own seeds, so the results are those
    of a single-process run.
    """
    cells_dir = Path(run_dir) / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    loaded = 0
    for i, cell in enumerate(suite.cells):
        if _load_record(cells_dir / f"{cell.key}.json", cell) is not None:
            loaded += 1
        elif i % world_size == rank and (shard_filter is None or shard_filter(cell)):
            todo.append(cell)
    ran = 0
    bar = tqdm(total=len(todo), desc=suite.name, unit="cell", disable=not progress)
    waited_since = None
    try:
        while todo:
            blocked: list[Cell] = []
            last_error: CellNotReady | None = None
            for cell in todo:
                bar.set_description(f"{suite.name}: {cell.method}")
                path = cells_dir / f"{cell.key}.json"
                if world_size > 1 and _load_record(path, cell) is not None:  # another process wrote it meanwhile
                    bar.update(1)
                    continue
                try:
                    rec = _compute(suite, cell)
                except CellNotReady as e:
                    blocked.append(cell)
                    last_error = e
                    continue
                if world_size > 1:
                    rec["rank"] = rank  # which process computed it (scale-out runs)
                write_json_atomic(path, rec)
                ran += 1
                bar.set_postfix(ran=ran, loaded=loaded, refresh=False)
                bar.update(1)
            if blocked and len(blocked) == len(todo):  # no progress in a whole round
                if world_size == 1:
                    raise last_error
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since > wait_seconds:
                    raise CellNotReady(f"rank {rank}: waited {wait_seconds:.0f} s for other processes: {last_error}")
                time.sleep(1.0)
            else:
                waited_since = None
            todo = blocked
    finally:
        bar.close()
    records = []
    for cell in suite.cells:
        rec = _load_record(cells_dir / f"{cell.key}.json", cell)
        if rec is not None:
            records.append(rec)
    return records


def import_records(suite: Suite, run_dir: str | os.PathLike, results_json: str | os.PathLike) -> tuple[int, int, list[str], str]:
    """Seed ``<run_dir>/cells`` from a committed summary ``<results_dir>/<suite>.json``.

    Returns ``(written, kept, dropped, command)``. A run directory is scratch space (``runs/`` is not
    committed), but the summary JSON holds every finished record verbatim. Importing it lets a later
    session add cells to a suite without recomputing the finished ones: each record whose cell
    belongs to ``suite`` and has no valid cell file yet is written as that cell's file (``written``);
    cells that already have one keep it (``kept``). Records of cells the suite no longer has (its
    definition changed since, e.g. a widened sweep) are not imported: their keys are ``dropped``, and
    those cells, if still wanted under their new identity, are recomputed. ``command`` is the
    summary's command history, for the caller to carry over. Sample artifacts (``.pt`` files) are
    not in the summary; reports must cope with their absence.

    Raises :class:`ValueError` naming ``results_json`` if it is not this suite's summary or a record
    is not a finished cell record.
    """
    path = Path(results_json)
    try:
        payload = _loads_strict(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"results_json: cannot read {path} as strict JSON ({e})") from e
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise ValueError(f"results_json: {path} is not a suite summary (expected an object with a 'records' list)")
    if payload.get("suite") != suite.name:
        raise ValueError(f"results_json: {path} is the summary of suite {payload.get('suite')!r}, expected {suite.name!r}")
    parsed = []  # every record is checked before any file is written
    for i, rec in enumerate(payload["records"]):
        cell = None
        if _is_finished_record(rec):
            d = rec["cell"]
            try:
                cell = Cell(d["method"], d["setting"], d["shard"], tuple(d["seeds"]))
            except (KeyError, TypeError, ValueError):
                pass
        if cell is None:
            raise ValueError(f"results_json: record {i} of {path} is not a finished cell record")
        parsed.append((i, rec, cell))
    suite_keys = {c.key for c in suite.cells}
    cells_dir = Path(run_dir) / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    written = kept = 0
    dropped: list[str] = []
    for i, rec, cell in parsed:
        if cell.key not in suite_keys:
            dropped.append(cell.key)
            continue
        target = cells_dir / f"{cell.key}.json"
        if _load_record(target, cell) is not None:
            kept += 1
            continue
        write_json_atomic(target, _canonical(rec, f"record {i} of {path}"))
        written += 1
    command = payload.get("command")
    return written, kept, dropped, command if isinstance(command, str) else ""


# --------------------------------------------------------------------------------------------- summary


def _fmt(value: Any) -> str:
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.replace("|", "\\|").replace("\n", " ")


def _first_seen(dicts: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for d in dicts:
        for k in d:
            keys.setdefault(k, None)
    return list(keys)


def summarize(
    suite: Suite,
    records: list[dict],
    results_dir: str | os.PathLike,
    command: str | Sequence[str],
    date: str | _dt.date | None = None,
) -> tuple[Path, Path]:
    """Write ``<results_dir>/<suite.name>.json`` and ``.md`` (both atomically); return their paths.

    ``command`` (a string, or an argv list joined with shell quoting) is recorded verbatim; ``date``
    defaults to today (ISO). The markdown table has one row per record: method, one column per
    setting key, shard, then ``suite.columns`` or every metric key in first-seen order; floats
    are shown with 4 significant digits.
    """
    results_dir = Path(results_dir)
    if not isinstance(command, str):
        command = shlex.join(list(command))
    if date is None:
        date = _dt.date.today()
    if isinstance(date, _dt.date):
        date = date.isoformat()

    payload = {
        "suite": suite.name,
        "description": suite.description,
        "command": command,
        "date": date,
        "records": list(records),
    }
    json.dumps(payload, allow_nan=False)  # strict JSON or ValueError, before anything is written
    json_path = results_dir / f"{suite.name}.json"
    md_path = results_dir / f"{suite.name}.md"

    settings = [r.get("cell", {}).get("setting", {}) for r in records]
    metrics = [r.get("metrics", {}) for r in records]
    setting_cols = _first_seen(settings)
    metric_cols = list(suite.columns) if suite.columns is not None else _first_seen(metrics)
    header = ["method", *setting_cols, "shard", *metric_cols]
    rows = [
        [_fmt(r.get("cell", {}).get("method")), *(_fmt(s.get(k)) for k in setting_cols),
         _fmt(r.get("cell", {}).get("shard")), *(_fmt(m.get(k)) for k in metric_cols)]
        for r, s, m in zip(records, settings, metrics)
    ]
    fence = "```"
    while fence in command:
        fence += "`"
    lines = [f"# {suite.name}", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += ["Command:", "", fence, command, fence, "", f"Date: {date}", ""]
    lines.append("| " + " | ".join(_fmt(h) for h in header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]

    write_json_atomic(json_path, payload)
    _write_text_atomic(md_path, "\n".join(lines) + "\n")
    return json_path, md_path
