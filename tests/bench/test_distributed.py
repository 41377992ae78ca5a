"""Scale-out with torchrun: two CPU processes (gloo) give the single-process results, cell for cell."""

import json
import os
import shutil
import subprocess
import sys

import pytest

ARGS = ["bench", "tag", "--quick", "--only", "method=toy-val", "--only", "eps=mlp", "--no-progress"]


def _metrics(results_dir):
    data = json.loads((results_dir / "tag.json").read_text())
    return {json.dumps(r["cell"], sort_keys=True): r["metrics"] for r in data["records"]}


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun (PyTorch's launcher) is not on PATH")
def test_torchrun_two_processes_equal_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "onmanifold", *ARGS, "--run-dir", str(one), "--results-dir", str(one)],
                   check=True, env=env, capture_output=True, timeout=300)
    out = subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "onmanifold", *ARGS, "--run-dir", str(two), "--results-dir", str(two)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = _metrics(one), _metrics(two)
    assert len(a) == 6 and a.keys() == b.keys()
    assert a == b  # the W1 of every cell, bit for bit
    ranks = sorted(json.loads(p.read_text())["rank"] for p in (two / "cells").iterdir())
    assert ranks == [0, 0, 0, 1, 1, 1]  # both processes worked, each cell once
