"""Benchmark suites (``onmanifold bench SUITE``), one module per paper plus the foundation suites.

Every suite runs through the resumable :mod:`onmanifold.bench.runner`: finished cells are written
as JSON under ``runs/<suite>/cells`` and skipped on a rerun; the summary goes to
``docs/results/<suite>.json`` and ``.md`` with the exact command and the date.
"""

from __future__ import annotations

from typing import Callable

from .runner import Cell, Suite, run_suite, summarize

__all__ = ["Cell", "Suite", "run_suite", "summarize", "SUITES", "run_bench_cli"]


def _suites() -> dict[str, Callable[..., Suite]]:
    from . import dsg, foundation

    return {"models": foundation.models_suite, "speed": foundation.speed_suite, "dsg": dsg.dsg_suite}


SUITES = _suites


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
    records = run_suite(suite, run_dir, progress=progress)
    results_dir = args.results_dir or (run_dir if args.quick else "docs/results")
    json_path, md_path = summarize(suite, records, results_dir, command)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0
