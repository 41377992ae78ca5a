"""Resumable, shareable, self-checking runner shared by every benchmark suite.

A :class:`Suite` is a named list of :class:`Cell` (method x setting x shard x seeds), a function
``run_cell(cell) -> dict`` of JSON-able metrics and, optionally, a ``report`` writer for its results
page. :func:`run_suite` runs the cells in order and writes one record per finished cell to
``<run_dir>/cells/<cell.key>.json`` (atomically), so an interrupted run (Ctrl-C, SIGKILL, power loss)
resumes where it stopped: finished cells are loaded, not rerun; at most the cell in flight is lost.
:func:`summarize` writes ``<results_dir>/<suite>.json`` and a markdown table ``<results_dir>/<suite>.md``
carrying the exact command and date.

**A record** is ``{"cell", "metrics", "seconds", "finished_at", "inputs", "checksum"}`` (plus ``"rank"``
under ``torchrun``). It is used only when it passes its schema, its ``checksum`` (SHA-256 of its
canonical JSON without the checksum) matches, it describes its own cell, and its inputs are still
what they were: a cell file that is corrupt, incomplete, hand-edited or another cell's is recomputed
with a :class:`RuntimeWarning`.

**Inputs.** A cell that reads other cells' results (a validation sweep's choice) does so through
:func:`finished_records`; the runner records each such read in the record's ``inputs``: the query
(method and setting match) and the fingerprint (hash of cell and metrics) of every record it
returned. A record is stale when one of those records changed, or when the cells its query matches
are no longer the same (a widened sweep): so a cell's identity includes the identities of the cells
it depends on, and changing an upstream cell recomputes the downstream ones (with a warning). Keys
(file names) stay those of the cell's own description, so committed summaries keep importing.
Records written before inputs were recorded (``inputs`` and ``checksum`` absent: every committed
summary up to this version) are *legacy*: they are used as they are, their inputs unknown, and gain
a checksum (with ``"inputs": null``) when imported or loaded; a legacy record is recomputed only when
its own cell changes.

**Sharing a run directory.** Several processes may run the same suite on one run directory (two
shells, or ``torchrun``): before computing a cell a process claims it (:mod:`onmanifold_bench.locks`:
an ``O_EXCL`` claim file with its pid, taken under a directory lock; a dead holder's claim is taken
over), and a cell claimed by a live process is left to it and waited for. Every cell is computed
once, from its own seeds, so the results equal those of a single-process run.

Results are strict JSON: a NaN or infinite metric raises :class:`ValueError` naming the cell and the
metric instead of being written. Reading a metric that a record does not have raises
:class:`MissingMetricError` naming the cell and the metric. Left-over temporary files
(``.<key>.json.*.tmp``) of a killed writer are ignored, never read.
"""

from __future__ import annotations

import contextvars
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
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm

from onmanifold.nets.checkpoint import write_json_atomic, write_text_atomic

from .locks import claim_cell, claim_holder, holder_alive
from .tables import MetricFormat, markdown_table

__all__ = [
    "Cell",
    "Suite",
    "ReportWriter",
    "CellNotReady",
    "MissingMetricError",
    "run_suite",
    "cell_device",
    "summarize",
    "import_records",
    "finished_records",
    "finished_keys",
    "select_records",
    "first_metrics",
    "summary_loss",
    "record_checksum",
]

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


def _sha256(obj: Any) -> str:
    return hashlib.sha256(_dumps_canonical(obj).encode("ascii")).hexdigest()


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
        object.__setattr__(self, "_json", _dumps_canonical(self.describe()))

    @classmethod
    def from_description(cls, d: Any) -> "Cell":
        """The cell a record's ``"cell"`` entry describes; :class:`ValueError` if it describes none."""
        try:
            return cls(d["method"], d["setting"], d["shard"], tuple(d["seeds"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a cell description: {d!r}") from e

    def describe(self) -> dict:
        """The JSON description stored in each record under ``"cell"``."""
        return {"method": self.method, "setting": self.setting, "shard": self.shard, "seeds": list(self.seeds)}

    def _canonical_json(self) -> str:
        return self._json  # type: ignore[attr-defined]

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


ReportWriter = Callable[[list, Path, str, Path], Path]
"""``report(records, results_dir, command, run_dir) -> path of the page``: a suite's curated results page."""


@dataclass
class Suite:
    """A named benchmark: its cells (run in order), ``run_cell(cell) -> dict`` of metrics, and its page.

    ``report``, when given, writes the suite's curated results page (tables, figures, the paper's
    claims) from the finished records, beside the runner's raw cell table; see :data:`ReportWriter`.
    """

    name: str
    cells: list[Cell]
    run_cell: Callable[[Cell], dict]
    description: str = ""
    columns: list[str] | None = None
    report: ReportWriter | None = None

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
        if self.report is not None and not callable(self.report):
            raise TypeError(f"suite {self.name!r}: report must be callable (records, results_dir, command, run_dir) -> Path")


# --------------------------------------------------------------------------------------------- errors


class CellNotReady(RuntimeError):
    """A cell needs the result of other cells that have not finished (the runner retries it later).

    ``missing`` holds the keys of the cells it waits for.
    """

    def __init__(self, message: str, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class MissingMetricError(KeyError):
    """A record has no metric of that name (e.g. it was written by an older version of its suite)."""

    def __init__(self, cell_key: str, metric: Any, available: Sequence[str]) -> None:
        super().__init__(metric)
        self.cell_key, self.metric, self.available = cell_key, metric, list(available)
        self.reading_cell: str | None = None

    def __str__(self) -> str:
        reader = f" (read while running cell {self.reading_cell})" if self.reading_cell else ""
        return (f"cell {self.cell_key} has no metric {self.metric!r}{reader}; its record has: {', '.join(self.available) or 'none'}. "
                f"It was probably written by another version of the suite: delete its cell file to recompute it")


class Metrics(dict):
    """The metrics of one record: a plain dict whose missing keys raise :class:`MissingMetricError` naming the cell."""

    __slots__ = ("cell_key",)

    def __init__(self, values: dict, cell_key: str = "?") -> None:
        super().__init__(values)
        self.cell_key = cell_key

    def __missing__(self, metric: Any) -> Any:
        raise MissingMetricError(self.cell_key, metric, list(self))

    def __reduce__(self):  # copies and pickles keep the cell's name
        return (Metrics, (dict(self), self.cell_key))


# --------------------------------------------------------------------------------------------- records

_REQUIRED = ("cell", "metrics", "seconds", "finished_at")
_OPTIONAL = ("inputs", "checksum", "rank")


def record_checksum(record: dict) -> str:
    """``"sha256:<hex>"`` of the canonical JSON of ``record`` without its ``"checksum"`` entry."""
    return "sha256:" + _sha256({k: v for k, v in record.items() if k != "checksum"})


def _fingerprint(record: dict) -> str:
    """What a downstream cell depends on: a hash of the record's cell and metrics (not its timing)."""
    return _sha256({"cell": record["cell"], "metrics": record["metrics"]})[:16]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _inputs_problem(inputs: Any) -> str | None:
    if inputs is None:
        return None
    if not isinstance(inputs, list):
        return "its inputs are not a list"
    for q in inputs:
        if not (isinstance(q, dict) and isinstance(q.get("method"), str) and isinstance(q.get("match"), dict)
                and isinstance(q.get("cells"), dict) and all(isinstance(v, str) for v in q["cells"].values())
                and set(q) <= {"method", "match", "cells", "listed"}):
            return f"its input entry {q!r} is malformed"
    return None


def _record_problem(rec: Any) -> tuple[str, str] | None:
    """Why ``rec`` is not a usable finished record, as ``(kind, text)`` (kind 'checksum' or 'schema'); None if it is."""
    if not isinstance(rec, dict):
        return "schema", "is not a JSON object"
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        return "schema", f"is incomplete (no {', '.join(missing)})"
    unknown = sorted(set(rec) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        return "schema", f"has unknown fields {unknown}"
    try:
        Cell.from_description(rec["cell"])
    except ValueError:
        return "schema", f"describes no valid cell ({rec['cell']!r})"
    if not isinstance(rec["metrics"], dict):
        return "schema", "has metrics that are not a JSON object"
    if not _is_number(rec["seconds"]) or rec["seconds"] < 0:
        return "schema", f"has seconds {rec['seconds']!r} (expected a number >= 0)"
    if not isinstance(rec["finished_at"], str):
        return "schema", "has a finished_at that is not a string"
    if "rank" in rec and (isinstance(rec["rank"], bool) or not isinstance(rec["rank"], int)):
        return "schema", "has a rank that is not an integer"
    legacy = "checksum" not in rec and "inputs" not in rec
    if legacy:
        return None
    if "checksum" not in rec:
        return "schema", "is incomplete (no checksum)"
    if "inputs" not in rec:
        return "schema", "is incomplete (no inputs)"
    bad = _inputs_problem(rec["inputs"])
    if bad:
        return "schema", bad
    if rec["checksum"] != record_checksum(rec):
        return "checksum", "does not match its checksum (edited by hand, or written incompletely)"
    return None


def _is_finished_record(rec: Any) -> bool:
    """Whether ``rec`` passes the record schema and checksum (see :func:`_record_problem`)."""
    return _record_problem(rec) is None


def _migrated(rec: dict) -> dict:
    """A legacy record (no inputs, no checksum) with ``"inputs": null`` and its checksum added; others unchanged."""
    if "checksum" in rec or "inputs" in rec:
        return rec
    out = {k: v for k, v in rec.items()}
    out["inputs"] = None
    out["checksum"] = record_checksum(out)
    return out


# parsed cell files, keyed by path and re-read when the file changes: {path: (stat signature, record, problem)}
_PARSED: dict[Path, tuple[tuple, dict | None, str | None]] = {}
_WARNED: set[tuple] = set()


def _warn_once(key: tuple, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _copy(rec: dict | None, key: str) -> dict | None:
    """A caller's own copy of a cached record, its metrics a :class:`Metrics` naming the cell."""
    if rec is None:
        return None
    out = dict(rec)
    out["metrics"] = Metrics(rec["metrics"], key)
    return out


class _RunDirectory:
    """The cell files of one run directory, read against one suite's cells (validity, inputs, claims)."""

    def __init__(self, run_dir: str | os.PathLike, cells: Sequence[Cell]) -> None:
        self.path = Path(run_dir)
        self.cells_dir = self.path / "cells"
        self.cells = list(cells)
        self.keys = [c.key for c in self.cells]
        self.by_key = dict(zip(self.keys, self.cells))

    def file(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.key}.json"

    def _read(self, cell: Cell) -> tuple[dict | None, str | None, tuple]:
        """``(record, problem, stat signature)`` of the cell's file, checked on its own (schema, checksum, cell)."""
        path = self.file(cell)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None, None, ()
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        hit = _PARSED.get(path)
        if hit is not None and hit[0] == sig:
            return _copy(hit[1], cell.key), hit[2], sig
        problem = None
        try:
            rec = _loads_strict(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError, NaN constants
            rec, problem = None, f"is corrupt ({e})"
        if problem is None:
            found = _record_problem(rec)
            if found is not None:
                problem = found[1]
            elif _dumps_canonical(rec["cell"]) != cell._canonical_json():
                problem = f"describes another cell ({rec['cell']!r})"
        if problem is not None:
            rec = None
        _PARSED[path] = (sig, rec, problem)
        return _copy(rec, cell.key), problem, sig

    def valid(self, cell: Cell, _memo: dict | None = None, _active: set | None = None) -> dict | None:
        """The cell's record if it is usable now (own checks, and every input unchanged), else None (warns when it is bad)."""
        memo = {} if _memo is None else _memo
        active = set() if _active is None else _active
        key = cell.key
        if key in memo:
            return memo[key]
        if key in active:  # a cycle of inputs can only come from an edited file
            return None
        active.add(key)
        rec, problem, sig = self._read(cell)
        if problem is not None:
            _warn_once((str(self.file(cell)), sig, problem), f"cell file {self.file(cell)} {problem}; recomputing cell {key}")
        elif rec is not None and rec.get("inputs"):
            stale = self._stale(rec, memo, active)
            if stale is not None:
                if stale:
                    _warn_once((str(self.file(cell)), sig, stale), f"cell {key}: {stale}; recomputing it")
                rec = None
        active.discard(key)
        memo[key] = rec
        return rec

    def _stale(self, rec: dict, memo: dict, active: set) -> str | None:
        """None if every input of ``rec`` is unchanged; else why not ('' when an input is merely not finished now)."""
        waiting = False
        for q in rec["inputs"]:
            recorded = q["cells"]
            if not q.get("listed"):
                now = [k for k, c in zip(self.keys, self.cells) if _matches(c.method, c.setting, q["method"], q["match"])]
                if set(now) != set(recorded):
                    added, removed = sorted(set(now) - set(recorded)), sorted(set(recorded) - set(now))
                    return (f"the cells its input ({_query_text(q['method'], q['match'])}) matches changed since it was computed"
                            + (f" (new: {', '.join(added)})" if added else "") + (f" (gone: {', '.join(removed)})" if removed else ""))
            for k, fp in recorded.items():
                upstream = self.by_key.get(k)
                if upstream is None:
                    return f"its input cell {k} is no longer part of the suite"
                urec = self.valid(upstream, memo, active)
                if urec is None:
                    waiting = True
                elif _fingerprint(urec) != fp:
                    return f"its input cell {k} changed since it was computed"
        return "" if waiting else None

    def write(self, cell: Cell, record: dict) -> None:
        record = dict(record)
        record.pop("checksum", None)
        record["checksum"] = record_checksum(record)
        write_json_atomic(self.file(cell), record)

    def claimed_by_live_process(self, key: str) -> bool:
        info = claim_holder(self.path / "claims" / f"{key}.json")
        return info is not None and info.get("pid") != os.getpid() and holder_alive(info)


def _matches(method: str, setting: dict, cell_method: str, match: dict) -> bool:
    return method == cell_method and all(setting.get(k) == v for k, v in match.items())


def _query_text(method: str, match: dict) -> str:
    return ", ".join([f"method={method}"] + [f"{k}={json.dumps(v)}" for k, v in match.items()])


# --------------------------------------------------------------------------------------------- reading other cells


@dataclass
class _Trace:
    store: _RunDirectory
    inputs: list = field(default_factory=list)


_TRACE: contextvars.ContextVar[_Trace | None] = contextvars.ContextVar("onmanifold_bench_cell_inputs", default=None)
_DEVICE: contextvars.ContextVar[Any] = contextvars.ContextVar("onmanifold_bench_cell_device", default=None)


def cell_device():
    """The device of the cell being computed (``run_suite``'s ``device``: ``cuda:LOCAL_RANK`` under ``torchrun`` on GPUs,
    else the CPU). A suite that places its networks there (``model.to(cell_device())``) samples there: the sampling loop
    follows the model's device, with the same samples as on the CPU (the generators stay on the CPU)."""
    import torch

    d = _DEVICE.get()
    return torch.device("cpu") if d is None else d


def finished_records(cells: Sequence[Cell], run_dir: str | os.PathLike, cell_method: str, /, **match: Any) -> list[dict]:
    """The finished records of the cells of ``cell_method`` whose settings match ``match`` (suite order).

    Raises :class:`CellNotReady` if one of them has not finished: suites call this to read a
    validation choice, and the runner then retries the asking cell after the others. While the
    runner computes a cell, each call is recorded in that cell's ``inputs`` (see the module docstring).
    """
    match = _canonical(match, "finished_records match")
    trace = _TRACE.get()
    same_dir = trace is not None and os.path.abspath(trace.store.path) == os.path.abspath(run_dir)
    store = trace.store if same_dir else _RunDirectory(run_dir, cells)
    out, missing, fingerprints = [], [], {}
    for c in cells:
        if _matches(c.method, c.setting, cell_method, match):
            rec = store.valid(c)
            if rec is None:
                missing.append(c.key)
            else:
                out.append(rec)
                fingerprints[c.key] = _fingerprint(rec)
    if missing:
        raise CellNotReady(f"cell {missing[0]} must run before the cells that use its result", missing)
    if same_dir:
        entry: dict = {"method": cell_method, "match": match, "cells": fingerprints}
        if [c.key for c in cells] != store.keys:
            entry["listed"] = True  # a hand-picked list of cells, not a query over the suite
        if entry not in trace.inputs:
            trace.inputs.append(entry)
    return out


def select_records(records: Sequence[dict], cell_method: str, /, **match: Any) -> list[dict]:
    """The records of ``cell_method`` whose settings match ``match`` (results-page helper)."""
    return [r for r in records if _matches(r["cell"]["method"], r["cell"]["setting"], cell_method, match)]


def first_metrics(records: Sequence[dict], cell_method: str, /, **match: Any) -> dict | None:
    """The metrics of the first record :func:`select_records` finds, or None."""
    rs = select_records(records, cell_method, **match)
    return rs[0]["metrics"] if rs else None


# --------------------------------------------------------------------------------------------- running


def _compute(suite: Suite, cell: Cell, store: _RunDirectory) -> dict:
    trace = _Trace(store)
    token = _TRACE.set(trace)
    t0 = time.perf_counter()
    try:
        metrics = suite.run_cell(cell)
    except MissingMetricError as e:
        e.reading_cell = cell.key
        raise
    except CellNotReady:
        raise
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"while running cell {cell.key} of suite {suite.name!r}")
        raise
    finally:
        _TRACE.reset(token)
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
        "inputs": trace.inputs,
    }
    # exactly what a later run will load back
    return _loads_strict(json.dumps(record, allow_nan=False))


def _not_ready_message(blocked: dict[str, CellNotReady], selected: set[str]) -> str:
    """One line naming the cells that wait and the unfinished cells they wait for."""
    lines = []
    for reader, err in blocked.items():
        outside = [k for k in err.missing if k not in selected]
        if outside:
            lines.append(f"cell {reader} needs cell {outside[0]}" + (f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""))
    if not lines:
        return "cells wait for each other's results: " + "; ".join(f"{r} needs {e.missing[0]}" for r, e in blocked.items())
    return ("; ".join(lines[:3]) + (f"; and {len(lines) - 3} more" if len(lines) > 3 else "")
            + ": the needed cells have not finished and this run does not compute them (--only/--exclude left them out); "
            "select them too, or run them first")


def run_suite(
    suite: Suite,
    run_dir: str | os.PathLike,
    progress: bool = True,
    shard_filter: Callable[[Cell], bool] | None = None,
    rank: int = 0,
    world_size: int = 1,
    wait_seconds: float = 6 * 3600.0,
    poll_seconds: float = 0.5,
    device: Any = None,
) -> list[dict]:
    """Run (or resume) ``suite``; one record per cell in ``<run_dir>/cells/<key>.json``.

    Cells with a usable record (module docstring) are loaded, not rerun; a corrupt, hand-edited,
    foreign or stale file is recomputed with a warning. With ``shard_filter``, only cells for which it
    is true are run; the others are loaded if present, else omitted. Returns the usable records in
    suite order, each ``{"cell", "metrics", "seconds", "finished_at", "inputs", "checksum"}``.

    Processes sharing ``run_dir`` split the work by claiming cells (module docstring); under
    ``torchrun`` (``world_size > 1``) process ``rank`` takes the cells ``i`` with
    ``i % world_size == rank``. A cell whose inputs are not finished (:class:`CellNotReady`) is
    retried after the others; a cell claimed by another live process is waited for (polling every
    ``poll_seconds``, up to ``wait_seconds`` without progress). When nothing can progress because the
    needed cells are not computed by any process, :class:`CellNotReady` names them.

    ``device`` (default: the CPU) is this process's device, what :func:`cell_device` tells the cells it computes.
    """
    device_token = _DEVICE.set(device)
    try:
        return _run_suite(suite, run_dir, progress, shard_filter, rank, world_size, wait_seconds, poll_seconds)
    finally:
        _DEVICE.reset(device_token)


def _run_suite(suite: Suite, run_dir: str | os.PathLike, progress: bool, shard_filter: Callable[[Cell], bool] | None, rank: int,
               world_size: int, wait_seconds: float, poll_seconds: float) -> list[dict]:
    store = _RunDirectory(run_dir, suite.cells)
    store.cells_dir.mkdir(parents=True, exist_ok=True)
    selected = [c for i, c in enumerate(suite.cells) if i % world_size == rank and (shard_filter is None or shard_filter(c))]
    selected_keys = {c.key for c in suite.cells if shard_filter is None or shard_filter(c)}  # by any process
    selected_here = {c.key for c in selected}
    todo = []
    for cell in suite.cells:
        rec = store.valid(cell)
        if rec is None:
            if cell.key in selected_here:
                todo.append(cell)
        elif "checksum" not in rec and rank == 0:  # a legacy record: protect it from now on
            write_json_atomic(store.file(cell), _migrated({k: (dict(v) if k == "metrics" else v) for k, v in rec.items()}))
    bar = tqdm(total=len(todo), desc=suite.name, unit="cell", disable=not progress)
    ran = 0
    waited_since: float | None = None
    try:
        while todo:
            blocked: dict[str, CellNotReady] = {}
            busy: list[str] = []
            progressed = False
            for cell in todo:
                if store.valid(cell) is not None:  # written meanwhile (another process), or its inputs are back
                    progressed = True
                    bar.update(1)
                    continue
                claim = claim_cell(store.path, cell.key)
                if claim is None:  # a live process computes it
                    busy.append(cell.key)
                    continue
                try:
                    if store.valid(cell) is not None:  # its holder finished just before we claimed it
                        progressed = True
                        bar.update(1)
                        continue
                    bar.set_description(f"{suite.name}: {cell.method}")
                    try:
                        rec = _compute(suite, cell, store)
                    except CellNotReady as e:
                        blocked[cell.key] = e
                        continue
                    if world_size > 1:
                        rec["rank"] = rank  # which process computed it (scale-out runs)
                    store.write(cell, rec)
                finally:
                    claim.release()
                ran += 1
                progressed = True
                bar.set_postfix(ran=ran, refresh=False)
                bar.update(1)
            todo = [c for c in todo if c.key in blocked or c.key in busy]
            if not todo:
                break
            if progressed:
                waited_since = None
                continue
            # nothing moved this round: can anyone still produce what the blocked cells need?
            needed = {k for e in blocked.values() for k in e.missing}
            others = bool(busy) or any(store.claimed_by_live_process(k) for k in needed)
            if blocked and not others and (world_size == 1 or not needed <= selected_keys):
                raise CellNotReady(_not_ready_message(blocked, selected_here if world_size == 1 else selected_keys),
                                   sorted(needed))
            waited_since = waited_since or time.monotonic()
            if time.monotonic() - waited_since > wait_seconds:
                raise CellNotReady(f"rank {rank}: waited {wait_seconds:.0f} s for other processes to finish "
                                   f"{', '.join(sorted(set(busy) | needed)[:3])}", sorted(needed))
            time.sleep(poll_seconds)
    finally:
        bar.close()
    records = []
    memo: dict = {}
    for cell in suite.cells:
        rec = store.valid(cell, memo)
        if rec is not None:
            records.append(rec)
    return records


def finished_keys(suite: Suite, run_dir: str | os.PathLike) -> set[str]:
    """The keys of the cells of ``suite`` with a usable record in ``run_dir`` now."""
    store = _RunDirectory(run_dir, suite.cells)
    memo: dict = {}
    return {c.key for c in suite.cells if store.valid(c, memo) is not None}


def import_records(suite: Suite, run_dir: str | os.PathLike, results_json: str | os.PathLike) -> tuple[int, int, list[str], str]:
    """Seed ``<run_dir>/cells`` from a committed summary ``<results_dir>/<suite>.json``.

    Returns ``(written, kept, dropped, command)``. A run directory is scratch space (``runs/`` is not
    committed), but the summary JSON holds every finished record verbatim. Importing it lets a later
    session add cells to a suite without recomputing the finished ones: each record whose cell
    belongs to ``suite`` and has no usable cell file yet is written as that cell's file (``written``);
    cells that already have one keep it (``kept``). Records of cells the suite no longer has (its
    definition changed since, e.g. a widened sweep) are not imported: their keys are ``dropped``, and
    those cells, if still wanted under their new identity, are recomputed. A record whose checksum does
    not match its content is not imported either (a :class:`RuntimeWarning` names it; it is recomputed).
    Legacy records (no checksum) are imported with ``"inputs": null`` and a checksum added. ``command``
    is the summary's command history, for the caller to carry over. Sample artifacts (``.pt`` files)
    are not in the summary; reports must cope with their absence.

    Raises :class:`ValueError` naming ``results_json`` if it is not this suite's summary or a record
    is not a finished cell record.
    """
    path = Path(results_json)
    payload = _read_summary(path, "results_json")
    if payload.get("suite") != suite.name:
        raise ValueError(f"results_json: {path} is the summary of suite {payload.get('suite')!r}, expected {suite.name!r}")
    parsed = []  # every record is checked before any file is written
    for i, rec in enumerate(payload["records"]):
        problem = _record_problem(rec)
        if problem is not None and problem[0] == "checksum":
            warnings.warn(f"results_json: record {i} of {path} {problem[1]}; not imported, its cell is recomputed",
                          RuntimeWarning, stacklevel=2)
            continue
        if problem is not None:
            raise ValueError(f"results_json: record {i} of {path} is not a finished cell record (it {problem[1]})")
        parsed.append((i, rec, Cell.from_description(rec["cell"])))
    store = _RunDirectory(run_dir, suite.cells)
    store.cells_dir.mkdir(parents=True, exist_ok=True)
    written = kept = 0
    dropped: list[str] = []
    for i, rec, cell in parsed:
        if cell.key not in store.by_key:
            dropped.append(cell.key)
            continue
        if store.valid(cell) is not None:
            kept += 1
            continue
        write_json_atomic(store.file(cell), _migrated(_canonical(rec, f"record {i} of {path}")))
        written += 1
    command = payload.get("command")
    return written, kept, dropped, command if isinstance(command, str) else ""


def _read_summary(path: Path, option: str) -> dict:
    try:
        payload = _loads_strict(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{option}: cannot read {path} as strict JSON ({e})") from e
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise ValueError(f"{option}: {path} is not a suite summary (expected an object with a 'records' list)")
    return payload


def summary_loss(suite: Suite, keys_after: Iterable[str], results_json: str | os.PathLike) -> str | None:
    """Why writing a summary of the records ``keys_after`` over ``results_json`` would lose finished results, or None.

    It would when it holds fewer records than ``results_json`` does, or lacks a record of a cell
    that ``results_json`` holds and the suite still has. An unreadable ``results_json`` counts as a loss too.
    """
    path = Path(results_json)
    if not path.is_file():
        return None
    try:
        payload = _read_summary(path, "results")
    except ValueError as e:
        return f"{e}; it would be overwritten"
    before = []
    for rec in payload["records"]:
        try:
            before.append(Cell.from_description(rec["cell"]).key if isinstance(rec, dict) else None)
        except (ValueError, KeyError):
            before.append(None)
    after = set(keys_after)
    suite_keys = {c.key for c in suite.cells}
    lost = [k for k in before if k is not None and k in suite_keys and k not in after]
    if len(after) >= len(before) and not lost:
        return None
    return (f"{path} holds {len(before)} finished records and this run would leave {len(after)}"
            + (f" ({len(lost)} of its cells are neither finished in the run directory nor computed by this run)" if lost else ""))


# --------------------------------------------------------------------------------------------- summary


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
    setting key, shard, then ``suite.columns`` or every metric key in first-seen order; setting floats
    with 4 significant digits (:func:`onmanifold_bench.tables.format_value`), metrics with at most that and
    no more decimals than their measured rounding spread supports (:class:`onmanifold_bench.tables.MetricFormat`,
    whose note on where the digits come from ends the page).
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
    fmt = MetricFormat(suite.name)  # metrics to the decimals their measured rounding spread supports

    def metric_text(value: Any, metric: str, method: str | None) -> Any:
        return fmt(value, metric, method, digits=4) if isinstance(value, float) else value

    rows = [
        [r.get("cell", {}).get("method"), *(s.get(k) for k in setting_cols), r.get("cell", {}).get("shard"),
         *(metric_text(m.get(k), k, r.get("cell", {}).get("method")) for k in metric_cols)]
        for r, s, m in zip(records, settings, metrics)
    ]
    fence = "```"
    while fence in command:
        fence += "`"
    lines = [f"# {suite.name}", ""]
    if suite.description:
        lines += [suite.description, ""]
    lines += ["Command:", "", fence, command, fence, "", f"Date: {date}", ""]
    lines.append(markdown_table(header, rows, digits=4, missing=""))
    lines += ["", fmt.note()]

    write_json_atomic(json_path, payload)
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    return json_path, md_path
