"""``onmanifold bench fronts``: accuracy–FD fronts of guidance strength for DPS, DSG, TAG and the baselines.

Both guidance papers claim that loss guidance leaves the data manifold the harder it guides, and
that their method lets one guide harder at the same quality (docs/methods/dsg.md, docs/methods/tag.md).
A single operating point cannot test that; this suite sweeps the strength far enough to break
fidelity and compares whole fronts.

* beds: label guidance on digits (DDIM-50, eta = 1, targets ``i mod 10``); two-attribute guidance on
  shapes (DDIM-25, eta = 1, the four (type, size) pairs of the TAG suite, the summed cross-entropies
  of the guidance classifier's two heads); the same two-attribute task on the latent shapes model
  ``shapes-latent`` (its unconditional model at the empty prompt, sampled by the latent suite's recipe:
  the folder's own DDIM sampler, 25 steps, eta = 1, latents never clamped; the summed cross-entropies
  taken on the decoded estimate ``D(z0_hat)``, the guidance through the VAE decoder as in the latent
  suite; the samples decoded and clamped to [-1, 1] before scoring).
* strengths: DPS zeta on the log grid ``DPS_ZETAS`` (pixel beds) or ``LATENT_DPS_ZETAS`` (the latent
  bed, where the guidance through the decoder is far stronger per unit of zeta); a grid given to the
  suite (``--zetas``) replaces every bed's; DSG g_r in ``DSG_RATES`` (over [0.05, 1]);
  the unguided sampler is the strength-0 point of every front.
* corrections at every strength: on DPS, TAG (``pre`` and ``inline``), Epsilon Scaling, TCS,
  Time-Shift and Langevin; on DSG, TAG (``pre``); on shapes also ASCED on both (its defaults for
  32x32, no knob). On the latent bed TAG and TCS use its bundled latent time predictor
  ``shapes-latent-time`` (which also gives its time gap), Time-Shift the variance of the VAE latents of
  the floor split; ASCED is left out there: its detector differences the clamped ``x0_hat`` in grey
  levels (docs/methods/asced.md#D1) against a floor of one grey level (docs/methods/asced.md#D3), pixel
  units the latent ``x0_hat`` does not share (the latent suite measures ASCED on latents on its own).
  Each correction's knob is chosen *at that strength* on validation seeds: the
  lowest validation FD among the knob values whose validation accuracy is at least the uncorrected
  method's minus ``ACCURACY_TOLERANCE`` (so a correction cannot win by undoing the guidance); if
  none qualifies, the highest accuracy.
* samples: ``n`` test samples per point (seed 0, the same seeds for every method and strength),
  ``n_val`` validation samples (seed 100). Accuracy by the independent evaluation classifier (both
  heads right on shapes and the latent bed); FD in its features against the bed's held-out reference
  (digits) or the pair-matched attribute pool (shapes, latent); time gap under the bed's bundled time
  predictor (on the latent bed, of the latent state).
* analysis (the ``fronts`` cell of each bed, onmanifold_bench/fronts_analysis.py): dominated points,
  the signed area between fronts per method pair and paired bootstrap intervals (``BOOTSTRAP_REPS``
  replicates of the sample indices, shared by every point).
"""

from __future__ import annotations

from pathlib import Path

from functools import lru_cache

import numpy as np
import torch

from onmanifold.io import save_tensors_atomic
from onmanifold.testbeds import get_testbed

from .fronts_analysis import analyse_bed
from .fronts_report import write_fronts_report
from .latent import BED as LATENT_BED, STEPS as LATENT_STEPS, decoded_samples, unconditional
from .models import diffusion_model, guidance_classifier, time_predictor
from .runner import Cell, Suite, cell_device, finished_records
from .tag import LABEL_KNOBS, SHAPE_PAIRS, _sample, label_guidance_plugins
from .timing import per_sample

__all__ = ["fronts_suite", "DPS_ZETAS", "LATENT_DPS_ZETAS", "DSG_RATES", "BEDS", "check_strength_grid", "front_methods",
           "reference_features", "point_file"]

DPS_ZETAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)  # digits: FD 1.3x unguided at 100, 7.2x at 3000 (fronts.md)
# shapes-latent, probed at n = 32 (test seeds): unguided FD 94; DPS zeta 0.1 FD 37 (accuracy 0.5), 1: 181 (1.9x unguided),
# 3: 531 (5.6x); 10 keeps the 5x target within the grid at n = 256
LATENT_DPS_ZETAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DSG_RATES = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
DPS_CORRECTIONS = ("dps+tag", "dps+tag-inline", "dps+es", "dps+tcs", "dps+tss", "dps+langevin")
DSG_CORRECTIONS = ("dsg+tag",)
ASCED_METHODS = ("dps+asced", "dsg+asced")
ACCURACY_TOLERANCE = 0.02
BOOTSTRAP_REPS = 500
SAMPLES, QUICK_SAMPLES = (128, 256), (16, 32)  # (n_val, n) of a run and of a --quick run
BEDS = {
    # bed: the sampler's steps, the batch size of a sampling call, the time predictor of the time gap, TAG and TCS, the default
    # DPS grid, whether ASCED applies (module docstring); the latent bed's steps are the latent suite's (its sampling recipe)
    "digits": {"steps": 50, "batch_size": 256, "predictor": "digits-time", "zetas": DPS_ZETAS, "asced": False},
    "shapes": {"steps": 25, "batch_size": 128, "predictor": "shapes-time", "zetas": DPS_ZETAS, "asced": True},
    LATENT_BED: {"steps": LATENT_STEPS, "batch_size": 128, "predictor": "shapes-latent-time", "zetas": LATENT_DPS_ZETAS, "asced": False},
}


def check_strength_grid(name: str, grid, upper: float = float("inf")) -> tuple[float, ...]:
    """``grid`` as a tuple of floats, refused (``ValueError`` naming ``name``) when empty, not finite, <= 0, above ``upper``
    or not increasing."""
    values = tuple(grid)
    if not values:
        raise ValueError(f"{name}: the strength grid is empty")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"{name}: expected positive finite strengths, got {values!r}")
    if any(v > upper for v in values):
        raise ValueError(f"{name}: expected strengths in (0, {upper:g}], got {values!r}")
    if any(b <= a for a, b in zip(values[:-1], values[1:])):
        raise ValueError(f"{name}: the strengths must increase, got {values!r}")
    return tuple(float(v) for v in values)


def front_methods(bed: str) -> tuple[str, ...]:
    """The methods of ``bed``'s fronts: DPS, DSG and their corrections (ASCED on the pixel shapes bed only: module docstring)."""
    if bed not in BEDS:
        raise ValueError(f"bed: expected one of {sorted(BEDS)} (beds with the attributes label guidance needs), got {bed!r}")
    return ("dps", "dsg", *DPS_CORRECTIONS, *DSG_CORRECTIONS, *(ASCED_METHODS if BEDS[bed]["asced"] else ()))


def _strengths(method: str, zetas, rates) -> tuple[float, ...]:
    return zetas if method.startswith("dps") else rates


def _knob_grid(method: str) -> tuple | None:
    """The values of a correction's own knob (validated at every strength); ``None`` for a guidance method or a knob-less correction."""
    return LABEL_KNOBS[method][1] if "+" in method and method in LABEL_KNOBS else None


def fronts_suite(quick: bool = False, run_dir: str | Path = "runs/fronts", beds=tuple(BEDS),
                 zetas=None, rates=DSG_RATES) -> Suite:
    """Accuracy–FD (and accuracy–time-gap) fronts of every guidance method and correction (module docstring).

    ``zetas``: the DPS grid of every bed (default: each bed's own, ``BEDS[bed]["zetas"]``); ``rates``: DSG's g_r grid.
    """
    run_dir = Path(run_dir)
    rates = check_strength_grid("--rates", rates, upper=1.0)  # DSG's g_r lies in (0, 1]
    zetas = None if zetas is None else check_strength_grid("--zetas", zetas)
    beds = tuple(beds)
    for bed in beds:
        front_methods(bed)  # refuses a bed without the attributes before any cell is built
    n_val, n = QUICK_SAMPLES if quick else SAMPLES
    reps = 50 if quick else BOOTSTRAP_REPS
    cells: list[Cell] = []
    for bed in beds:
        methods = front_methods(bed)
        bed_zetas = zetas if zetas is not None else BEDS[bed]["zetas"]
        cells.append(Cell("test", {"bed": bed, "method": "none", "strength": 0.0, "n": n}))
        for method in methods:
            grid = _knob_grid(method)
            for s in _strengths(method, bed_zetas, rates):
                if "+" not in method:  # the guidance alone: the accuracy its corrections are held to
                    cells.append(Cell("val", {"bed": bed, "method": method, "strength": s, "value": None, "n": n_val}))
                elif grid is not None:
                    cells += [Cell("val", {"bed": bed, "method": method, "strength": s, "value": v, "n": n_val}) for v in (grid[:2] if quick else grid)]
                cells.append(Cell("test", {"bed": bed, "method": method, "strength": s, "n": n}))
        cells.append(Cell("fronts", {"bed": bed, "n": n, "reps": reps}))

    def records(cell_method: str, /, **match) -> list[dict]:
        return finished_records(cells, run_dir, cell_method, **match)

    def run_cell(cell: Cell) -> dict:
        s = cell.setting
        if cell.method == "fronts":
            def load_point(setting: dict) -> dict:
                data = torch.load(run_dir / "samples" / point_file(setting), weights_only=True)
                return {"correct": data["correct"].numpy(), "features": data["features"].numpy()}

            reference = reference_features(s["bed"], s["n"]).double().numpy()
            return analyse_bed(records("test", bed=s["bed"]), load_point, reference, s["reps"])
        if cell.method == "val":
            value = s["value"]
        else:
            value = _chosen_knob(s["bed"], s["method"], s["strength"], records)
        out = _front_point(s["bed"], s["method"], s["strength"], value, s["n"], split=cell.method,
                           samples_file=run_dir / "samples" / point_file(s) if cell.method == "test" else None)
        return {**out, "value": value}

    def report(records, results_dir, command, run_dir):
        return write_fronts_report(records, results_dir, command, run_dir, protocol=__doc__, beds=beds, cells=cells)

    return Suite("fronts", cells, run_cell, description=__doc__.split("\n\n", 1)[1].strip(),
                 columns=["value", "acc", "fd", "tg", "s_per_sample"], report=report)


def point_file(setting: dict) -> str:
    """The file name of a test point's per-sample data (correctness, features) under ``run_dir/samples``."""
    return f"{setting['bed']}-{setting['method']}-{setting['strength']:g}.pt"


def _chosen_knob(bed: str, method: str, strength: float, records) -> float | None:
    """The knob of ``method`` at ``strength`` by the suite's rule (module docstring); ``None`` for knob-less methods."""
    if _knob_grid(method) is None:
        return None
    base = records("val", bed=bed, method=method.split("+")[0], strength=strength)[0]["metrics"]
    vals = records("val", bed=bed, method=method, strength=strength)
    ok = [r for r in vals if r["metrics"]["acc"] >= base["acc"] - ACCURACY_TOLERANCE]
    if not ok:
        return max(vals, key=lambda r: (r["metrics"]["acc"], -r["cell"]["setting"]["value"]))["cell"]["setting"]["value"]
    return min(ok, key=lambda r: (r["metrics"]["fd"], r["cell"]["setting"]["value"]))["cell"]["setting"]["value"]


def _targets(bed: str, n: int) -> torch.Tensor:
    """Per-sample targets: digits ``(n,)`` labels ``i mod 10``; shapes ``(n, 2)`` (type, size) in four equal blocks."""
    if bed == "digits":
        return torch.arange(n) % 10
    per_pair = n // len(SHAPE_PAIRS)
    return torch.tensor([p for p in SHAPE_PAIRS for _ in range(per_pair)])


@lru_cache(maxsize=4)
def reference_features(bed: str, n: int) -> torch.Tensor:
    """The FD reference of ``bed``'s fronts: the held-out digits, or the attribute pool matched to the ``n`` shapes targets
    (the latent bed's images are shapes: the same pool and evaluation classifier).

    Computed once per process (every point of a bed is scored against it); callers must not modify it.
    """
    from onmanifold import metrics
    from onmanifold.evaluate import eval_classifier, reference_set

    if bed == "digits":
        return metrics.classifier_features(eval_classifier("digits"), reference_set("digits", "heldout"))
    x, labels = _attribute_pool(bed)
    per_pair = n // len(SHAPE_PAIRS)
    ref = torch.cat([x[(labels[:, 0] == ty) & (labels[:, 1] == sz)][: 4 * per_pair] for ty, sz in SHAPE_PAIRS])
    return metrics.classifier_features(eval_classifier(bed), ref)


@lru_cache(maxsize=2)
def _attribute_pool(bed: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The bed's attribute pool ``(images, (type, size) labels)``, drawn once per process (the validation and the test
    references both take theirs from it)."""
    return get_testbed(bed).images("attribute-pool")


@lru_cache(maxsize=4)
def _data_variance(bed: str) -> float:
    """The training data's variance in the sampler's space (Time-Shift's schedule matching), once per process: the bed's
    ``floor`` split, its training data (digits: the train split itself; shapes, whose training stream has no fixed split:
    2000 shapes drawn from the training distribution); on the latent bed the same shapes' VAE latents (posterior means,
    scaled as the model samples them)."""
    from onmanifold.temporal import image_variance

    x = get_testbed(bed).images("floor")[0]
    if bed == LATENT_BED:
        with torch.no_grad():
            x = diffusion_model(bed).encode(x.to(cell_device())).cpu()
    return image_variance(x)


def _front_point(bed: str, method: str, strength: float, value, n: int, split: str, samples_file: Path | None) -> dict:
    """Sample ``n`` guided samples of one point and score them; the test split keeps per-sample data for the bootstrap."""
    from onmanifold import metrics
    from onmanifold.artifacts import AbnormalScoreCorrection, CorrectionConfig, DetectorConfig
    from onmanifold.evaluate import eval_classifier
    from onmanifold.guidance import DiffusionPosteriorSampling, SphericalGaussianGuidance
    from onmanifold.losses import ClassifierLoss, DecodedLoss, SumOfLosses
    from onmanifold.temporal import TimeGapRecorder

    cfg = BEDS[bed]
    if bed != "digits" and n % len(SHAPE_PAIRS):
        raise ValueError(f"n: {bed} needs a multiple of {len(SHAPE_PAIRS)} samples (one block per (type, size) pair), got {n}")
    target = _targets(bed, n)
    clf = guidance_classifier(bed)
    if bed == "digits":
        loss = ClassifierLoss(clf, target)
    else:
        loss = SumOfLosses([ClassifierLoss(clf, target[:, 0], head=0), ClassifierLoss(clf, target[:, 1], head=1)])
        if bed == LATENT_BED:  # the attribute loss on the decoded estimate D(z0_hat), as the latent suite guides
            loss = DecodedLoss(loss, diffusion_model(bed).decode)
    phi = time_predictor(cfg["predictor"])
    rec = TimeGapRecorder(phi)
    if method == "none":
        plugins = []
    elif method in ASCED_METHODS:
        asced = AbnormalScoreCorrection(DetectorConfig.for_resolution(32), CorrectionConfig.for_resolution(32, eta_c=None))
        guide = DiffusionPosteriorSampling(loss, strength) if method.startswith("dps") else SphericalGaussianGuidance(loss, strength, 1)
        plugins = [asced, guide]
    else:
        data_var = _data_variance(bed) if method == "dps+tss" else None  # Time-Shift's alone (the latent bed encodes its data for it)
        plugins = label_guidance_plugins(method, strength if "+" not in method else value, loss, phi,
                                         {"dps": strength, "dsg": strength}, data_var)
    seed = 100 if split == "val" else 0
    if bed == LATENT_BED:  # the latent suite's recipe: its sampler, the empty prompt; decoded and clamped, on the CPU
        loaded = diffusion_model(get_testbed(bed).model)
        x, sec = decoded_samples(loaded.model, unconditional(n), n, seed, [rec, *plugins], batch_size=cfg["batch_size"])
    else:
        x, sec = _sample(diffusion_model(get_testbed(bed).model), [rec, *plugins], cfg["steps"], n,
                         seed=seed, eta=1.0, batch_size=cfg["batch_size"])
        x = x.clamp(-1, 1)  # on the CPU (tag._sample), where the evaluation classifier and the metrics are
    ev = eval_classifier(bed)
    with torch.no_grad():
        logits = ev(x)
    if bed == "digits":
        correct = logits.argmax(1) == target
    else:
        correct = (logits[0].argmax(1) == target[:, 0]) & (logits[1].argmax(1) == target[:, 1])
    feats = metrics.classifier_features(ev, x)
    fd = metrics.frechet_distance(feats, reference_features(bed, n))
    if samples_file is not None:
        save_tensors_atomic(samples_file, {"correct": correct, "features": feats.double()})
    return {"acc": float(correct.float().mean()), "fd": fd, "tg": rec.mean(), "s_per_sample": per_sample(sec, n)}
