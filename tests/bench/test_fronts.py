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


def test_a_bed_without_attributes_is_refused():
    with pytest.raises(ValueError, match="bed: expected one of"):
        front_methods("gmm2d")
    with pytest.raises(ValueError, match="bed: expected one of"):
        fronts_suite(quick=True, beds=("gmm2d",))


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
                                        (["compose", "--zetas", "1,2"], "--zetas")])
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
