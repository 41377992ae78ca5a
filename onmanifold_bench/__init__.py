"""Benchmark suites (``onmanifold bench SUITE``), one module per paper plus the foundation suites.

Every suite runs through the resumable :mod:`onmanifold_bench.runner`: finished cells are written
as JSON under ``runs/<suite>/cells`` and skipped on a rerun; the summary goes to
``docs/results/<suite>.json`` and ``.md`` (plus the suite's curated page) with the exact commands
and the date.

Committed results are never lost:

* ``runs/`` is not committed. When the run directory is new (no cell files) and the summary
  ``<results_dir>/<suite>.json`` exists, the run directory is first seeded with its finished records
  and command history (as ``--import-results`` does; ``--no-import`` skips it), so a fresh checkout
  only computes the cells the summary lacks.
* A run that would write a summary or page with fewer finished records than the existing summary
  (or without one of its cells) refuses before computing anything, with exit code 2: seed the run
  directory with ``--import-results``, or pass ``--force`` to overwrite.
* An ``--only`` or ``--exclude`` condition that matches no cell of the suite is an error.

Several processes may share one run directory (two shells, or ``torchrun --nproc-per-node N -m
onmanifold bench SUITE ...``, gloo on CPU, NCCL on GPUs): they claim cells instead of duplicating
them, and every command that wrote cells is appended to ``commands.log`` under a lock. Each cell is
computed by one process from its own seeds, so the results equal the single-process run's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from .runner import Cell, CellNotReady, MissingMetricError, Suite, finished_keys, import_records, run_suite, summarize, summary_loss

__all__ = ["Cell", "Suite", "run_suite", "summarize", "SUITES", "run_bench_cli", "cell_selector", "default_run_dir"]


def _suites() -> dict[str, Callable[..., Suite]]:
    from . import asced, asced_mosaic, compose, dsg, foundation, fronts, latent, speed, tag

    return {"models": foundation.models_suite, "dsg": dsg.dsg_suite, "tag": tag.tag_suite, "asced": asced.asced_suite,
            "asced-mosaic": asced_mosaic.asced_mosaic_suite,
            "compose": compose.compose_suite, "latent": latent.latent_suite, "fronts": fronts.fronts_suite,
            "speed": speed.speed_suite}


SUITES = _suites


def default_run_dir(suite: str, quick: bool = False) -> str:
    """``runs/<suite>`` (``runs/<suite>-quick`` with ``--quick``): where ``onmanifold bench`` keeps its cells."""
    return f"runs/{suite}" + ("-quick" if quick else "")


def _parse_conditions(items: list[str], flag: str) -> list[tuple[str, set[str]]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag}: expected KEY=V1,V2, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k, set(v.split(","))))
    return out


def _value(cell: Cell, key: str) -> str | None:
    v = cell.method if key == "method" else cell.setting.get(key)
    return None if v is None else str(v)


def cell_selector(only: list[str], exclude: list[str], cells: list[Cell] | None = None) -> Callable[[Cell], bool] | None:
    """A cell filter from ``--only``/``--exclude`` conditions (``method`` or a setting key; values compared as text).

    With ``cells`` (the suite's), a condition that matches none of them, or ``--only`` conditions that
    together match none, raise :class:`ValueError` naming the option: a filter is never silently empty.
    """
    inc, exc = _parse_conditions(only, "--only"), _parse_conditions(exclude, "--exclude")
    if not inc and not exc:
        return None

    def keep(cell: Cell) -> bool:
        return all(_value(cell, k) in vs for k, vs in inc) and not any(_value(cell, k) in vs for k, vs in exc)

    if cells is not None:
        for flag, conditions in (("--only", inc), ("--exclude", exc)):
            for (k, vs), text in zip(conditions, only if flag == "--only" else exclude):
                if not any(_value(c, k) in vs for c in cells):
                    known = sorted({v for c in cells if (v := _value(c, k)) is not None})
                    hint = (f"{k} takes {', '.join(known[:12])}" + (", ..." if len(known) > 12 else "")) if known else \
                        f"no cell has a setting {k!r} (keys: method, {', '.join(sorted({s for c in cells for s in c.setting}))})"
                    raise ValueError(f"{flag}: {text!r} matches no cell of this suite ({hint})")
        if inc and not any(all(_value(c, k) in vs for k, vs in inc) for c in cells):
            raise ValueError(f"--only: {' and '.join(repr(t) for t in only)} together match no cell of this suite")
    return keep


def _distributed_init() -> tuple[int, int, "torch.device"]:
    """``(rank, world_size, device)``: under ``torchrun`` (``WORLD_SIZE > 1``) join the process group (gloo on CPU, NCCL on
    GPUs) with this process on its own device, ``cuda:LOCAL_RANK`` on a node with GPUs
    (:func:`onmanifold.device.device_for_local_rank`); one process: the CPU."""
    import os

    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device("cpu")
    import torch.distributed as dist

    from onmanifold.device import device_for_local_rank, local_rank_of

    device = device_for_local_rank(local_rank_of(os.environ), torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives and every bare "cuda" of this process use its own GPU
    if not dist.is_initialized():
        import datetime

        # the closing barrier waits for the slowest process's last cell, which can take hours (DDPM-1000 cells)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=48),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return dist.get_rank(), dist.get_world_size(), device


def _command_history(run_dir: str, command: str, earlier: str = "") -> str:
    """Every command that has written cells into ``run_dir`` (``run_dir/commands.log``, in order), this one last.

    A suite is often run in parts (``--only``/``--exclude``); its results page lists all of them.
    ``earlier`` (one command per line, from an imported summary) goes before the logged ones. The
    read-modify-write holds the run directory's lock, so concurrent processes never lose a line.
    """
    from onmanifold.nets.checkpoint import write_text_atomic

    from .locks import run_dir_lock

    path = Path(run_dir) / "commands.log"
    with run_dir_lock(run_dir):
        lines = [ln for ln in (path.read_text().splitlines() if path.is_file() else []) if ln.strip()]
        lines = [ln for ln in earlier.splitlines() if ln.strip() and ln not in lines] + lines
        if command:
            if command in lines:
                lines.remove(command)
            lines.append(command)
        write_text_atomic(path, "\n".join(lines) + "\n")
    return "\n".join(lines)


def _is_new_run_dir(run_dir: str) -> bool:
    cells = Path(run_dir) / "cells"
    return not (cells.is_dir() and any(p.suffix == ".json" and not p.name.startswith(".") for p in cells.iterdir()))


def _import(suite: Suite, run_dir: str, source: str | Path, why: str) -> None:
    written, kept, dropped, imported_commands = import_records(suite, run_dir, source)
    print(f"{why}imported {written} finished cells from {source} into {run_dir}/cells ({kept} already there)")
    if dropped:
        print(f"not imported: {len(dropped)} records of cells this version of the suite does not have (they are recomputed "
              f"if still wanted): " + ", ".join(dropped))
    _command_history(run_dir, "", imported_commands)  # the history is in the run dir before any cell runs


def _strength_grids(args) -> dict:
    """``--zetas`` / ``--rates`` as the fronts suite's grids; refused (naming the flag) for another suite or when not numbers
    (the suite checks the values: :func:`onmanifold_bench.fronts.check_strength_grid`)."""
    out = {}
    for flag, key in (("--zetas", "zetas"), ("--rates", "rates")):
        text = getattr(args, key, None)
        if text is None:
            continue
        if args.suite != "fronts":
            raise ValueError(f"{flag}: only the fronts suite takes a strength grid (suite {args.suite!r})")
        try:
            out[key] = tuple(float(v) for v in text.split(",")) if text.strip() else ()
        except ValueError:
            raise ValueError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    return out


def run_bench_cli(args, progress: bool, command: str) -> int:
    """Entry point of ``onmanifold bench``."""
    suites = _suites()
    if args.list or not args.suite:
        for name, factory in suites.items():
            doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
            print(f"{name:12s} {doc}")
        return 0
    if args.suite not in suites:
        raise SystemExit(f"suite: expected one of {', '.join(suites)}, got {args.suite!r}")
    if getattr(args, "measure_spread", False):
        from .precision import measure_suite_spread

        if args.only or args.exclude or args.import_results or args.quick:
            raise ValueError("--measure-spread: runs the suite's fixed representative cells; it takes no --only, --exclude, --import-results or --quick")
        measure_suite_spread(args.suite, command=command)
        print("wrote docs/results/precision.json and precision.md")
        return 0
    force, no_import = bool(getattr(args, "force", False)), bool(getattr(args, "no_import", False))
    if args.import_results and no_import:
        raise ValueError("--no-import: cannot be combined with --import-results")
    run_dir = args.run_dir or default_run_dir(args.suite, args.quick)
    results_dir = Path(args.results_dir or (run_dir if args.quick else "docs/results"))
    suite = suites[args.suite](args.quick, run_dir, **_strength_grids(args))
    cell_filter = cell_selector(args.only, args.exclude, suite.cells)
    committed = results_dir / f"{suite.name}.json"
    rank, world, device = _distributed_init()
    if rank == 0:
        if args.import_results:
            _import(suite, run_dir, args.import_results, "")
        elif not no_import and committed.is_file() and _is_new_run_dir(run_dir):
            _import(suite, run_dir, committed, f"{run_dir} is new: ")
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the imported cells are in place before any process picks its cells
        command = f"torchrun --nproc-per-node {world} -m " + command  # record how the run was launched
    if not force:  # refuse before any work: what this run would leave must hold everything the summary holds
        will_have = finished_keys(suite, run_dir) | {c.key for c in suite.cells if cell_filter is None or cell_filter(c)}
        loss = summary_loss(suite, will_have, committed)
        if loss:
            raise SystemExit(f"bench: {loss}: seed {run_dir} with --import-results {committed}, or pass --force to overwrite it")
    try:
        records = run_suite(suite, run_dir, progress=progress and rank == 0, shard_filter=cell_filter, rank=rank, world_size=world,
                            device=device)
    except (CellNotReady, MissingMetricError) as e:
        raise SystemExit(f"bench {suite.name}: {e}") from e
    if world > 1:
        dist.barrier()  # every process has written its cells
        records = run_suite(suite, run_dir, progress=False, shard_filter=lambda c: False)
        dist.destroy_process_group()
        if rank != 0:
            return 0
    if not force:
        loss = summary_loss(suite, {Cell.from_description(r["cell"]).key for r in records}, committed)
        if loss:  # a cell that was expected to finish did not (it failed, or another process still runs it)
            raise SystemExit(f"bench: {loss}; nothing was written: rerun to finish the missing cells, or pass --force to overwrite it")
    command = _command_history(run_dir, command)
    json_path, md_path = summarize(suite, records, results_dir, command)
    if suite.report is not None:  # a curated results page (tables, figures, claims) beside the raw cell table
        try:
            md_path = suite.report(records, results_dir, command, Path(run_dir))
        except MissingMetricError as e:
            raise SystemExit(f"bench {suite.name} page: {e}") from e
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    sys.stdout.flush()
    return 0
