"""Benchmark suites (``onmanifold bench SUITE``), one module per paper plus the foundation suites.

Scale out with PyTorch's launcher: ``torchrun --nproc-per-node N -m onmanifold bench SUITE ...``
splits the cells over N processes sharing the run directory (gloo on CPU, NCCL on GPUs); process 0
writes the summary. Each cell is computed by one process from its own seeds, so the results equal
the single-process run's.

Every suite runs through the resumable :mod:`onmanifold_bench.runner`: finished cells are written
as JSON under ``runs/<suite>/cells`` and skipped on a rerun; the summary goes to
``docs/results/<suite>.json`` and ``.md`` with the exact command and the date. ``runs/`` is not
committed: in a fresh checkout, ``--import-results docs/results/<suite>.json`` seeds the run directory
with the summary's finished records (and its command history), so only new cells are computed.
"""

from __future__ import annotations

from typing import Callable

from .runner import Cell, Suite, import_records, run_suite, summarize

__all__ = ["Cell", "Suite", "run_suite", "summarize", "SUITES", "run_bench_cli"]


def _suites() -> dict[str, Callable[..., Suite]]:
    from . import asced, compose, dsg, foundation, tag

    return {"models": foundation.models_suite, "dsg": dsg.dsg_suite, "tag": tag.tag_suite, "asced": asced.asced_suite,
            "compose": compose.compose_suite}


SUITES = _suites


def _parse_conditions(items: list[str], flag: str) -> list[tuple[str, set[str]]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag}: expected KEY=V1,V2, got {item!r}")
        k, v = item.split("=", 1)
        out.append((k, set(v.split(","))))
    return out


def cell_selector(only: list[str], exclude: list[str]) -> Callable[[Cell], bool] | None:
    """A cell filter from ``--only``/``--exclude`` conditions (``method`` or a setting key; values compared as text)."""
    inc, exc = _parse_conditions(only, "--only"), _parse_conditions(exclude, "--exclude")
    if not inc and not exc:
        return None

    def value(cell: Cell, key: str) -> str | None:
        v = cell.method if key == "method" else cell.setting.get(key)
        return None if v is None else str(v)

    def keep(cell: Cell) -> bool:
        return all(value(cell, k) in vs for k, vs in inc) and not any(value(cell, k) in vs for k, vs in exc)

    return keep


def _distributed_init() -> tuple[int, int]:
    """``(rank, world_size)``: under ``torchrun`` (``WORLD_SIZE > 1``) join the process group (gloo on CPU, NCCL on GPUs)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        import datetime

        # the closing barrier waits for the slowest process's last cell, which can take hours (DDPM-1000 cells)
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo", timeout=datetime.timedelta(hours=48))
    return dist.get_rank(), dist.get_world_size()


def _command_history(run_dir: str, command: str, earlier: str = "") -> str:
    """Every command that has written cells into ``run_dir`` (``run_dir/commands.log``, in order), this one last.

    A suite is often run in parts (``--only``/``--exclude``); its results page lists all of them.
    ``earlier`` (one command per line, from an imported summary) goes before the logged ones.
    """
    from pathlib import Path

    from onmanifold.nets.checkpoint import write_text_atomic

    path = Path(run_dir) / "commands.log"
    lines = [ln for ln in (path.read_text().splitlines() if path.is_file() else []) if ln.strip()]
    lines = [ln for ln in earlier.splitlines() if ln.strip() and ln not in lines] + lines
    if command:
        if command in lines:
            lines.remove(command)
        lines.append(command)
    write_text_atomic(path, "\n".join(lines) + "\n")
    return "\n".join(lines)


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
    run_dir = args.run_dir or f"runs/{args.suite}" + ("-quick" if args.quick else "")
    suite = suites[args.suite](args.quick, run_dir)
    cell_filter = cell_selector(args.only, args.exclude)
    rank, world = _distributed_init()
    if args.import_results and rank == 0:
        written, kept, dropped, imported_commands = import_records(suite, run_dir, args.import_results)
        print(f"imported {written} finished cells from {args.import_results} into {run_dir}/cells ({kept} already there)")
        if dropped:
            print(f"not imported: {len(dropped)} records of cells this version of the suite does not have (they are recomputed "
                  f"if still wanted): " + ", ".join(dropped))
        _command_history(run_dir, "", imported_commands)  # the history is in the run dir before any cell runs
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the imported cells are in place before any process picks its cells
        command = f"torchrun --nproc-per-node {world} -m " + command  # record how the run was launched
    records = run_suite(suite, run_dir, progress=progress and rank == 0, shard_filter=cell_filter, rank=rank, world_size=world)
    if world > 1:
        dist.barrier()  # every process has written its cells
        records = run_suite(suite, run_dir, progress=False, shard_filter=lambda c: False)
        dist.destroy_process_group()
        if rank != 0:
            return 0
    command = _command_history(run_dir, command)
    results_dir = args.results_dir or (run_dir if args.quick else "docs/results")
    json_path, md_path = summarize(suite, records, results_dir, command)
    report = getattr(suite, "report", None)
    if report is not None:  # a curated results page (tables, figures, claims) beside the raw cell table
        md_path = report(records, results_dir, command, run_dir)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0
