"""The benchmark suites compute their cells on the runner's device (issue 13, item 3).

``run_suite(..., device=STAND_IN)`` inside :class:`standin.StandInDevice`: every network a cell samples with (the
diffusion model, TAG's time predictor, the guidance classifier, from ``onmanifold_bench.models``) is placed on the
stand-in device, which rejects any CPU tensor (other than a 0-dim scalar) meeting its tensors; the samples come back
to the CPU where the evaluation classifier and the metrics run. A few cells of every sampling suite finish there, and
their metrics equal the CPU run's of the same cells.

Kept small: a handful of samples and steps per cell (the suites' sample counts and step counts shrunk here), and the
cells that read other cells' choices (a validated knob) get fixed records instead (:func:`_fixed_records`), so each
picked cell runs alone. ASCED's oracle control reads the ground-truth masks of the original run for real. Left out for
their cost on the stand-in (tens of seconds each: the exact time posterior over 100 times per call): tag's tls-cosine,
toy cells with the exact time posterior, and the timing cells (cost, step-time, overhead), whose metrics are wall times.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from onmanifold_bench.runner import Cell, Suite, run_suite
from standin import STAND_IN, StandInDevice

TIMING = ("s_per_sample", "seconds", "s_per_sample_decoded_watch", "decoder_s_per_sample_watch")
STEPS = 6  # the sampling steps of every picked cell (the suites' own counts shrunk)


def _fixed_records(cells, run_dir, cell_method, /, **match):
    """One finished record for any query: every knob a cell may read from its validation cells, fixed."""
    from onmanifold_bench.tag import LABEL_KNOBS

    method = match.get("method")
    value = LABEL_KNOBS[method][1][1] if method in LABEL_KNOBS else 1.0
    setting = {"zeta": 1.0, "g_r": 0.2, "omega0": 2.0, "value": value}
    metrics = {"fd": 1.0, "acc": 0.5, "w1": 1.0, "joint_acc": 0.5, "val_fd": 1.0, "psnr": 10.0, "acc_type": 0.5, "zeta": 1.0}
    return [{"cell": {"method": cell_method, "setting": setting}, "metrics": metrics}]


def _capped_steps(sample):
    @functools.wraps(sample)
    def capped(loaded, plugins, steps, n, seed, **kw):
        return sample(loaded, plugins, min(steps, STEPS), n, seed, **kw)

    return capped


def _small(cell: Cell, **sizes) -> Cell:
    return Cell(cell.method, {**cell.setting, **{k: v for k, v in sizes.items() if k in cell.setting}}, cell.shard, cell.seeds)


def _pick(suite: Suite, wanted: list[tuple[str, dict]], **sizes) -> Suite:
    """``suite`` with only the wanted cells (method and a part of the setting; each must match one cell), shrunk."""
    cells = []
    for method, part in wanted:
        found = [c for c in suite.cells if c.method == method and all(c.setting.get(k) == v for k, v in part.items())]
        assert len(found) == 1, (method, part, len(found))
        cells.append(_small(found[0], **sizes))
    return Suite(suite.name, cells, suite.run_cell)


@pytest.fixture
def small(monkeypatch):
    """Every suite shrunk (steps, reference sets) and its knob choices fixed; the caches of reference features emptied
    before and after (they hold the shrunk references meanwhile)."""
    from onmanifold import evaluate
    from onmanifold.testbeds import get_testbed
    from onmanifold_bench import asced, compose, dsg, fronts, latent, tag

    for module in (tag, fronts, dsg, compose, latent):
        monkeypatch.setattr(module, "finished_records", _fixed_records)
    monkeypatch.setattr(tag, "_sample", _capped_steps(tag._sample))
    monkeypatch.setattr(fronts, "_sample", _capped_steps(fronts._sample))
    monkeypatch.setattr(asced, "STEPS", 10)  # the detection window [n_d, n_c) = [2, 5)
    monkeypatch.setattr(latent, "STEPS", STEPS)
    monkeypatch.setattr(compose, "compose_run", functools.partial(compose.compose_run, steps=STEPS))
    monkeypatch.setattr(tag, "_shape_reference", lambda per_pair: get_testbed("shapes").images("val", 16)[0])
    monkeypatch.setattr(evaluate, "reference_set",
                        lambda bed, which="heldout": get_testbed(bed).images("reference" if which == "heldout" else "floor", 64)[0])
    caches = (evaluate._reference_features, fronts.reference_features)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def _suite(name: str, run_dir) -> Suite:
    """The picked cells of the suite ``name`` (each cell shrunk to a few samples), built for ``run_dir``."""
    from onmanifold_bench import asced, compose, dsg, fronts, latent, tag
    from onmanifold_bench.foundation import models_suite

    if name == "tag":
        return _pick(tag.tag_suite(quick=True, run_dir=run_dir), [
            ("toy-val", {"eps": "exact", "phi": "learned", "omega0": 0.3}),
            ("corrupt", {"sigma": 0.1, "variant": "post"}),
            ("label", {"method": "dps+tss"}),
            ("shapes", {"variant": "multi-inline"}),
        ], n=4, per_pair=1)
    if name == "fronts":
        return _pick(fronts.fronts_suite(quick=True, run_dir=run_dir), [
            ("val", {"bed": "digits", "method": "dps+tag-inline", "strength": 0.3, "value": 0.5}),
            ("test", {"bed": "shapes", "method": "dps+asced", "strength": 0.3}),
        ], n=4)
    if name == "dsg":
        return _pick(dsg.dsg_suite(quick=True, run_dir=run_dir), [
            ("dsg", {"bed": "digits", "task": "box", "steps": 20}),
            ("dps-val", {"bed": "shapes", "task": "sr", "steps": 20, "zeta": 0.3}),
        ], n=4, steps=STEPS)
    if name == "asced":
        return _pick(asced.asced_suite(quick=True, run_dir=run_dir), [
            ("original", {"bed": "shapes"}), ("oracle-ttc", {"bed": "shapes"}), ("asced", {"bed": "digits"}),
        ])
    if name == "compose":
        return _pick(compose.compose_suite(quick=True, run_dir=run_dir), [("dsg+tag+asced", {})], n=4)
    if name == "latent":
        return _pick(latent.latent_suite(quick=True, run_dir=run_dir), [
            ("cfg+tag", {"omega0": 1.0}), ("label-dps", {}), ("asced", {}),
        ], n=4)
    assert name == "models"
    return _pick(models_suite(quick=True), [("gmm2d-mlp", {})], n=50)


def _assert_close(got, expected, where: str) -> None:
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for k in expected:
            if k not in TIMING:
                _assert_close(got[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-4), f"{where}: {got} on the stand-in, {expected} on the CPU"
    else:
        assert got == expected, f"{where}: {got!r} on the stand-in, {expected!r} on the CPU"


@pytest.mark.parametrize("name", ["tag", "fronts", "dsg", "asced", "compose", "latent", "models"])
def test_the_cells_of_a_suite_run_on_the_runner_device_and_give_the_cpu_metrics(name, tmp_path, small, monkeypatch):
    from onmanifold.sampler import DDIMSampler

    torch.set_num_threads(1)
    sampled_on: set = set()  # the device of every sampling run's output: the runs must happen on the device, not only not fail
    sample = DDIMSampler.sample

    def recording(self, *args, **kwargs):
        out = sample(self, *args, **kwargs)
        sampled_on.add(out.device)
        return out

    monkeypatch.setattr(DDIMSampler, "sample", recording)
    expected = run_suite(_suite(name, tmp_path / "cpu"), tmp_path / "cpu", progress=False)
    assert sampled_on == {torch.device("cpu")}
    sampled_on.clear()
    suite = _suite(name, tmp_path / "device")
    with StandInDevice():
        got = run_suite(suite, tmp_path / "device", progress=False, device=STAND_IN)
    assert sampled_on == {STAND_IN}
    assert len(got) == len(expected) == len(suite.cells)
    for a, b in zip(got, expected):
        assert a["cell"] == b["cell"]
        _assert_close(a["metrics"], b["metrics"], f"{name}: {a['cell']['method']} {a['cell']['setting']}")


def test_the_model_cache_moves_copies_and_leaves_the_cpu_networks_alone(tmp_path):
    """On the CPU a cell gets the networks the process loaded (the library's own guidance classifier); on a device,
    copies there, loaded once per device; the library's cached CPU classifier stays on the CPU."""
    from onmanifold import evaluate
    from onmanifold_bench import models

    seen = {}

    def run_cell(cell):
        seen[cell.setting["run"]] = (models.guidance_classifier("digits"), models.time_predictor("digits-time"),
                                     models.diffusion_model("gmm2d-mlp"))
        assert models.guidance_classifier("digits") is seen[cell.setting["run"]][0]  # cached per device
        return {}

    for run, device in (("cpu", None), ("device", STAND_IN)):
        with StandInDevice():
            run_suite(Suite("cache", [Cell("m", {"run": run})], run_cell), tmp_path / run, progress=False, device=device)
    (clf, phi, loaded), (clf_d, phi_d, loaded_d) = seen["cpu"], seen["device"]
    assert clf is evaluate.guidance_classifier("digits")
    assert next(clf.parameters()).device.type == "cpu"
    for network in (clf_d, phi_d, loaded_d.model):
        assert next(network.parameters()).device == STAND_IN
    assert clf_d is not clf and phi_d is not phi and loaded_d is not loaded
