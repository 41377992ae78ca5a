"""``onmanifold bench compose``: DSG + Temporal Alignment Guidance + ASCED in one sampling run.

None of the three papers' code bases can run the others' corrections; here they are plugins of one
loop. One inverse problem, shapes super-resolution x4 (average pooling, sigma_y = 0.05), DDIM-25
eta = 1 (DSG needs a stochastic sampler), on the bundled shapes UNet, 128 held-out shapes (seed 777):

* DPS (the baseline guidance), DSG, DPS + TAG (pre), DPS + ASCED, DSG + TAG, DSG + ASCED and
  DSG + TAG + ASCED, all with the same seeds and measurements;
* DPS zeta, DSG g_r and TAG omega0 chosen on 32 validation shapes (seed 555) by the highest PSNR;
  ASCED at its defaults for 32x32 (``DetectorConfig`` and ``CorrectionConfig`` ``.for_resolution(32)``, correction
  step at 0.48 N, with the sampler's eta kept at the correction step so DSG still guides it);
* metrics: PSNR / SSIM to the truth, FD vs 2000 real shapes in the evaluation classifier's features,
  the ground-truth artifact rate (deviation from the nearest valid shape, :func:`~onmanifold.artifacts.gt_artifact_mask`),
  the share of samples ASCED corrected, seconds per sample.
"""

from __future__ import annotations

from pathlib import Path

from .dsg import inverse_problem
from .models import diffusion_model, on_cpu, time_predictor
from .runner import Cell, Suite, finished_records
from .tables import MetricFormat, format_value, markdown_table
from .timing import per_sample, timed

__all__ = ["compose_suite", "compose_run", "COMPOSE_METHODS"]

COMPOSE_METHODS = ("dps", "dsg", "dps+tag", "dps+asced", "dsg+tag", "dsg+asced", "dsg+tag+asced")
ZETAS = (1.0, 3.0, 10.0)
GUIDANCE_RATES = (0.1, 0.2, 0.3)
OMEGAS = (1.0, 5.0, 20.0)
# the test table's metric columns and their decimals
COMPOSE_COLUMNS = (("psnr", 2), ("ssim", 4), ("fd", 3), ("gt_artifact_rate", 3), ("corrected_share", 3), ("s_per_sample", 3))


def compose_run(method: str, n: int, split: str = "test", zeta: float = 3.0, g_r: float = 0.2, omega0: float = 5.0, seed: int = 0,
                steps: int = 25, samples_out: dict | None = None) -> dict:
    """Sample ``n`` shapes with ``method`` (``+``-joined parts of ``dps``/``dsg``, ``tag``, ``asced``) and score them.

    ``samples_out``: a dict that receives the samples (``"x"``) and the truth (``"truth"``).
    """
    from onmanifold import metrics
    from onmanifold.artifacts import AbnormalScoreCorrection, CorrectionConfig, DetectorConfig, gt_artifact_mask
    from onmanifold.evaluate import quality
    from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
    from onmanifold.sampler import DDIMSampler
    from onmanifold.temporal import TemporalAlignmentGuidance

    parts = method.split("+")
    if parts[0] not in ("dps", "dsg") or not set(parts[1:]) <= {"tag", "asced"}:
        raise ValueError(f"method: expected dps or dsg, optionally +tag and/or +asced, got {method!r}")
    if split not in ("val", "test"):
        raise ValueError(f"split: expected 'val' or 'test' (the shapes bed's splits), got {split!r}")
    loaded = diffusion_model("shapes-unet")
    loss, truth, _, _ = inverse_problem("shapes", "sr", split, n, seed)
    plugins = []
    asced = None
    if "asced" in parts:
        asced = AbnormalScoreCorrection(DetectorConfig.for_resolution(32), CorrectionConfig.for_resolution(32, eta_c=None))
        plugins.append(asced)
    if "tag" in parts:
        plugins.append(TemporalAlignmentGuidance(time_predictor("shapes-time"), omega0))
    plugins.append(DiffusionPosteriorSampling(loss, zeta) if parts[0] == "dps" else SphericalGaussianGuidance(loss, g_r, 1))
    sampler = DDIMSampler(loaded.schedule, steps, eta=1.0)

    def run():  # on the model's device; the samples back on the CPU, where the metrics run
        return on_cpu(sampler.sample(loaded.model, shape=loaded.sample_shape, num_samples=n, seed=100 + seed if split == "val" else seed,
                                     plugins=plugins, batch_size=128))

    x, sec = timed(run)
    if samples_out is not None:
        samples_out.update(x=x, truth=truth)
    _, has = gt_artifact_mask(x)
    out = {"psnr": float(metrics.psnr(x, truth).mean()), "ssim": float(metrics.ssim(x, truth).mean()),
           "gt_artifact_rate": float(has.float().mean()), "s_per_sample": per_sample(sec, n)}
    if split != "val":
        out["fd"] = quality("shapes", x)["fd"]
    if asced is not None:
        out["corrected_share"] = float(asced.corrector.corrected.float().mean())
    return out


def compose_suite(quick: bool = False, run_dir: str | Path = "runs/compose") -> Suite:
    """DSG + TAG + ASCED in one run on shapes super-resolution, against each method alone and DPS."""
    run_dir = Path(run_dir)
    n_val, n = (8, 16) if quick else (32, 128)
    cells = [Cell("val-dps", {"zeta": z, "n": n_val}) for z in ZETAS]
    cells += [Cell("val-dsg", {"g_r": g, "n": n_val}) for g in GUIDANCE_RATES]
    cells += [Cell("val-dps+tag", {"omega0": w, "n": n_val}) for w in OMEGAS]
    cells += [Cell(m, {"n": n}) for m in COMPOSE_METHODS]

    def best(method, knob):
        recs = finished_records(cells, run_dir, f"val-{method}")
        return max(recs, key=lambda r: r["metrics"]["psnr"])["cell"]["setting"][knob]

    def run_cell(cell: Cell) -> dict:
        s = cell.setting
        if cell.method.startswith("val-"):
            method = cell.method[4:]
            kw = {k: s[k] for k in ("zeta", "g_r", "omega0") if k in s}
            if method == "dps+tag":
                kw["zeta"] = best("dps", "zeta")
            return compose_run(method, s["n"], "val", **kw)
        knobs = {"zeta": best("dps", "zeta"), "g_r": best("dsg", "g_r"), "omega0": best("dps+tag", "omega0")}
        return {**{f"chosen_{k}": v for k, v in knobs.items()}, **compose_run(cell.method, s["n"], "test", **knobs)}

    return Suite("compose", cells, run_cell, description=__doc__.split("\n\n", 1)[1].strip(),
                 columns=["chosen_zeta", "chosen_g_r", "chosen_omega0", "psnr", "ssim", "fd", "gt_artifact_rate", "corrected_share", "s_per_sample"],
                 report=write_compose_report)


def write_compose_report(records: list[dict], results_dir, command: str, run_dir) -> Path:
    """``docs/results/compose.md``: the protocol, the test table, and a plain reading of it."""
    import datetime as dt

    from onmanifold.nets.checkpoint import write_text_atomic

    test = {r["cell"]["method"]: r["metrics"] for r in records if not r["cell"]["method"].startswith("val-")}
    fm = MetricFormat("compose")
    L = ["# DSG + TAG + ASCED in one sampling run", "", __doc__.split("\n\n", 1)[1].strip(), "", "Command(s):", "", "```", command, "```", "",
         f"Date: {dt.date.today().isoformat()}", ""]
    if test:
        any_m = next(iter(test.values()))
        L += [f"Chosen on validation: DPS zeta = {any_m['chosen_zeta']:g}, DSG g_r = {any_m['chosen_g_r']:g}, TAG omega0 = {any_m['chosen_omega0']:g}.", "",
              markdown_table(["method", "PSNR", "SSIM", "FD", "GT artifact rate", "ASCED corrected", "s/sample"],
                             [[m, *(format_value(test[m].get(k), decimals=d) if k == "s_per_sample" else fm(test[m].get(k), k, m, decimals=d)
                                  for k, d in COMPOSE_COLUMNS)] for m in COMPOSE_METHODS if m in test]),
              ""]
        if "dsg+tag+asced" in test:
            c = test["dsg+tag+asced"]
            best_psnr = max(test, key=lambda m: test[m]["psnr"])
            best_fd = min(test, key=lambda m: test[m]["fd"])
            alone = [m for m in ("dsg", "dps+tag", "dps+asced") if m in test]
            L += ["## Reading", "",
                  f"- The composition runs: one loop, three plugins, no extra network call beyond TAG's predictor; it corrected "
                  f"{fm.percent(c.get('corrected_share', 0.0), 'corrected_share', 'dsg+tag+asced', decimals=0)} of the samples at the ASCED step.",
                  f"- Best PSNR: {best_psnr} ({fm(test[best_psnr]['psnr'], 'psnr', best_psnr, decimals=2)}); best FD: {best_fd} "
                  f"({fm(test[best_fd]['fd'], 'fd', best_fd, decimals=3)}). The composition: PSNR {fm(c['psnr'], 'psnr', 'dsg+tag+asced', decimals=2)}, "
                  f"FD {fm(c['fd'], 'fd', 'dsg+tag+asced', decimals=3)}.",
                  "- Against each method alone: " + "; ".join(
                      f"{m}: PSNR {fm(test[m]['psnr'], 'psnr', m, decimals=2)}, FD {fm(test[m]['fd'], 'fd', m, decimals=3)} ("
                      + ("composition better on both" if c["psnr"] > test[m]["psnr"] and c["fd"] < test[m]["fd"] else
                         "composition worse on both" if c["psnr"] < test[m]["psnr"] and c["fd"] > test[m]["fd"] else "mixed") + ")"
                      for m in alone) + ".",
                  "- 128 images per method and one seed set; no confidence intervals were computed, so small differences are not established.", ""]
        L += [fm.note(), ""]
    path = Path(results_dir) / "compose.md"
    write_text_atomic(path, "\n".join(L))
    return path
