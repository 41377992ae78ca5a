"""How many digits the demo's and the results pages' numbers hold: their rounding spread, measured.

``onmanifold demo --measure-spread`` measures every value of the demo's table (:func:`measure_demo_spread`);
``onmanifold bench SUITE --measure-spread`` one representative cell per method and metric family of a
suite (:data:`SUITE_PROBES`, :func:`measure_suite_spread`), whose spreads the suite's page applies to
every cell of that method (:class:`onmanifold_bench.tables.MetricFormat`). Both go to
``docs/results/precision.json`` and ``.md``.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from onmanifold.nets.checkpoint import write_json_atomic, write_text_atomic

from . import tables
from .spreads import SPREAD_FILE, _read_record, load_demo_spread, load_suite_spread
from .tables import decimals_for

__all__ = ["CONDITIONS", "decimals_for", "format_with_spread", "measure_demo_spread", "load_demo_spread", "SPREAD_FILE", "TIMING_COLUMNS",
           "SUITE_PROBES", "measure_suite_spread", "load_suite_spread"]

CONDITIONS = ("base", "eps+1e-06", "eps-1e-06", "threads=2")
TIMING_COLUMNS = ("s/sample", "time ratio")
"""Columns that are wall times: machine-dependent by nature, never part of the reproducible table."""


def format_with_spread(value: Any, spread: float | None) -> str:
    """``value`` as table text with the decimals its ``spread`` supports (four significant digits without one)."""
    if not isinstance(value, float) or spread is None:
        return tables.format_value(value, 4)
    d = decimals_for(value, spread)
    return tables.format_value(value, 4) if d is None else tables.format_value(value, decimals=d)


class ScaledEps(torch.nn.Module):
    """``model(x, t, cond) * scale``: a diffusion model whose eps is perturbed by a relative ``scale - 1``.

    Every other attribute is the wrapped model's (a latent model's ``decode``/``encode``/``encode_prompt``, its
    ``data_range``, ``prediction_type``...), so any model a suite loads, pixel or latent, runs perturbed unchanged;
    except ``full_prediction``, which is hidden so that the sampler takes every eps through the scaled call (the
    sampler needs it only at ``abar_t = 0`` and for a learned variance). A learned-variance model is refused.
    """

    def __init__(self, model, scale: float) -> None:
        super().__init__()
        if getattr(model, "learned_variance", False):
            raise ValueError("model: a learned-variance model cannot be perturbed by ScaledEps (its variance comes from full_prediction)")
        self.inner = model
        self.scale = float(scale)

    def forward(self, x, t, cond=None):
        return self.inner(x, t, cond) * self.scale

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("inner", "full_prediction"):
                raise
            return getattr(self.inner, name)


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
        return dataclasses.replace(loaded, model=ScaledEps(loaded.model, scale))

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
    previous = _read_record(out)
    if "suites" in previous:  # the suites' spreads (measure_suite_spread) share the file: kept as they are
        record["suites"] = previous["suites"]
    write_json_atomic(out, record)
    write_text_atomic(out.with_suffix(".md"), _page(record))
    return record


def _page(record: dict) -> str:
    if "spreads" not in record:  # only the suites' spreads were measured here
        return _suites_page(record.get("suites", {}))
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
    if record.get("suites"):
        lines += ["", _suites_page(record["suites"], level=2)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the suites' pages
@dataclasses.dataclass(frozen=True)
class Probe:
    """One representative cell of a suite, re-run under every condition: ``run() -> {metric: value}``.

    ``method`` is the name the page's tables use for the method (the spread of ``(suite, method, metric)``);
    ``setting`` says what was run (the cheapest step count of the suite, a low ``n``).
    """

    suite: str
    method: str
    setting: str
    run: Any


def _dsg_probes() -> list[Probe]:
    from .dsg import _inverse_metrics, guided_run, inverse_problem, table3
    from .models import diffusion_model

    def inverse(bed: str, task: str, method: str, steps: int, n: int, **kw):
        def run():
            loss, truth, labels, _ = inverse_problem(bed, task, "test", n, 0)
            x, sec = guided_run(diffusion_model(f"{bed}-unet"), method, loss, steps, n, 0, **kw)
            m = _inverse_metrics(bed, x, truth, labels, sec)
            return {k: v for k, v in m.items() if k in ("psnr", "ssim", "fd", "acc")}

        return run

    def label(method: str, n: int, **kw):
        def run():
            import torch as _torch

            from onmanifold import metrics
            from onmanifold.evaluate import eval_classifier, guidance_classifier, quality
            from onmanifold.losses import ClassifierLoss

            target = _torch.arange(n) % 10
            x, _ = guided_run(diffusion_model("digits-unet"), method, ClassifierLoss(guidance_classifier("digits"), target), 100, n, 0, **kw)
            with _torch.no_grad():
                acc = metrics.accuracy(eval_classifier("digits")(x.clamp(-1, 1)), target)
            return {"acc": acc, "fd": quality("digits", x)["fd"]}

        return run

    k, g_r = table3("sr", 20)
    return [
        Probe("dsg", "dps", "digits box, DDIM-20 eta 1, zeta 3 (the chosen zeta), n = 128", inverse("digits", "box", "dps", 20, 128, zeta=3.0)),
        Probe("dsg", "dsg", "digits box, DDIM-20 eta 1, k 1, g_r 0.2, n = 128", inverse("digits", "box", "dsg", 20, 128, g_r=0.2, k=1)),
        Probe("dsg", "dps", "shapes SR x4, DDIM-20 eta 1, zeta 3 (the chosen zeta), n = 32", inverse("shapes", "sr", "dps", 20, 32, zeta=3.0)),
        Probe("dsg", "dsg", f"shapes SR x4, DDIM-20 eta 1, k {k}, g_r {g_r}, n = 32", inverse("shapes", "sr", "dsg", 20, 32, g_r=g_r, k=k)),
        Probe("dsg", "label-dps", "digits label guidance, DDIM-100 eta 1, zeta 1 (the chosen zeta), n = 64", label("dps", 64, zeta=1.0)),
        Probe("dsg", "label-dsg", "digits label guidance, DDIM-100 eta 1, g_r 0.3 (the chosen g_r), n = 64", label("dsg", 64, g_r=0.3)),
    ]


def _tag_probes() -> list[Probe]:
    from onmanifold.metrics import wasserstein1_exact
    from onmanifold.temporal import LinearDrift, NoiseInjection, TemporalAlignmentGuidance, TimeGapRecorder
    from onmanifold.testbeds import get_testbed

    from .models import diffusion_model, time_predictor
    from .tag import _quality, _sample

    def toy(plugins_fn, n: int = 1000):
        def run():
            ref = get_testbed("gmm2d").images("reference", n)[0]
            x, _ = _sample(diffusion_model("gmm2d-mlp"), plugins_fn(), 100, n, 0, eta=1.0, batch_size=n)
            return {"w1": wasserstein1_exact(x, ref)}

        return run

    def corrupt(omega0: float, n: int = 128):
        def run():
            phi = time_predictor("digits-time")
            rec = TimeGapRecorder(phi)
            x, _ = _sample(diffusion_model("digits-unet"), [NoiseInjection(0.2), rec, TemporalAlignmentGuidance(phi, omega0)], 50, n, 0)
            return {**_quality("digits", x), "tg": rec.mean()}

        return run

    return [
        Probe("tag", "drift", "gmm2d, drift -0.01x, DDPM-100, n = 1000", toy(lambda: [LinearDrift(0.01)])),
        Probe("tag", "tag", "gmm2d, drift -0.01x + TAG omega0 1, DDPM-100, n = 1000",
              toy(lambda: [LinearDrift(0.01), TemporalAlignmentGuidance(time_predictor("gmm2d-time"), 1.0)])),
        Probe("tag", "corrupted", "digits, sigma 0.2 noise every step, DDIM-50, n = 128", corrupt(0.0)),
        Probe("tag", "tag", "digits, sigma 0.2 noise every step + TAG omega0 0.5, DDIM-50, n = 128", corrupt(0.5)),
    ]


def _asced_probes() -> list[Probe]:
    from onmanifold.artifacts import gt_artifact_mask

    from .asced import _features, _quality_from_features, run_method
    from .models import diffusion_model

    def run_one(method: str, n: int = 64):
        def run():
            x, det, corr, _, _ = run_method(diffusion_model("shapes-unet"), "shapes", method, n, 0)
            _, has = gt_artifact_mask(x)
            out = {**_quality_from_features("shapes", _features("shapes", x)), "gt_rate": float(has.float().mean())}
            if det is not None:
                out["flagged_rate"] = float(det.results().flagged.float().mean())
            return out

        return run

    return [Probe("asced", "original", "shapes, DDIM-25 (the suite's sampler), n = 64", run_one("original")),
            Probe("asced", "asced", "shapes, DDIM-25 + ASCED (defaults for 32x32), n = 64", run_one("asced"))]


def _compose_probes() -> list[Probe]:
    from .compose import COMPOSE_METHODS, compose_run

    knobs = json.loads((SPREAD_FILE.parent / "compose.json").read_text())["records"]
    chosen = next(r["metrics"] for r in knobs if r["cell"]["method"] == "dsg")
    kw = {"zeta": chosen["chosen_zeta"], "g_r": chosen["chosen_g_r"], "omega0": chosen["chosen_omega0"]}

    def one(method: str):
        return lambda: {k: v for k, v in compose_run(method, 64, "test", **kw).items() if k != "s_per_sample"}

    return [Probe("compose", m, f"shapes SR x4, DDIM-25, the chosen knobs {kw}, n = 64", one(m)) for m in COMPOSE_METHODS]


def _latent_probes() -> list[Probe]:
    from .latent import ASCED_SCALE, CFG_TAG_SCALE, asced_run, latent_run

    def one(kind: str, n: int, **kw):
        return lambda: {k: v for k, v in latent_run(kind, n, **kw).items() if not k.startswith("s_per_sample")}

    def asced(n: int):
        return lambda: {k: v for k, v in asced_run(n).items() if not (k.startswith("s_per_sample") or k.startswith("decoder_"))
                        and v is not None}

    return [
        Probe("latent", "cfg", "shapes-latent, CFG s = 3, DDPM-25, n = 36", one("cfg", 36, scale=3.0)),
        Probe("latent", "cfg+tag", f"shapes-latent, CFG s = {CFG_TAG_SCALE:g} + TAG omega0 1, DDPM-25, n = 36",
              one("cfg", 36, scale=CFG_TAG_SCALE, omega0=1.0)),
        Probe("latent", "sr-dps", "shapes-latent SR x4 through the decoder, DPS zeta 3 (the chosen zeta), DDPM-25, n = 16",
              one("sr", 16, guidance="dps", zeta=3.0)),
        Probe("latent", "sr-dsg", "shapes-latent SR x4 through the decoder, DSG g_r 0.3 (the chosen g_r), DDPM-25, n = 16",
              one("sr", 16, guidance="dsg", g_r=0.3)),
        Probe("latent", "label-dps", "shapes-latent type guidance through the decoder, DPS zeta 1 (the chosen zeta), DDPM-25, n = 16",
              one("label", 16, guidance="dps", zeta=1.0)),
        Probe("latent", "asced", f"shapes-latent, CFG s = {ASCED_SCALE:g} + ASCED on the latent x0_hat, DDPM-25, n = 36", asced(36)),
    ]


def _fronts_probes() -> list[Probe]:
    from .fronts import _front_point

    def point(method: str, strength: float, value=None, n: int = 64):
        return lambda: {k: v for k, v in _front_point("digits", method, strength, value, n, "test", None).items() if k != "s_per_sample"}

    return [
        Probe("fronts", "none", "digits, unguided, DDPM-50, n = 64", point("none", 0.0)),
        Probe("fronts", "dps", "digits label guidance, DPS zeta 10, DDPM-50, n = 64", point("dps", 10.0)),
        Probe("fronts", "dps", "digits label guidance, DPS zeta 100 (the strongest), DDPM-50, n = 64", point("dps", 100.0)),
        Probe("fronts", "dsg", "digits label guidance, DSG g_r 0.4, DDPM-50, n = 64", point("dsg", 0.4)),
        Probe("fronts", "dps+tag", "digits label guidance, DPS zeta 10 + TAG omega0 0.5, DDPM-50, n = 64", point("dps+tag", 10.0, 0.5)),
    ]


def _models_probes() -> list[Probe]:
    from .foundation import model_quality

    return [Probe("models", name, f"{name}, DDIM-50 eta 0 (the suite's sampler), n = {n}",
                  lambda name=name, n=n: model_quality(name, n))
            for name, n in (("gmm2d-mlp", 1000), ("digits-unet", 256), ("shapes-unet", 256))]


SUITE_PROBES = {"dsg": _dsg_probes, "tag": _tag_probes, "asced": _asced_probes, "compose": _compose_probes, "latent": _latent_probes,
                "fronts": _fronts_probes, "models": _models_probes}
"""Per suite, its representative cells: one per method and metric family, at the suite's cheapest step count and a low ``n``."""


def measure_suite_spread(suite: str, out: str | Path = SPREAD_FILE, command: str = "", scratch: str | Path | None = None) -> dict:
    """Run ``suite``'s :data:`SUITE_PROBES` under every condition and store each ``(method, metric)`` spread in ``out``.

    Resumable: every finished (probe, condition) is kept in ``scratch`` (default ``runs/precision/<suite>.json``)
    and not rerun. The record goes to ``out["suites"][suite]`` (the demo's spreads in the same file are kept).
    """
    if suite not in SUITE_PROBES:
        raise ValueError(f"suite: expected one of {', '.join(SUITE_PROBES)} for --measure-spread, got {suite!r}")
    probes = SUITE_PROBES[suite]()
    scratch = Path(scratch or Path("runs") / "precision" / f"{suite}.json")
    done: dict = json.loads(scratch.read_text()) if scratch.is_file() else {}
    for name in CONDITIONS:
        todo = [p for p in probes if f"{p.method} | {p.setting}" not in done.get(name, {})]
        if not todo:
            continue
        with _condition(name):
            for p in todo:
                print(f"[precision] {suite}: condition {name}: {p.method}, {p.setting}", flush=True)
                done.setdefault(name, {})[f"{p.method} | {p.setting}"] = {k: float(v) for k, v in p.run().items()}
                write_json_atomic(scratch, done)
    rows = []
    for p in probes:
        key = f"{p.method} | {p.setting}"
        values = {c: done[c][key] for c in CONDITIONS}
        spreads = {m: max(values[c][m] for c in CONDITIONS) - min(values[c][m] for c in CONDITIONS) for m in values["base"]}
        rows.append({"method": p.method, "setting": p.setting, "base": values["base"], "spreads": spreads})
    entry = {"command": command, "date": _dt.date.today().isoformat(), "conditions": list(CONDITIONS), "probes": rows}
    out = Path(out)
    record = _read_record(out)
    record.setdefault("suites", {})[suite] = entry
    write_json_atomic(out, record)
    write_text_atomic(out.with_suffix(".md"), _page(record))
    return entry


def _suites_page(suites: dict, level: int = 1) -> str:
    lines = ["#" * level + " Rounding spread of the results pages' numbers", "",
             "Per suite, a representative cell of each method (the suite's cheapest step count, a low n) runs four times in one process: "
             "as is (one torch thread), with every diffusion model's eps multiplied by 1 + 1e-6 and by 1 - 1e-6, and with two torch "
             "threads. The spread of a metric is max - min over the four; the pages (`onmanifold_bench/tables.py`) print each metric of "
             "that method with the decimals the spread supports (the largest spread of the suite for a method without a probe), never "
             "more than they printed before. A spread of 0 means that no digit shown moved in the probe, not that none can: a count "
             "metric (accuracy, a rate) changes in steps of 1/n.", ""]
    for suite, entry in suites.items():
        lines += ["#" * (level + 1) + f" {suite}", "", f"Command: `{entry['command']}` ({entry['date']}).", ""]
        rows = []
        for row in entry["probes"]:
            for metric, s in row["spreads"].items():
                d = decimals_for(row["base"][metric], s)
                rows.append([row["method"], row["setting"], metric, tables.format_value(row["base"][metric], 6), tables.format_value(s, 2),
                             "as stored" if d is None else str(d)])
        lines += [tables.markdown_table(["method", "probe", "metric", "value (base)", "spread", "decimals at most"], rows), ""]
    return "\n".join(lines)
