"""The speed suite (``onmanifold bench speed``) on its quick tiny UNet: every run, ratio and memory row, and its page."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")

from onmanifold_bench import SUITES  # noqa: E402
from onmanifold_bench.runner import run_suite  # noqa: E402
from onmanifold_bench.speed import GOALS, MEMORY_RUNS, RATIOS, TIMED_FP32, speed_suite  # noqa: E402


def test_registered():
    assert SUITES()["speed"] is speed_suite
    full = speed_suite(False, "unused")
    timing = [c for c in full.cells if c.method == "timing"]
    assert {c.setting["dtype"] for c in timing} == {"float32", "bfloat16"}
    assert all(c.setting["unet"] == "adm64-small" for c in full.cells)


def test_quick_suite_runs_and_writes_its_page(tmp_path):
    suite = speed_suite(True, tmp_path / "run")
    records = run_suite(suite, tmp_path / "run", progress=False)
    assert len(records) == len(suite.cells) == 3
    fp32 = next(r["metrics"] for r in records if r["cell"]["method"] == "timing" and r["cell"]["setting"]["dtype"] == "float32")
    for name in TIMED_FP32:
        assert fp32[f"s_per_sample[{name}]"] > 0
    for label in RATIOS:
        assert fp32[f"ratio[{label}]"] > 0
    assert fp32["unet_forwards[loop]"] == fp32["unet_forwards[diffusers]"] == fp32["unet_forwards[asced]"] == 2
    assert fp32["unet_forwards[dsg+chunks:1]"] > fp32["unet_forwards[dsg]"]  # the chunks' recomputed forwards
    assert "network_fixed_ratio[loop/diffusers]" in fp32 and "network_fixed_ratio[dsg+chunks:1/dsg]" not in fp32
    assert fp32["loop_vs_diffusers_max_abs_diff"] < 1e-4  # the same trajectory as DDIMPipeline from the same x_T
    memory = next(r["metrics"] for r in records if r["cell"]["method"] == "memory")
    for name in MEMORY_RUNS:
        assert memory[f"mib_per_sample[{name}]"] > 0
    assert memory["mib_per_sample[dsg+chunks:1]"] < memory["mib_per_sample[dsg]"]
    assert memory["mib_per_sample[dps+checkpoint]"] < memory["mib_per_sample[dps]"]
    assert memory["max_abs_diff_vs_dsg[dsg+checkpoint]"] == 0.0
    page = suite.report(records, tmp_path, "onmanifold bench speed --quick", tmp_path / "run").read_text()
    assert "onmanifold bench speed --quick" in page and "Peak memory" in page
    for label in GOALS:
        assert label in page
