"""The resumable benchmark runner: stable keys, resume, corrupt files, strict JSON, summaries, SIGKILL; records checked by
schema and checksum, inputs tracked (an upstream change recomputes downstream cells), run directories shared by processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from onmanifold_bench.runner import Cell, CellNotReady, MissingMetricError, Suite, finished_records, record_checksum, run_suite, summarize


def _trivial_suite(calls: list, n: int = 5, name: str = "trivial") -> Suite:
    cells = [Cell("m" + str(i % 2), {"index": i, "scale": 0.5 * i}, shard=i % 2, seeds=(i,)) for i in range(n)]

    def run_cell(cell: Cell) -> dict:
        calls.append(cell)
        i = cell.setting["index"]
        return {"value": i, "third": i / 3.0, "label": f"c{i}"}

    return Suite(name, cells, run_cell, description="toy suite", columns=None)


def _cell_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "cells").iterdir() if not p.name.startswith("."))


# ------------------------------------------------------------------------------------------ keys


def test_keys_stable_distinct_and_equal_for_equal_cells():
    a = Cell("dsg", {"gamma": 0.1, "steps": 50}, shard=0, seeds=(0, 1))
    b = Cell("dsg", {"steps": 50, "gamma": 0.1}, shard=0, seeds=[0, 1])  # other order, list seeds
    assert a == b and hash(a) == hash(b) and a.key == b.key
    # a literal: the key must not depend on the process (no salted hash())
    assert a.key == Cell("dsg", {"gamma": 0.1, "steps": 50}, 0, (0, 1)).key
    assert a.key.startswith("dsg__gamma=0.1_steps=50__shard0__") and len(a.key.rsplit("__", 1)[1]) == 10
    others = [
        Cell("dsg", {"gamma": 0.2, "steps": 50}, 0, (0, 1)),
        Cell("dsg", {"gamma": 0.1, "steps": 50}, 1, (0, 1)),
        Cell("dsg", {"gamma": 0.1, "steps": 50}, 0, (0, 2)),
        Cell("tag", {"gamma": 0.1, "steps": 50}, 0, (0, 1)),
        Cell("dsg", {"gamma": 0.1}, 0, (0, 1)),
    ]
    keys = {a.key} | {c.key for c in others}
    assert len(keys) == 1 + len(others)
    assert all(c != a for c in others)
    weird = Cell("a/b c:*?", {"path": "../x y", "nested": {"k": [1, 2]}})
    assert all(ch.isalnum() or ch in "._=+-" for ch in weird.key) and not weird.key.startswith(".")
    # the key is the same in a fresh interpreter (different hash seed)
    code = "from onmanifold_bench.runner import Cell; print(Cell('dsg', {'gamma': 0.1, 'steps': 50}, 0, (0, 1)).key)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert out.stdout.strip() == a.key


def test_cell_rejects_non_json_settings():
    with pytest.raises(ValueError):
        Cell("m", {"x": float("nan")})
    with pytest.raises(TypeError):
        Cell("m", {"x": object()})
    with pytest.raises(TypeError):
        Cell("m", {1: "int key"})
    assert Cell("m", {"t": (1, 2)}).setting == {"t": [1, 2]}


# ------------------------------------------------------------------------------------------ resume


def test_run_and_resume(tmp_path):
    calls: list = []
    suite = _trivial_suite(calls)
    records = run_suite(suite, str(tmp_path / "run"), progress=False)  # str path accepted
    assert len(calls) == 5 and len(records) == 5
    files = _cell_files(tmp_path / "run")
    assert [p.name for p in files] == sorted(f"{c.key}.json" for c in suite.cells)
    for cell, rec in zip(suite.cells, records):
        assert rec["cell"] == cell.describe()
        assert rec["metrics"]["value"] == cell.setting["index"]
        assert rec["seconds"] >= 0 and isinstance(rec["finished_at"], str)
        assert json.loads((tmp_path / "run" / "cells" / f"{cell.key}.json").read_text()) == rec

    calls.clear()
    again = run_suite(suite, tmp_path / "run", progress=False)
    assert calls == []
    assert again == records


def test_corrupt_cell_file_is_recomputed(tmp_path):
    calls: list = []
    suite = _trivial_suite(calls)
    records = run_suite(suite, tmp_path, progress=False)
    victim = suite.cells[2]
    path = tmp_path / "cells" / f"{victim.key}.json"
    path.write_text(path.read_text()[:25])  # a truncated write
    calls.clear()
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = run_suite(suite, tmp_path, progress=False)
    assert calls == [victim]
    assert json.loads(path.read_text())["metrics"] == records[2]["metrics"]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in records]


def test_file_of_another_cell_is_recomputed(tmp_path):
    calls: list = []
    suite = _trivial_suite(calls)
    run_suite(suite, tmp_path, progress=False)
    a, b = (tmp_path / "cells" / f"{suite.cells[i].key}.json" for i in (0, 1))
    a.write_text(b.read_text())
    calls.clear()
    with pytest.warns(RuntimeWarning, match="another cell"):
        run_suite(suite, tmp_path, progress=False)
    assert calls == [suite.cells[0]]


def test_nan_metric_raises_and_writes_nothing(tmp_path):
    cells = [Cell("ok", {"i": 0}), Cell("bad", {"i": 1}), Cell("after", {"i": 2})]

    def run_cell(cell):
        return {"loss": float("nan") if cell.method == "bad" else 1.0}

    suite = Suite("nan", cells, run_cell)
    with pytest.raises(ValueError, match=r"(?s)bad__.*'loss'.*nan"):
        run_suite(suite, tmp_path, progress=False)
    names = {p.name for p in (tmp_path / "cells").iterdir()}
    assert names == {f"{cells[0].key}.json"}  # no file (and no temp file) for the bad cell

    suite_inf = Suite("inf", [Cell("bad", {"i": 1})], lambda c: {"nested": {"x": [0.0, math.inf]}})
    with pytest.raises(ValueError, match="inf"):
        run_suite(suite_inf, tmp_path / "inf", progress=False)
    assert list((tmp_path / "inf" / "cells").iterdir()) == []


def test_non_dict_result_raises_type_error(tmp_path):
    cell = Cell("scalar", {"i": 0})
    suite = Suite("nondict", [cell], lambda c: 0.5)
    with pytest.raises(TypeError, match=cell.key):
        run_suite(suite, tmp_path, progress=False)
    assert list((tmp_path / "cells").iterdir()) == []


def test_numpy_and_tensor_scalars_are_converted(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    suite = Suite("np", [Cell("m", {})], lambda c: {"a": np.float32(0.25), "b": np.int64(3), "c": torch.tensor(2.0)})
    (rec,) = run_suite(suite, tmp_path, progress=False)
    assert rec["metrics"] == {"a": 0.25, "b": 3, "c": 2.0}


def test_shard_filter(tmp_path):
    calls: list = []
    suite = _trivial_suite(calls)
    recs = run_suite(suite, tmp_path, progress=False, shard_filter=lambda c: c.shard == 0)
    assert [c.shard for c in calls] == [0, 0, 0] and len(recs) == 3
    calls.clear()
    recs = run_suite(suite, tmp_path, progress=False, shard_filter=lambda c: c.shard == 1)
    assert [c.shard for c in calls] == [1, 1]
    assert [r["metrics"]["value"] for r in recs] == [0, 1, 2, 3, 4]  # other shard loaded, suite order


def test_duplicate_cells_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        Suite("dup", [Cell("m", {"a": 1}), Cell("m", {"a": 1})], lambda c: {})


# ------------------------------------------------------------------------------------------ summary


def test_summarize_writes_json_and_markdown(tmp_path):
    calls: list = []
    suite = _trivial_suite(calls)
    records = run_suite(suite, tmp_path / "run", progress=False)
    command = "python -m onmanifold bench trivial --out 'results dir'"
    jp, mp = summarize(suite, records, str(tmp_path / "results"), command, date="2025-01-02")
    assert jp == tmp_path / "results" / "trivial.json" and mp == tmp_path / "results" / "trivial.md"
    data = json.loads(jp.read_text())
    assert data["suite"] == "trivial" and data["command"] == command and data["date"] == "2025-01-02"
    assert data["description"] == "toy suite" and data["records"] == records
    md = mp.read_text()
    assert f"```\n{command}\n```" in md and "2025-01-02" in md and md.startswith("# trivial")
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0] == "| method | index | scale | shard | value | third | label |"
    assert len(table) == 2 + 5
    assert table[2 + 4] == "| m0 | 4 | 2 | 0 | 4 | 1.333 | c4 |"  # 4 significant digits
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]  # no temp files

    suite.columns = ["third"]
    _, mp = summarize(suite, records, tmp_path / "results", ["run.py", "--x", "a b"])
    md = mp.read_text()
    assert "| method | index | scale | shard | third |" in md and "run.py --x 'a b'" in md
    import datetime

    assert datetime.date.today().isoformat() in md


def test_import_records_resumes_a_fresh_run_dir_from_the_summary(tmp_path):
    from onmanifold_bench.runner import import_records

    calls: list = []
    suite = _trivial_suite(calls)
    records = run_suite(suite, tmp_path / "old", progress=False)
    jp, _ = summarize(suite, records[:3], tmp_path / "results", "bench trivial --only a\nbench trivial")
    # a fresh checkout: an empty run dir, plus one cell already finished there
    run_suite(suite, tmp_path / "new", progress=False, shard_filter=lambda c: c == suite.cells[0])
    calls.clear()
    written, kept, dropped, command = import_records(suite, tmp_path / "new", jp)
    assert (written, kept, dropped) == (2, 1, []) and command == "bench trivial --only a\nbench trivial"
    again = run_suite(suite, tmp_path / "new", progress=False)
    assert calls == suite.cells[3:]  # only the cells absent from the summary are computed
    assert again[1:3] == records[1:3]  # imported records verbatim; cell 0 kept its own record
    # records of cells a changed suite no longer has are not imported, and named
    smaller = _trivial_suite([], n=2)
    assert import_records(smaller, tmp_path / "y", jp)[:3] == (2, 0, [suite.cells[2].key])
    assert len(_cell_files(tmp_path / "y")) == 2
    # a summary of another suite is refused by name
    with pytest.raises(ValueError, match="results_json: .* suite 'trivial', expected 'other'"):
        import_records(_trivial_suite([], name="other"), tmp_path / "x", jp)
    (tmp_path / "bad.json").write_text('{"suite": "trivial", "records": [{"cell": 1}]}')
    with pytest.raises(ValueError, match="results_json: record 0 .* not a finished cell record"):
        import_records(suite, tmp_path / "z", tmp_path / "bad.json")
    (tmp_path / "nan.json").write_text('{"suite": "trivial", "records": [], "x": NaN}')
    with pytest.raises(ValueError, match="results_json: cannot read"):
        import_records(suite, tmp_path / "z", tmp_path / "nan.json")


def test_command_history_keeps_imported_commands_first(tmp_path):
    from onmanifold_bench import _command_history

    _command_history(str(tmp_path), "bench s --only a=1")
    out = _command_history(str(tmp_path), "", "bench s --old\nbench s --only a=1")
    assert out == "bench s --old\nbench s --only a=1"
    assert _command_history(str(tmp_path), "bench s") == "bench s --old\nbench s --only a=1\nbench s"


# ------------------------------------------------------------------------------------------ SIGKILL

_N_KILL = 8

_SCRIPT = """
import sys, time
from onmanifold_bench.runner import Cell, Suite, run_suite

def cells():
    return [Cell("sleepy", {{"index": i}}, shard=i % 2, seeds=(i,)) for i in range({n})]

def run_cell(cell):
    time.sleep(0.4)
    return {{"value": cell.setting["index"]}}

if __name__ == "__main__":
    run_suite(Suite("kill", cells(), run_cell), sys.argv[1], progress=False)
"""


def test_sigkill_loses_at_most_the_cell_in_flight(tmp_path):
    script = tmp_path / "bench_script.py"
    script.write_text(textwrap.dedent(_SCRIPT.format(n=_N_KILL)))
    run_dir = tmp_path / "run"
    cells_dir = run_dir / "cells"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (cells_dir.is_dir() and len([p for p in cells_dir.glob("*.json")]) >= 2):
            assert proc.poll() is None, f"script died: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "script wrote no cells in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    cells = [Cell("sleepy", {"index": i}, shard=i % 2, seeds=(i,)) for i in range(_N_KILL)]
    keys = [c.key for c in cells]
    complete = []
    for p in cells_dir.iterdir():
        if p.name.startswith("."):
            assert p.name.endswith(".tmp"), f"stray file {p.name}"  # a temp file of the killed write
            continue
        assert p.suffix == ".json" and p.stem in keys, f"stray file {p.name}"
        rec = json.loads(p.read_text())  # complete, valid JSON
        assert rec["metrics"] == {"value": keys.index(p.stem)}
        complete.append(keys.index(p.stem))
    n_before = len(complete)
    assert 2 <= n_before < _N_KILL
    assert sorted(complete) == list(range(n_before))  # cells run in order: a prefix is done

    calls: list = []

    def run_cell(cell):
        calls.append(cell.setting["index"])
        return {"value": cell.setting["index"]}

    records = run_suite(Suite("kill", cells, run_cell), run_dir, progress=False)
    assert len(calls) == _N_KILL - n_before
    assert calls == list(range(n_before, _N_KILL))
    assert [r["metrics"]["value"] for r in records] == list(range(_N_KILL))
    assert [r["cell"] for r in records] == [c.describe() for c in cells]


# ------------------------------------------------------------------------------------------ checked records


def _edit(path: Path, change) -> None:
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec, indent=2))


def test_hand_edited_value_is_detected_and_recomputed(tmp_path):
    calls: list = []
    suite = _trivial_suite(calls)
    records = run_suite(suite, tmp_path, progress=False)
    assert all(r["checksum"] == record_checksum(r) for r in records)
    victim = suite.cells[3]
    path = tmp_path / "cells" / f"{victim.key}.json"
    _edit(path, lambda r: r["metrics"].update(value=999))  # a plausible, well-formed, hand-edited value
    calls.clear()
    with pytest.warns(RuntimeWarning, match="does not match its checksum"):
        again = run_suite(suite, tmp_path, progress=False)
    assert calls == [victim]
    assert again[3]["metrics"]["value"] == 3 and json.loads(path.read_text())["metrics"]["value"] == 3


@pytest.mark.parametrize("damage", ["drop-checksum", "drop-inputs", "drop-seconds", "bad-seconds", "unknown-field", "bad-inputs"])
def test_incomplete_or_malformed_record_is_recomputed(tmp_path, damage):
    calls: list = []
    suite = _trivial_suite(calls, n=2)
    run_suite(suite, tmp_path, progress=False)
    path = tmp_path / "cells" / f"{suite.cells[0].key}.json"
    change = {"drop-checksum": lambda r: r.pop("checksum"), "drop-inputs": lambda r: r.pop("inputs"),
              "drop-seconds": lambda r: r.pop("seconds"), "bad-seconds": lambda r: r.update(seconds=-1.0),
              "unknown-field": lambda r: r.update(note="x"), "bad-inputs": lambda r: r.update(inputs=[{"method": 1}])}[damage]

    def damage_and_reseal(r):
        change(r)
        if "checksum" in r:
            r["checksum"] = record_checksum(r)  # only the schema can catch these

    _edit(path, damage_and_reseal)
    calls.clear()
    with pytest.warns(RuntimeWarning, match="recomputing cell"):
        run_suite(suite, tmp_path, progress=False)
    assert calls == [suite.cells[0]]


def test_legacy_records_are_used_and_gain_a_checksum(tmp_path):
    """Records written before checksums and inputs (every committed summary so far) still count as finished."""
    calls: list = []
    suite = _trivial_suite(calls, n=2)
    run_suite(suite, tmp_path, progress=False)
    path = tmp_path / "cells" / f"{suite.cells[1].key}.json"
    _edit(path, lambda r: (r.pop("checksum"), r.pop("inputs")))
    calls.clear()
    records = run_suite(suite, tmp_path, progress=False)
    assert calls == [] and records[1]["metrics"]["value"] == 1
    rec = json.loads(path.read_text())
    assert rec["inputs"] is None and rec["checksum"] == record_checksum(rec)  # protected from now on


def test_missing_metric_names_the_cell_and_the_metric(tmp_path):
    cells = [Cell("val", {"k": 1}), Cell("test", {})]

    def run_cell(cell):
        if cell.method == "val":
            return {"score": 1.0}
        return {"x": finished_records(cells, tmp_path, "val")[0]["metrics"]["val_fd"]}

    with pytest.raises(MissingMetricError) as info:
        run_suite(Suite("mm", cells, run_cell), tmp_path, progress=False)
    text = str(info.value)
    assert cells[0].key in text and "'val_fd'" in text and cells[1].key in text and "score" in text


# ------------------------------------------------------------------------------------------ inputs


def _sweep_suite(calls: list, run_dir: Path, grid=(1.0, 2.0, 3.0), offsets: dict | None = None) -> Suite:
    """Validation cells score a knob; the test cell reads the best knob from them (as every suite's sweeps do)."""
    cells = [Cell("val", {"knob": k}) for k in grid] + [Cell("test", {"n": 4})]

    def run_cell(cell):
        calls.append(cell.method if cell.method == "test" else cell.setting["knob"])
        if cell.method == "val":
            k = cell.setting["knob"]
            return {"score": (k - 2.0) ** 2 + (offsets or {}).get(k, 0.0)}
        val = finished_records(cells, run_dir, "val")
        return {"chosen": min(val, key=lambda r: r["metrics"]["score"])["cell"]["setting"]["knob"]}

    return Suite("sweep", cells, run_cell)


def test_an_upstream_change_recomputes_the_downstream_cells(tmp_path):
    calls: list = []
    records = run_suite(_sweep_suite(calls, tmp_path), tmp_path, progress=False)
    assert records[-1]["metrics"]["chosen"] == 2.0 and calls == [1.0, 2.0, 3.0, "test"]
    assert [q["method"] for q in records[-1]["inputs"]] == ["val"] and len(records[-1]["inputs"][0]["cells"]) == 3
    val2 = tmp_path / "cells" / f"{Cell('val', {'knob': 2.0}).key}.json"

    # the upstream cell is recomputed with the same result: the downstream record stays valid
    val2.unlink()
    calls.clear()
    run_suite(_sweep_suite(calls, tmp_path), tmp_path, progress=False)
    assert calls == [2.0]

    # its result changes (new code, say): the downstream cell is recomputed, with a warning
    val2.unlink()
    calls.clear()
    with pytest.warns(RuntimeWarning, match=r"input cell val__knob=2\.0.* changed"):
        records = run_suite(_sweep_suite(calls, tmp_path, offsets={2.0: 10.0}), tmp_path, progress=False)
    assert calls == [2.0, "test"] and records[-1]["metrics"]["chosen"] == 1.0

    # the sweep widens: the test cell's query now matches another cell, so it is recomputed
    calls.clear()
    with pytest.warns(RuntimeWarning, match=r"matches changed.*new: val__knob=0\.5"):
        records = run_suite(_sweep_suite(calls, tmp_path, grid=(0.5, 1.0, 2.0, 3.0), offsets={2.0: 10.0}), tmp_path, progress=False)
    assert calls == [0.5, "test"] and records[-1]["metrics"]["chosen"] == 1.0


def test_a_hand_edited_upstream_record_is_healed_without_touching_downstream(tmp_path):
    calls: list = []
    run_suite(_sweep_suite(calls, tmp_path), tmp_path, progress=False)
    _edit(tmp_path / "cells" / f"{Cell('val', {'knob': 3.0}).key}.json", lambda r: r["metrics"].update(score=-5.0))
    calls.clear()
    with pytest.warns(RuntimeWarning, match="checksum"):
        records = run_suite(_sweep_suite(calls, tmp_path), tmp_path, progress=False)
    assert calls == [3.0]  # recomputed to its true score; the test cell's input is unchanged again
    assert records[-1]["metrics"]["chosen"] == 2.0


def test_cell_not_ready_names_the_missing_cell(tmp_path):
    calls: list = []
    suite = _sweep_suite(calls, tmp_path)
    with pytest.raises(CellNotReady, match=r"cell test__n=4.* needs cell val__knob=1\.0.*--only") as info:
        run_suite(suite, tmp_path, progress=False, shard_filter=lambda c: c.method == "test")
    assert set(info.value.missing) == {c.key for c in suite.cells if c.method == "val"}
    assert calls == ["test"]


# ------------------------------------------------------------------------------------------ sharing a run directory

_SHARED = """
import os, sys, time
from pathlib import Path
from onmanifold_bench import _command_history
from onmanifold_bench.runner import Cell, Suite, finished_records, run_suite

run_dir, name = Path(sys.argv[1]), sys.argv[2]
cells = [Cell("work", {{"index": i}}) for i in range({n})] + [Cell("total", {{}})]

def run_cell(cell):
    if cell.method == "total":  # raises CellNotReady (not computed) until every work cell has finished
        out = {{"sum": sum(r["metrics"]["value"] for r in finished_records(cells, run_dir, "work"))}}
    else:
        time.sleep(0.3)
        out = {{"value": cell.setting["index"]}}
    with open(run_dir / "computed.log", "a") as f:  # one line per finished computation, O_APPEND
        f.write(f"{{name}} {{cell.key}}\\n")
    return out

(run_dir / f"ready-{{name}}").touch()
while not (run_dir / "go").exists():
    time.sleep(0.01)
records = run_suite(Suite("shared", cells, run_cell), run_dir, progress=False, poll_seconds=0.05)
assert len(records) == {n} + 1, len(records)
for i in range(20):
    _command_history(str(run_dir), f"bench shared --from {{name}} --line {{i}}")
"""


def test_two_processes_share_one_run_dir(tmp_path):
    n = 8
    script = tmp_path / "shared.py"
    script.write_text(_SHARED.format(n=n))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(run_dir), name], stderr=subprocess.PIPE, env=env) for name in ("a", "b")]
    try:
        deadline = time.monotonic() + 120
        while not all((run_dir / f"ready-{name}").exists() for name in ("a", "b")):
            assert all(p.poll() is None for p in procs), [p.stderr.read().decode()[-2000:] for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        (run_dir / "go").touch()
        for p in procs:
            p.wait(timeout=120)
            assert p.returncode == 0, p.stderr.read().decode()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
    lines = (run_dir / "computed.log").read_text().splitlines()
    keys = [ln.split()[1] for ln in lines]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == n + 1  # every cell computed exactly once
    assert {ln.split()[0] for ln in lines} == {"a", "b"}  # and both processes did work
    assert json.loads((run_dir / "cells" / f"{Cell('total', {}).key}.json").read_text())["metrics"]["sum"] == sum(range(n))
    log = (run_dir / "commands.log").read_text().splitlines()
    assert sorted(log) == sorted(f"bench shared --from {name} --line {i}" for name in "ab" for i in range(20))  # no line lost
    assert not list((run_dir / "claims").iterdir())  # every claim released


def test_a_live_claim_is_respected_and_a_dead_one_taken_over(tmp_path):
    import socket

    from onmanifold_bench.locks import _process_start

    calls: list = []
    suite = _trivial_suite(calls, n=2)
    claims = tmp_path / "claims"
    claims.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        info = {"pid": holder.pid, "host": socket.gethostname(), "process_start": _process_start(holder.pid), "token": "t"}
        (claims / f"{suite.cells[0].key}.json").write_text(json.dumps(info))
        with pytest.raises(CellNotReady, match="waited"):
            run_suite(suite, tmp_path, progress=False, wait_seconds=0.5, poll_seconds=0.1)
        assert calls == [suite.cells[1]]  # the claimed cell was left to its (live) holder
    finally:
        holder.kill()
        holder.wait()
    calls.clear()
    records = run_suite(suite, tmp_path, progress=False)  # the holder died: its claim is stale
    assert calls == [suite.cells[0]] and len(records) == 2
