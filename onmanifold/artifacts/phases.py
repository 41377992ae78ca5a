"""ASCED's phases of the reverse trajectory: Profiling, Mutation, Refinement (Cao et al., CVPR 2025, Sec. 3, Fig. 7).

Operational definition (a project decision, docs/methods/asced.md#D15), on *uncorrected* runs:

    f_n   = fraction of pixels flagged by the per-step test (before union and filters) for the pair (n-1, n),
            n = 1 .. N-1, averaged over samples (the Fig. 7 curve)
    n_1   = first n with f_n >= 0.1 max f                         (end of Profiling)
    n_c   = round(0.48 N)                                          (end of Mutation = the correction step)
    n_2   = first n after argmax f with f_n < 0.5 max f            (data-driven end of the peak, reported beside)

Profiling: n < n_1; Mutation: n_1 <= n < n_c; Refinement: the rest. The curve ``f_n`` is recorded by
:class:`~onmanifold.artifacts.FlagFractionMonitor` on a run; :func:`monitored_phases` reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .monitor import FlagFractionMonitor

__all__ = ["phase_boundaries", "phase_of_steps", "plot_phase_histogram", "monitored_phases"]


def phase_boundaries(f: Sequence[float], num_steps: int, tc_frac: float = 0.48) -> dict:
    """Boundaries of the mean curve ``f`` (``f[n-1]`` is ``f_n``, ``n = 1 .. N-1``): ``{n_1, n_c, n_2, n_peak, f_max}``.

    ``n_2`` is ``None`` when ``f`` never falls below half its maximum after the peak.
    """
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 1 or f.size != num_steps - 1:
        raise ValueError(f"f: expected N-1 = {num_steps - 1} values (n = 1 .. N-1), got shape {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError("f: expected finite fractions >= 0")
    n = np.arange(1, num_steps)
    fmax = float(f.max())
    n_peak = int(n[int(np.argmax(f))])
    n_1 = int(n[np.argmax(f >= 0.1 * fmax)]) if fmax > 0 else None
    after = (n > n_peak) & (f < 0.5 * fmax)
    n_2 = int(n[np.argmax(after)]) if after.any() else None
    return {"n_1": n_1, "n_c": int(round(tc_frac * num_steps)), "n_2": n_2, "n_peak": n_peak, "f_max": fmax}


def monitored_phases(monitor: FlagFractionMonitor) -> dict:
    """:func:`phase_boundaries` of the mean ``f_n`` over the samples of the monitor's last run, ``n_c`` from its ``tc_frac``."""
    if not isinstance(monitor, FlagFractionMonitor):
        raise TypeError(f"monitor: expected a FlagFractionMonitor, got {type(monitor).__name__}")
    curve = monitor.flag_fraction.double().mean(0).cpu().numpy()
    return phase_boundaries(curve, monitor.num_steps, monitor.config.tc_frac)


def phase_of_steps(bounds: dict, num_steps: int) -> list[str]:
    """The phase name of every step pair ``n = 1 .. N-1``."""
    out = []
    for n in range(1, num_steps):
        if bounds["n_1"] is None or n < bounds["n_1"]:
            out.append("Profiling")
        elif n < bounds["n_c"]:
            out.append("Mutation")
        else:
            out.append("Refinement")
    return out


def plot_phase_histogram(curves: Mapping[str, Sequence[float]], bounds: dict, num_steps: int, path: str | os.PathLike,
                         title: str = "", window: tuple[int, int] | None = None) -> Path:
    """Bar chart of the first curve of ``curves`` over ``n / N`` (Fig. 7 analogue), the others as lines, with the phase
    boundaries shaded (Profiling / Mutation / Refinement) and the detection window ``[n_d, n_c)`` marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.arange(1, num_steps)
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    names = list(curves)
    first = np.asarray(curves[names[0]], dtype=np.float64)
    ax.bar(n / num_steps, first, width=0.8 / num_steps, color="0.55", label=names[0])
    for name in names[1:]:
        ax.plot(n / num_steps, np.asarray(curves[name], dtype=np.float64), marker=".", label=name)
    n1, nc = bounds.get("n_1"), bounds["n_c"]
    ymax = max(float(np.max([np.max(np.asarray(c)) for c in curves.values()])), 1e-9) * 1.1
    if n1 is not None:
        ax.axvspan(0, (n1 - 0.5) / num_steps, color="tab:blue", alpha=0.08)
        ax.axvspan((n1 - 0.5) / num_steps, (nc - 0.5) / num_steps, color="tab:red", alpha=0.08)
        ax.text(0.5 * (n1 - 0.5) / num_steps, ymax * 0.95, "Profiling", ha="center", va="top", fontsize=8, rotation=90 if n1 <= 2 else 0)
        ax.text(0.5 * (n1 + nc - 1) / num_steps, ymax * 0.95, "Mutation", ha="center", va="top", fontsize=8)
    ax.axvspan((nc - 0.5) / num_steps, 1.0, color="tab:green", alpha=0.08)
    ax.text(0.5 * ((nc - 0.5) / num_steps + 1.0), ymax * 0.95, "Refinement", ha="center", va="top", fontsize=8)
    if bounds.get("n_2") is not None:
        ax.axvline(bounds["n_2"] / num_steps, color="k", ls=":", lw=1, label=f"n_2 = {bounds['n_2']}")
    if window is not None:
        ax.axvline(window[0] / num_steps, color="tab:purple", ls="--", lw=1, label=f"window [n_d={window[0]}, n_c={window[1]})")
        ax.axvline(window[1] / num_steps, color="tab:purple", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, ymax)
    ax.set_xlabel("n / N (fraction of the trajectory completed)")
    ax.set_ylabel("fraction of pixels flagged")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    from ..images import save_figure

    return save_figure(fig, path)
