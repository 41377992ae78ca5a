"""``onmanifold bench asced-mosaic``: ASCED (Cao et al., CVPR 2025) on the frame-filling ``mosaic`` bed, against exact ground truth.

Protocol (docs/methods/asced.md#P3):

* model and sampler: the bundled ``mosaic-unet`` (64x64, linear beta 1e-4 .. 0.02, T = 1000), DDIM-25 with
  ``spacing="linspace"``, eta = 0, clipped ``x0_hat``; sample ``i`` has its own generator (every method sees the same
  ``x_T``); test seeds ``0 ..``; calibration seeds from :data:`CALIBRATION_FIRST` (disjoint).
* ground truth: ``get_testbed("mosaic").artifact_masks`` (deviation from the nearest valid mosaic > 0.5, opened).
* calibration (item 3): the per-step flag maps of uncorrected calibration runs against the ground truth
  (:func:`onmanifold.artifacts.calibrate_window`): flag rates inside / outside G, the window maximising Youden's J,
  the phases of the mean flag curve.
* detection (item 4, 5), every detector observing the *same* uncorrected runs: the faithful detector
  (:meth:`DetectorConfig.for_resolution` (64), the paper's window 0.24 N .. 0.48 N) and at the calibrated window;
  beside it, labelled beyond the paper, the normalised detector (docs/methods/asced.md#V1) with statistics from real
  mosaics (``reference``) and from the batch (``batch``), at both windows. Scores: image-level balanced accuracy of
  [M non-empty] vs [G non-empty] on random samples and on a balanced hand-picked set (the paper's protocol: equal
  numbers of GT-positive and GT-negative samples), pixel AUROC of the z-map vs G, IoU of M with G.
* correction (item 6), same seeds: ASCED (TTC on M at n_c, the paper's window), ASCED at the calibrated window,
  ASCED with the normalised detector, State Replacement, Score Clipping, and the controls: TTC on M moved to a random
  place (same shape and area), on the whole image of every flagged sample, and on the ground-truth mask of the
  original sample (oracle). Per method: GT artifact rate, repair rate P(clean after | artifact before), damage rate,
  re-noised area, FD over tiles (the tile classifier ``mosaic-eval-classifier``); paired bootstrap 95 % intervals
  (resampling seeds) of FD(method) - FD(original) and of the repair rate's difference from ASCED.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onmanifold.data.mosaic import IMAGE_SIZE
from onmanifold.io import load_tensors, save_tensors_atomic
from onmanifold.testbeds import get_testbed

from .asced import _detection, _MovedMask, _quality_from_features, _ref_features, _repair_damage, _whole_image
from .asced import _sampler as asced_sampler
from .models import diffusion_model, on_cpu
from .runner import Cell, Suite, finished_records
from .timing import per_sample, timed

__all__ = ["asced_mosaic_suite", "DETECTORS", "CORRECTIONS", "CALIBRATION_FIRST"]

BED = "mosaic"
MODEL = "mosaic-unet"
STEPS = 25
SEED = 0
CALIBRATION_FIRST = 100_000  # seeds of the calibration runs (the test runs use 0 ..)
REFERENCE_IMAGES = 256  # real mosaics of the normalised detector's statistics (the bed's 'val' split)
WINDOWS = ("paper", "calibrated")
NORMALISATIONS = ("per-image", "reference", "batch")
# every detector observing the original runs: (normalisation, window); "per-image" is the faithful detector
DETECTORS = tuple(f"{norm}@{win}" for win in WINDOWS for norm in NORMALISATIONS)
CORRECTIONS = ("asced", "asced-calibrated", "asced-normalised", "state-replacement", "score-clipping",
               "random-location", "whole-image", "oracle-ttc")


def _sampler(loaded):
    return asced_sampler(loaded, STEPS)


def detector_config(normalisation: str = "per-image", window: tuple[int, int] | None = None):
    """``DetectorConfig`` at 64x64 with a normalisation and a window ``(n_d, n_c)`` (None: the paper's 0.24 N, 0.48 N)."""
    from onmanifold.artifacts import DetectorConfig

    fractions = {} if window is None else {"td_frac": window[0] / STEPS, "tc_frac": window[1] / STEPS}
    return DetectorConfig.for_resolution(IMAGE_SIZE, normalization=normalisation, **fractions)


def correction_config(window: tuple[int, int] | None = None):
    from onmanifold.artifacts import CorrectionConfig

    return CorrectionConfig.for_resolution(IMAGE_SIZE, **({} if window is None else {"tc_frac": window[1] / STEPS}))


def _sample(loaded, n: int, first: int, plugins: list):
    def run():
        return on_cpu(_sampler(loaded).sample(loaded.model, shape=loaded.sample_shape, num_samples=n, seed=SEED,
                                              first_index=first, plugins=plugins))

    return timed(run)


def _ground_truth(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = get_testbed(BED).artifact_masks(x.clamp(-1, 1))
    return g, g.flatten(1).any(1)


# ------------------------------------------------------------------------------------------ the suite
def asced_mosaic_suite(quick: bool = False, run_dir: str | Path = "runs/asced-mosaic") -> Suite:
    """ASCED on mosaic: calibration, detection (faithful and normalised), correction with targeting controls."""
    run_dir = Path(run_dir)
    shard_n = 8 if quick else 250
    shards = 1 if quick else 2
    cal_n = 8 if quick else 250
    ref_n = 8 if quick else REFERENCE_IMAGES
    cells: list[Cell] = [Cell("calibration", {"n": cal_n}, 0, (SEED,)), Cell("reference", {"n": ref_n}, 0, (SEED,))]
    for s in range(shards):
        cells.append(Cell("original", {"n": shard_n}, s, (SEED,)))
        cells += [Cell(m, {"n": shard_n}, s, (SEED,)) for m in CORRECTIONS]
    cells.append(Cell("summary", {"n": shard_n * shards, "bootstrap": 50 if quick else 1000, "balanced": 4 if quick else 100}, 0, (SEED,)))

    def artifact_of(cell: Cell) -> Path:
        p = run_dir / "artifacts" / f"{cell.key}.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def find(method: str, shard: int = 0) -> Cell:
        return next(c for c in cells if c.method == method and c.shard == shard)

    def load_art(method: str, shard: int = 0) -> dict:
        c = find(method, shard)
        finished_records([c], run_dir, c.method)  # CellNotReady until that cell has finished
        return load_tensors(artifact_of(c), "artifact")

    def calibrated_window() -> tuple[int, int]:
        rec = finished_records([find("calibration")], run_dir, "calibration")[0]
        return int(rec["metrics"]["n_d"]), int(rec["metrics"]["n_c"])

    def reference_statistics():
        from onmanifold.artifacts import ReferenceChangeStatistics

        a = load_art("reference")
        return ReferenceChangeStatistics(a["median"], a["mad"], tuple(a["pairs"].tolist()), int(a["num_steps"]), detector_config("reference"),
                                         tuple(a["timesteps"].tolist()), int(a["num_references"]))

    def run_cell(cell: Cell) -> dict:
        m, n = cell.method, cell.setting.get("n")
        if m == "summary":  # from the other cells' artifacts: no model needed
            return _summary(cell.setting, shards, load_art, calibrated_window())
        loaded = diffusion_model(MODEL)
        if m == "calibration":
            return _calibration(loaded, n, artifact_of(cell))
        if m == "reference":
            return _reference(loaded, n, artifact_of(cell))
        first = cell.shard * n
        window = calibrated_window()
        if m == "original":
            return _original(loaded, n, first, window, reference_statistics(), artifact_of(cell))
        oracle = load_art("original", cell.shard)["gt_mask"] if m == "oracle-ttc" else None
        return _corrected(loaded, m, n, first, window, reference_statistics(), oracle, artifact_of(cell))

    def report(records: list[dict], results_dir, command: str, rdir) -> Path:
        from .asced_mosaic_report import write_asced_mosaic_report

        return write_asced_mosaic_report(records, results_dir, command)

    return Suite("asced-mosaic", cells, run_cell, description=__doc__.split("\n\n", 1)[1].strip(),
                 columns=["n", "gt_rate", "flagged_rate", "corrected_rate", "s_per_sample"], report=report)


# ------------------------------------------------------------------------------------------ cells
def _calibration(loaded, n: int, path: Path) -> dict:
    from onmanifold.artifacts import FlagFractionMonitor, calibrate_window

    monitor = FlagFractionMonitor(detector_config(), keep_flag_maps=True)
    x, sec = _sample(loaded, n, CALIBRATION_FIRST, [monitor])
    g, has = _ground_truth(x)
    cal = calibrate_window(on_cpu(monitor.flag_maps), g)
    save_tensors_atomic(path, {"x": x, "gt_mask": g})
    return {"n": n, "gt_rate": float(has.float().mean()), "seconds": sec, "s_per_sample": per_sample(sec, n), **cal.to_dict()}


def _reference(loaded, n: int, path: Path) -> dict:
    from onmanifold.artifacts import ReferenceChangeStatistics

    images = get_testbed(BED).images("val", n)[0]
    stats, sec = timed(ReferenceChangeStatistics.from_real_data, loaded.model, _sampler(loaded), images, SEED,
                       config=detector_config("reference"), pairs="all")
    save_tensors_atomic(path, on_cpu({"median": stats.median, "mad": stats.mad, "pairs": torch.tensor(stats.pairs),
                                      "num_steps": stats.num_steps, "timesteps": torch.tensor(stats.timesteps),
                                      "num_references": stats.num_references}))
    return {"n": n, "seconds": sec, "median_of_median_change": float(stats.median.median())}


def _original(loaded, n: int, first: int, window, reference, path: Path) -> dict:
    from onmanifold.artifacts import StreamingArtifactDetector

    detectors = {}
    for name in DETECTORS:
        norm, win = name.split("@")
        detectors[name] = StreamingArtifactDetector(detector_config(norm, window if win == "calibrated" else None),
                                                    reference if norm == "reference" else None)
    x, sec = _sample(loaded, n, first, list(detectors.values()))
    g, has = _ground_truth(x)
    art = {"x": x, "first_index": first, "gt_mask": g, "gt_has": has}
    out = {"n": n, "seconds": sec, "s_per_sample": per_sample(sec, n), "gt_rate": float(has.float().mean())}
    for name, det in detectors.items():
        res = on_cpu(det.results())
        art[name] = {"mask": res.mask, "flagged": res.flagged, "z": res.z_map.float()}  # float32: a zero MAD makes z exceed half range
    out["flagged_rate"] = float(art["per-image@paper"]["flagged"].float().mean())
    save_tensors_atomic(path, art)
    return out


def _correction_plugins(method: str, window, reference, oracle, first: int):
    from onmanifold.artifacts import AbnormalScoreCorrection, GroundTruthMasks, ScoreClipping, TrajectoryAwareCorrection

    paper = (detector_config(), correction_config())
    if method == "score-clipping":
        return [ScoreClipping(paper[0])], None
    if method == "oracle-ttc":
        ttc = TrajectoryAwareCorrection(GroundTruthMasks(oracle, first), paper[1])
        return [ttc], ttc
    if method == "asced-calibrated":
        plugin = AbnormalScoreCorrection(detector_config(window=window), correction_config(window))
    elif method == "asced-normalised":
        plugin = AbnormalScoreCorrection(detector_config("reference", window), correction_config(window), reference=reference)
    else:
        transform = {"random-location": _MovedMask(SEED), "whole-image": _whole_image}.get(method)
        plugin = AbnormalScoreCorrection(*paper, "state_replacement" if method == "state-replacement" else "ttc", mask_transform=transform)
    return [plugin], plugin.corrector


def _corrected(loaded, method: str, n: int, first: int, window, reference, oracle, path: Path) -> dict:
    plugins, corrector = _correction_plugins(method, window, reference, oracle, first)
    x, sec = _sample(loaded, n, first, plugins)
    g, has = _ground_truth(x)
    art = {"x": x, "first_index": first, "gt_mask": g, "gt_has": has}
    out = {"n": n, "seconds": sec, "s_per_sample": per_sample(sec, n), "gt_rate": float(has.float().mean())}
    if corrector is not None:
        art["corrected"] = on_cpu(corrector.corrected)
        art["area"] = on_cpu(corrector.corrected_area)
        out["corrected_rate"] = float(art["corrected"].float().mean())
    save_tensors_atomic(path, art)
    return out


# ------------------------------------------------------------------------------------------ summary
def _tile_features(x: torch.Tensor) -> np.ndarray:
    """``(n, 16, d)``: the tile classifier's features of every image's 16 tiles."""
    from onmanifold import metrics
    from onmanifold.evaluate import eval_classifier

    classifier = eval_classifier(BED)
    f = metrics.classifier_features(classifier, x.clamp(-1, 1)).double().numpy()
    return f.reshape(x.shape[0], -1, classifier.classifier.feature_dim)


def paired_bootstrap(feats: dict, gt_before: torch.Tensor, gt_after: dict, base: str, versus: str, resamples: int, seed: int = 0) -> dict:
    """95 % intervals over joint resamples of the seeds (whole images, with their 16 tiles):
    ``FD(m) - FD(base)`` for every method, and ``repair(m) - repair(versus)`` (repair: P(clean after | artifact before))."""
    from onmanifold import metrics

    to_reference = metrics.FrechetReference(_ref_features(BED))
    n = gt_before.shape[0]
    rng = np.random.default_rng(seed)
    before = gt_before.numpy()
    after = {m: v.numpy() for m, v in gt_after.items()}

    def fd(m, idx):
        return to_reference(feats[m][idx].reshape(-1, feats[m].shape[-1]))

    def repair(m, idx):
        b = before[idx]
        return float((~after[m][idx][b]).mean()) if b.any() else float("nan")

    d_fd: dict = {m: [] for m in feats if m != base}
    d_rep: dict = {m: [] for m in after if m not in (base, versus)}
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        fb = fd(base, idx)
        for m in d_fd:
            d_fd[m].append(fd(m, idx) - fb)
        rv = repair(versus, idx)
        for m in d_rep:
            d_rep[m].append(repair(m, idx) - rv)
    ci = lambda v: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]  # noqa: E731
    return {"delta_fd_ci": {m: ci(v) for m, v in d_fd.items()}, "delta_repair_vs_" + versus + "_ci": {m: ci(v) for m, v in d_rep.items()}}


def _summary(s: dict, shards: int, load_art, window) -> dict:
    arts = {m: [load_art(m, sh) for sh in range(shards)] for m in ("original", *CORRECTIONS)}
    cat = lambda m, key: torch.cat([a[key] for a in arts[m]])  # noqa: E731
    orig = arts["original"]
    g, has = cat("original", "gt_mask"), cat("original", "gt_has")
    out: dict = {"n": int(has.numel()), "window_calibrated": list(window), "window_paper": [round(0.24 * STEPS), round(0.48 * STEPS)],
                 "gt_rate": float(has.float().mean())}
    detection = {}
    for name in DETECTORS:
        d = lambda key: torch.cat([a[name][key] for a in orig])  # noqa: E731
        detection[name] = _detection(d("flagged"), has, d("z"), d("mask"), d("mask"), g, s["balanced"])
        detection[name]["flagged_rate"] = float(d("flagged").float().mean())
    out["detection"] = detection
    xs = {m: cat(m, "x") for m in ("original", *CORRECTIONS)}
    feats = {m: _tile_features(x) for m, x in xs.items()}
    after = {m: cat(m, "gt_has") for m in xs}
    table = {}
    for m in xs:
        row = _quality_from_features(BED, feats[m].reshape(-1, feats[m].shape[-1]))
        row["gt_rate"] = float(after[m].float().mean())
        row["changed_rate"] = float((xs[m] != xs["original"]).flatten(1).any(1).float().mean())
        if m != "original":
            row.update(_repair_damage(has, after[m]))
        if "area" in arts[m][0]:
            area = cat(m, "area").double()
            corrected = cat(m, "corrected")
            row["corrected_rate"] = float(corrected.float().mean())
            row["renoised_pixels_mean_corrected"] = float(area[corrected].mean()) if corrected.any() else 0.0
            row["renoised_share_of_image"] = float(area.sum() / (area.numel() * IMAGE_SIZE * IMAGE_SIZE))
        table[m] = row
    for m in table:
        table[m]["delta_fd"] = table[m]["fd"] - table["original"]["fd"] if m != "original" else 0.0
    boot = paired_bootstrap(feats, has, after, "original", "asced", s["bootstrap"])
    for m, v in boot["delta_fd_ci"].items():
        table[m]["delta_fd_ci"] = v
    for m, v in boot["delta_repair_vs_asced_ci"].items():
        table[m]["repair_minus_asced_ci"] = v
    out["table"] = table
    return out
