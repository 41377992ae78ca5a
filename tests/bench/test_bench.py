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


def test_unknown_suite_is_refused():
    with pytest.raises(SystemExit, match="suite"):
        main(["bench", "nope"])


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
    # a fresh checkout: empty run dir; nothing is selected to run, so every record must come from the summary
    again = ["bench", "tag", "--quick", "--only", "method=none", "--run-dir", str(tmp_path / "new"), "--results-dir", str(tmp_path / "res2"),
             "--import-results", str(tmp_path / "res" / "tag.json"), "--no-progress"]
    assert main(again) == 0
    assert f"imported {len(old_cells)} finished cells" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "new" / "cells").glob("*.json")) == old_cells
    log = (tmp_path / "new" / "commands.log").read_text().splitlines()
    assert len(log) == 2 and "phi=learned" in log[0] and "--import-results" in log[1]
    assert main(["bench", "dsg", "--quick", "--run-dir", str(tmp_path / "x"), "--import-results", str(tmp_path / "res" / "tag.json")]) == 2
    assert "results_json: " in capsys.readouterr().err and not (tmp_path / "x" / "cells").exists()
