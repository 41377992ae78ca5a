"""The fronts suite's analysis: dominance, the area between fronts, paired bootstrap, and its bad input."""

from __future__ import annotations

import numpy as np
import pytest

from onmanifold_bench.fronts import check_strength_grid, front_methods, fronts_suite
from onmanifold_bench.fronts_analysis import area_between, bootstrap_points, dominated, front_value, percentile_interval


def test_dominated_marks_exactly_the_points_beaten_on_both_axes():
    pts = [(0.5, 2.0), (0.6, 2.0), (0.6, 3.0), (0.9, 5.0), (0.9, 5.0)]
    # (0.5, 2) is beaten by (0.6, 2); (0.6, 3) by (0.6, 2); equal points do not dominate each other
    assert dominated(pts) == [True, False, True, False, False]


def test_front_value_is_the_best_fd_at_that_accuracy_or_more():
    pts = [(0.1, 1.0), (0.5, 2.0), (0.9, 6.0), (0.7, 1.5)]
    assert front_value(pts, 0.05) == 1.0
    assert front_value(pts, 0.3) == 1.5  # (0.7, 1.5) beats (0.5, 2.0)
    assert front_value(pts, 0.8) == 6.0
    assert front_value(pts, 0.95) == float("inf")


def test_area_between_two_staircases_by_hand():
    a = [(0.1, 1.0), (0.5, 2.0), (0.9, 4.0)]
    b = [(0.1, 1.0), (0.5, 3.0), (0.9, 8.0)]
    # on (0.1, 0.5]: 2 - 3 = -1 over 0.4; on (0.5, 0.9]: 4 - 8 = -4 over 0.4 -> -2.0
    area, lo, hi = area_between(a, b)
    assert (lo, hi) == (0.1, 0.9) and area == pytest.approx(-2.0)
    assert area_between(b, a)[0] == pytest.approx(2.0)
    assert area_between(a, a)[0] == 0.0
    # only the shared accuracy range counts: b stops at 0.5
    area, lo, hi = area_between(a, b[:2])
    assert (lo, hi) == (0.1, 0.5) and area == pytest.approx(-0.4)
    assert area_between([(0.1, 1.0)], [(0.5, 1.0), (0.6, 1.0)]) is None
    with pytest.raises(ValueError, match="points"):
        area_between([], a)


def test_bootstrap_is_paired_and_reproducible():
    rng = np.random.default_rng(0)
    n = 50
    correct = {"a": rng.random(n) < 0.5}
    correct["b"] = correct["a"].copy()  # the same samples: every replicate must agree exactly
    feats = {"a": rng.normal(size=(n, 3))}
    feats["b"] = feats["a"].copy()
    fd = lambda f: float(np.sum(f.mean(0) ** 2))  # noqa: E731
    boot = bootstrap_points(correct, feats, fd, reps=20, seed=1)
    assert np.array_equal(boot["a"], boot["b"])
    assert np.array_equal(boot["a"], bootstrap_points(correct, feats, fd, reps=20, seed=1)["a"])
    assert boot["a"][:, 0].std() > 0  # resampling actually varies the accuracy
    with pytest.raises(ValueError, match="same number of samples"):
        bootstrap_points({"a": correct["a"], "c": correct["a"][:10]}, {"a": feats["a"], "c": feats["a"][:10]}, fd, 5, 0)
    lo, hi = percentile_interval(list(range(101)))
    assert (lo, hi) == pytest.approx((2.5, 97.5))


@pytest.mark.parametrize("grid, message", [((), "empty"), ((1.0, 0.5), "increase"), ((0.0, 1.0), "positive"), ((1.0, float("nan")), "positive"),
                                           ((1.0, 1.0), "increase")])
def test_a_bad_strength_grid_is_refused_naming_it(grid, message):
    with pytest.raises(ValueError, match=f"--zetas: .*{message}"):
        check_strength_grid("--zetas", grid)
    with pytest.raises(ValueError, match="--zetas"):
        fronts_suite(quick=True, zetas=grid)


@pytest.mark.parametrize("bed", ["gmm2d", "mosaic", "latent"])
def test_a_bed_without_attributes_is_refused(bed):
    with pytest.raises(ValueError, match="bed: expected one of .*shapes-latent"):
        front_methods(bed)
    with pytest.raises(ValueError, match="bed: expected one of"):
        fronts_suite(quick=True, beds=("digits", bed))


def test_a_latent_point_needs_whole_pair_blocks():
    from onmanifold_bench.fronts import _front_point

    with pytest.raises(ValueError, match="n: shapes-latent needs a multiple of 4"):
        _front_point("shapes-latent", "none", 0.0, None, 6, "test", None)


def test_every_point_shares_the_test_seeds_and_every_correction_has_validation_cells():
    suite = fronts_suite(quick=True, beds=("digits",))
    tests = [c for c in suite.cells if c.method == "test"]
    assert {c.setting["n"] for c in tests} == {32}
    methods = {c.setting["method"] for c in tests}
    assert methods == {"none", *front_methods("digits")}
    for c in tests:
        if "+" in c.setting["method"] and c.setting["method"] not in ("dps+asced", "dsg+asced"):
            vals = [v for v in suite.cells if v.method == "val" and v.setting["method"] == c.setting["method"]
                    and v.setting["strength"] == c.setting["strength"]]
            assert len(vals) >= 2


@pytest.mark.parametrize("argv, flag", [(["fronts", "--zetas", "1,0.5"], "--zetas"), (["fronts", "--zetas", ""], "--zetas"),
                                        (["fronts", "--rates", "0.1,x"], "--rates"), (["fronts", "--rates", "0.5,2"], "--rates"),
                                        (["compose", "--zetas", "1,2"], "--zetas"), (["fronts", "--only", "bed=mosaic"], "--only")])
def test_the_command_line_refuses_a_bad_grid_in_one_line(tmp_path, capsys, argv, flag):
    from onmanifold.cli import main

    code = main(["bench", *argv, "--run-dir", str(tmp_path / "run"), "--results-dir", str(tmp_path / "res"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and flag in err
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # the output folders may have been checked for writing, nothing more


def test_a_guidance_rate_above_one_is_refused_by_the_suite():
    with pytest.raises(ValueError, match=r"--rates: expected strengths in \(0, 1\]"):
        fronts_suite(quick=True, rates=(0.5, 2.0))


def test_the_report_draws_the_front_figure_from_the_analysis_cell(tmp_path):
    """``onmanifold report`` (through :func:`onmanifold_bench.figures.method_figures`) draws each bed's front figure from
    the analysis cell's points, with its caption; the results page draws the same figure."""
    from onmanifold.images import read_caption
    from onmanifold_bench.figures import method_figures

    points = [{"method": "none", "strength": 0.0, "acc": 0.1, "fd": 2.0, "tg": 1.0, "dominated": False},
              {"method": "dps", "strength": 1.0, "acc": 0.6, "fd": 4.0, "tg": 3.0, "dominated": False},
              {"method": "dps", "strength": 10.0, "acc": 0.5, "fd": 9.0, "tg": 6.0, "dominated": True},
              {"method": "dsg", "strength": 0.4, "acc": 0.7, "fd": 3.0, "tg": 2.0, "dominated": False}]
    record = {"cell": {"method": "fronts", "setting": {"bed": "digits", "n": 256, "reps": 500}}, "metrics": {"points": points, "n": 256}}
    made, notes = method_figures([record], lambda rec: None, tmp_path)
    assert notes == [] and [p.name for p, _ in made] == ["fronts_digits.png"]
    caption = made[0][1]
    assert "hollow markers are dominated" in caption and "n = 256" in caption
    assert read_caption(tmp_path / "fronts_digits.png") == caption


def test_the_latent_bed_is_a_default_bed_with_its_own_zeta_grid_and_no_asced():
    from onmanifold_bench import cell_selector
    from onmanifold_bench.fronts import DPS_ZETAS, DSG_RATES, LATENT_DPS_ZETAS

    suite = fronts_suite(quick=True)
    assert {c.setting["bed"] for c in suite.cells} == {"digits", "shapes", "shapes-latent"}
    latent = [c for c in suite.cells if cell_selector(["bed=shapes-latent"], [], suite.cells)(c)]
    assert latent and all(c.setting["bed"] == "shapes-latent" for c in latent)
    assert not any("asced" in m for m in front_methods("shapes-latent"))  # its detector works in pixel units (the protocol)
    tests = [c for c in latent if c.method == "test"]
    assert {c.setting["method"] for c in tests} == {"none", *front_methods("shapes-latent")}
    assert sorted({c.setting["strength"] for c in tests if c.setting["method"] == "dps"}) == list(LATENT_DPS_ZETAS)
    assert sorted({c.setting["strength"] for c in tests if c.setting["method"] == "dsg"}) == list(DSG_RATES)
    digits_dps = {c.setting["strength"] for c in suite.cells if c.method == "test" and c.setting["bed"] == "digits" and c.setting["method"] == "dps"}
    assert sorted(digits_dps) == list(DPS_ZETAS)
    # a grid given to the suite replaces every bed's
    given = fronts_suite(quick=True, zetas=(1.0, 2.0))
    assert {c.setting["strength"] for c in given.cells if c.method == "test" and c.setting["method"] == "dps"} == {1.0, 2.0}


def test_the_finished_digits_cells_keep_their_keys():
    """The digits run (docs/results/fronts.json) resumes: every committed record is a cell of the default suite."""
    import json
    from pathlib import Path

    from onmanifold_bench.runner import Cell

    committed = Path(__file__).resolve().parents[2] / "docs" / "results" / "fronts.json"
    if not committed.is_file():
        pytest.skip("no committed fronts run")
    records = json.loads(committed.read_text())["records"]
    keys = {c.key for c in fronts_suite().cells}
    assert records and all(Cell.from_description(r["cell"]).key in keys for r in records)


@pytest.fixture
def tiny_latent(monkeypatch):
    """The latent bed at 2 sampling steps and 4 / 8 samples per validation / test point, with three of its methods."""
    import torch

    from onmanifold_bench import fronts, latent

    torch.set_num_threads(1)
    monkeypatch.setattr(latent, "STEPS", 2)
    monkeypatch.setattr(fronts, "QUICK_SAMPLES", (4, 8))
    monkeypatch.setattr(fronts, "front_methods", lambda bed: ("dps", "dsg", "dps+tag"))
    fronts.reference_features.cache_clear()
    yield fronts
    fronts.reference_features.cache_clear()


def test_a_tiny_latent_front_runs_through_the_suite_and_the_page_shows_it(tiny_latent, tmp_path):
    import math

    from onmanifold_bench.runner import run_suite

    run_dir = tmp_path / "run"
    suite = tiny_latent.fronts_suite(quick=True, run_dir=run_dir, beds=("digits", "shapes-latent"), zetas=(0.1,), rates=(0.2,))
    latent_cells = [c for c in suite.cells if c.setting["bed"] == "shapes-latent"]
    records = run_suite(suite, run_dir, progress=False, shard_filter=lambda c: c.setting["bed"] == "shapes-latent")
    assert len(records) == len(latent_cells)
    tests = {r["cell"]["setting"]["method"]: r["metrics"] for r in records if r["cell"]["method"] == "test"}
    assert set(tests) == {"none", "dps", "dsg", "dps+tag"}
    for m in tests.values():
        assert 0 <= m["acc"] <= 1 and math.isfinite(m["fd"]) and math.isfinite(m["tg"])
    assert tests["dps+tag"]["value"] in (0.5, 2.0)  # TAG's omega0, chosen on the validation cells
    analysis = next(r["metrics"] for r in records if r["cell"]["method"] == "fronts")
    assert analysis["n"] == 8 and len(analysis["points"]) == 4

    stale = {**records[0], "cell": {**records[0]["cell"], "setting": {**records[0]["cell"]["setting"], "n": 3}}}  # of no cell of the suite
    page = suite.report([*records, stale], tmp_path / "results", "onmanifold bench fronts --only bed=shapes-latent", run_dir).read_text()
    digits, latent_part = page.split("## digits", 1)[1].split("## shapes-latent", 1)
    assert "Not run" in digits and "Not run" not in latent_part
    assert f"Cells finished: {len(latent_cells)} of {len(latent_cells)};" in latent_part
    assert "![shapes-latent fronts](figures/fronts_shapes-latent.png)" in latent_part and "### Points" in latent_part
    assert (tmp_path / "results" / "figures" / "fronts_shapes-latent.png").is_file()


@pytest.mark.parametrize("method, value", [("dps+tag-inline", 2.0), ("dps+es", 1.005), ("dps+tcs", 5), ("dps+tss", 10), ("dps+langevin", 0.05),
                                           ("dsg+tag", 2.0)])
def test_every_latent_correction_applies(tiny_latent, method, value):
    """Each correction of the latent bed runs on latents (TAG and TCS with the latent time predictor, Time-Shift with the
    latents' variance) and gives a finite point."""
    import math

    strength = 0.1 if method.startswith("dps") else 0.2
    out = tiny_latent._front_point("shapes-latent", method, strength, value, 4, "val", None)
    assert 0 <= out["acc"] <= 1 and math.isfinite(out["fd"]) and math.isfinite(out["tg"])
