"""Bench command plumbing: suite registry, cell selection, the DSG suite's structure."""

import pytest

from onmanifold_bench import cell_selector
from onmanifold_bench.dsg import TABLE3, dsg_suite, table3
from onmanifold_bench.foundation import models_suite
from onmanifold_bench.runner import Cell, CellNotReady
from onmanifold.cli import main


def test_list_suites(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "models" in out and "dsg" in out


def test_unknown_suite_is_refused(capsys):
    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "suite: expected one of" in err and len(err.splitlines()) == 1


def test_cell_selector():
    keep = cell_selector(["bed=digits", "steps=1000,100"], ["method=dps-val"])
    assert keep(Cell("dps", {"bed": "digits", "steps": 1000}))
    assert not keep(Cell("dps", {"bed": "shapes", "steps": 1000}))
    assert not keep(Cell("dps", {"bed": "digits", "steps": 50}))
    assert not keep(Cell("dps-val", {"bed": "digits", "steps": 100}))
    assert cell_selector([], []) is None
    with pytest.raises(ValueError, match="--only"):
        cell_selector(["bed"], [])


def test_dsg_suite_uses_table3_and_sweeps_before_use():
    s = dsg_suite(False, "unused")
    methods = [c.method for c in s.cells]
    for c in s.cells:
        if c.method == "dsg":
            assert (c.setting["k"], c.setting["g_r"]) == table3(c.setting["task"], c.setting["steps"])
        if c.method == "dps":  # every DPS headline cell comes after its validation sweep
            pos = s.cells.index(c)
            sweep = [i for i, d in enumerate(s.cells) if d.method == "dps-val" and all(d.setting[k] == c.setting[k] for k in ("bed", "task", "steps"))]
            assert sweep and max(sweep) < pos
            assert c.setting["n"] >= 256  # at least 256 held-out images per headline cell, DDPM-1000 included
    assert methods.index("label-dps") > max(i for i, m in enumerate(methods) if m == "label-dps-val")
    assert TABLE3["inpainting"][100] == (1, 0.2) and TABLE3["sr"][1000] == (20, 0.2)
    # claim (b)'s time fraction has its own same-process cell for every (bed, task) with a DPS-1000 cell
    timed = {(c.setting["bed"], c.setting["task"]) for c in s.cells if c.method == "time-vs-1000"}
    assert timed == {(c.setting["bed"], c.setting["task"]) for c in s.cells if c.method == "dps" and c.setting["steps"] == 1000}


def test_models_suite_covers_every_bundled_model():
    names = {c.method for c in models_suite().cells}
    assert {"gmm2d-mlp", "digits-unet", "shapes-unet", "digits-classifier", "digits-eval-classifier",
            "shapes-classifier", "shapes-eval-classifier", "ddim50-vs-DDIMPipeline"} == names


def test_tag_suite_sweeps_before_use_and_runs_a_toy_cell(tmp_path):
    from onmanifold_bench.tag import tag_suite

    s = tag_suite(True, tmp_path)
    pos = {c: i for i, c in enumerate(s.cells)}
    shared = {"toy": ("eps",), "corrupt": ("sigma",), "fewstep": ("nfe", "spacing", "eta"), "label": (), "shapes": ()}
    for c in s.cells:  # every test cell that reads a validation choice comes after all of its sweep
        if c.method in shared:
            val = [d for d in s.cells if d.method == f"{c.method}-val" and all(d.setting[k] == c.setting[k] for k in shared[c.method])]
            assert val and max(pos[d] for d in val) < pos[c]
    cell = next(c for c in s.cells if c.method == "toy-val")
    m = s.run_cell(cell)
    assert 0 < m["w1"] < 20
    with pytest.raises(CellNotReady, match="must run before"):
        s.run_cell(next(c for c in s.cells if c.method == "toy" and c.setting["variant"] == "tag-oracle"))


def test_results_page_lists_every_command_that_wrote_the_run(tmp_path):
    base = ["bench", "tag", "--quick", "--only", "method=toy-val", "--only", "eps=mlp", "--run-dir", str(tmp_path), "--results-dir", str(tmp_path),
            "--no-progress"]
    assert main(base + ["--only", "phi=learned"]) == 0
    assert main(base + ["--only", "phi=oracle"]) == 0
    log = (tmp_path / "commands.log").read_text().splitlines()
    assert len(log) == 2 and "phi=learned" in log[0] and "phi=oracle" in log[1]
    page = (tmp_path / "tag.md").read_text()
    assert "phi=learned" in page and "phi=oracle" in page


def test_import_results_carries_finished_cells_and_commands_into_a_fresh_run_dir(tmp_path, capsys):
    first = ["bench", "tag", "--quick", "--only", "method=toy-val", "--only", "eps=mlp", "--only", "phi=learned", "--only", "omega0=0.3", "--run-dir",
             str(tmp_path / "old"), "--results-dir", str(tmp_path / "res"), "--no-progress"]
    assert main(first) == 0
    old_cells = sorted(p.name for p in (tmp_path / "old" / "cells").glob("*.json"))
    assert old_cells
    capsys.readouterr()
    # a fresh checkout: empty run dir; the selected cell is in the summary, so every record must come from it
    again = ["bench", "tag", "--quick", "--only", "method=toy-val", "--only", "eps=mlp", "--only", "phi=learned", "--only", "omega0=0.3",
             "--run-dir", str(tmp_path / "new"), "--results-dir", str(tmp_path / "res2"),
             "--import-results", str(tmp_path / "res" / "tag.json"), "--no-progress"]
    assert main(again) == 0
    assert f"imported {len(old_cells)} finished cells" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "new" / "cells").glob("*.json")) == old_cells
    log = (tmp_path / "new" / "commands.log").read_text().splitlines()
    assert len(log) == 2 and "phi=learned" in log[0] and "--import-results" in log[1]
    assert main(["bench", "dsg", "--quick", "--run-dir", str(tmp_path / "x"), "--import-results", str(tmp_path / "res" / "tag.json")]) == 2
    assert "results_json: " in capsys.readouterr().err and not (tmp_path / "x" / "cells").exists()


# ------------------------------------------------------------------------------------------ the bench command's promises
# A toy suite stands in for the real ones (registered by monkeypatching the suite registry): the command's behaviour is
# the same for every suite, and the toy's cells take no time.


def _toy(monkeypatch, calls: list):
    import onmanifold_bench
    from onmanifold_bench.runner import Suite, finished_records

    def toy_suite(quick: bool = False, run_dir="runs/toy"):
        """A validation sweep and a test cell that reads its choice."""
        cells = [Cell("val", {"knob": k}) for k in (1.0, 2.0, 3.0)] + [Cell("test", {"n": 4})]

        def run_cell(cell):
            calls.append(cell.method)
            if cell.method == "val":
                return {"score": (cell.setting["knob"] - 2.0) ** 2}
            val = finished_records(cells, run_dir, "val")
            return {"chosen": min(val, key=lambda r: r["metrics"]["score"])["cell"]["setting"]["knob"]}

        return Suite("toy", cells, run_cell, description="toy")

    monkeypatch.setattr(onmanifold_bench, "_suites", lambda: {"toy": toy_suite})
    return toy_suite


def _bench(tmp_path, run: str, *extra: str) -> int:
    return main(["bench", "toy", "--run-dir", str(tmp_path / run), "--results-dir", str(tmp_path / "results"), "--no-progress", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_filter_that_matches_no_cell_is_an_error(tmp_path, monkeypatch, capsys):
    calls: list = []
    _toy(monkeypatch, calls)
    assert _bench(tmp_path, "run", "--only", "method=nosuch") == 2
    err = _one_error_line(capsys)
    assert "--only: 'method=nosuch' matches no cell" in err and "val, test" not in err and "test, val" in err
    assert _bench(tmp_path, "run", "--exclude", "knob=7") == 2
    assert "--exclude: 'knob=7' matches no cell" in _one_error_line(capsys)
    assert _bench(tmp_path, "run", "--only", "method=test", "--only", "knob=1.0") == 2
    assert "together match no cell" in _one_error_line(capsys)
    assert calls == [] and not list(tmp_path.glob("results/toy.*")) and not list(tmp_path.glob("run/cells/*.json"))


def test_a_missing_dependency_is_one_line_naming_the_cell(tmp_path, monkeypatch, capsys):
    calls: list = []
    _toy(monkeypatch, calls)
    assert _bench(tmp_path, "run", "--only", "method=test") == 2
    err = _one_error_line(capsys)
    assert "needs cell val__knob=1.0" in err and "--only" in err
    assert not list(tmp_path.glob("results/toy.*"))


def test_a_missing_metric_is_one_line_naming_the_cell_and_the_metric(tmp_path, monkeypatch, capsys):
    import json

    from onmanifold_bench.runner import record_checksum

    calls: list = []
    _toy(monkeypatch, calls)
    assert _bench(tmp_path, "run", "--only", "method=val") == 0
    path = tmp_path / "run" / "cells" / f"{Cell('val', {'knob': 2.0}).key}.json"
    rec = json.loads(path.read_text())
    rec["metrics"] = {"loss": 0.0}  # a well-formed record of another version of the suite
    rec["checksum"] = record_checksum(rec)
    path.write_text(json.dumps(rec))
    capsys.readouterr()
    assert _bench(tmp_path, "run", "--only", "method=test") == 2
    err = _one_error_line(capsys)
    assert f"cell {Cell('val', {'knob': 2.0}).key} has no metric 'score'" in err and "test__n=4" in err and "loss" in err


def test_committed_results_are_never_lost(tmp_path, monkeypatch, capsys):
    import json

    calls: list = []
    _toy(monkeypatch, calls)
    assert _bench(tmp_path, "first") == 0
    summary = tmp_path / "results" / "toy.json"
    before = summary.read_bytes()
    assert len(json.loads(before)["records"]) == 4 and calls == ["val", "val", "val", "test"]
    capsys.readouterr()

    # a fresh run dir that is told not to import, running one cell: it would shrink the summary, so it refuses up front
    calls.clear()
    assert _bench(tmp_path, "bare", "--no-import", "--only", "knob=1.0") == 2
    err = _one_error_line(capsys)
    assert "holds 4 finished records and this run would leave 1" in err
    assert f"--import-results {summary}" in err and "--force" in err
    assert summary.read_bytes() == before and calls == [] and not list((tmp_path / "bare" / "cells").glob("*.json"))

    # a fresh run dir seeds itself from the committed summary by default: nothing is recomputed, nothing lost
    assert _bench(tmp_path, "fresh", "--only", "knob=1.0") == 0
    assert f"{tmp_path / 'fresh'} is new: imported 4 finished cells" in capsys.readouterr().out
    assert calls == [] and len(json.loads(summary.read_text())["records"]) == 4
    assert "onmanifold bench toy" in (tmp_path / "fresh" / "commands.log").read_text()  # the history came along

    # --force overwrites on purpose
    assert _bench(tmp_path, "bare", "--no-import", "--only", "knob=1.0", "--force") == 0
    assert len(json.loads(summary.read_text())["records"]) == 1 and calls == ["val"]


def test_every_suite_declares_its_page():
    from onmanifold_bench import SUITES

    suites = {name: factory(False, "unused") for name, factory in SUITES().items()}
    assert {name for name, s in suites.items() if s.report is not None} == {"dsg", "tag", "asced", "asced-mosaic", "compose", "speed", "latent", "fronts"}
    assert all(callable(s.report) for s in suites.values() if s.report is not None)
