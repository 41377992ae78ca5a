"""The one timer of the suites: wall seconds of a call, and alternating comparisons in one process.

Wall times on a shared machine drift (other jobs, thermal state), so every cost *ratio* on the
results pages is measured by :func:`alternating`: the runs being compared take turns in the same
process, after a warm-up, and each ratio is taken within one round; pages report the median round.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Mapping, TypeVar

__all__ = ["timed", "timed_cpu", "alternating", "per_sample"]

T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """``(fn(*args, **kwargs), wall seconds of the call)`` (``time.perf_counter``)."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def timed_cpu(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float, float]:
    """``(fn(*args, **kwargs), wall seconds, CPU seconds of this process)`` of the call.

    CPU seconds (``time.process_time``: every thread of the process) stay close to the work done when other
    jobs share the cores, where wall seconds also count the waits for a core; with one torch thread they
    are the cleaner cost measure on a busy machine (pages say which they report).
    """
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0, time.process_time() - c0


def alternating(runs: Mapping[str, Callable[[], float]], repeats: int, *, warmup: Iterable[Callable[[], Any]] = (),
                swap: bool = False) -> dict[str, list[float]]:
    """Seconds of each run over ``repeats`` rounds, the runs taking turns: ``{name: [round 0, round 1, ...]}``.

    Each callable performs one run and returns the seconds it measured (so it can leave its set-up
    out of the timing). The ``warmup`` callables are called once, first, and not timed. Round ``r``
    calls the runs in the order of ``runs``, reversed on odd rounds when ``swap`` (so that a drift of
    the machine within a round hits both sides of a two-way comparison equally).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats!r}")
    for fn in warmup:
        fn()
    names = list(runs)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[::-1] if swap and r % 2 == 1 else names
        for name in order:
            out[name].append(float(runs[name]()))
    return out


def per_sample(seconds: float, n: int) -> float:
    """Seconds per sample of a run that produced ``n`` samples in ``seconds``."""
    if n < 1:
        raise ValueError(f"n: expected a positive number of samples, got {n!r}")
    return seconds / n
