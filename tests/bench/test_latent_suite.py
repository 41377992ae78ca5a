"""``onmanifold bench latent``: registered, its cells, and its page regenerated from the committed summary (no sampling)."""

import json
from pathlib import Path

from onmanifold.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_the_latent_suite_is_registered_with_its_parts():
    from onmanifold_bench import SUITES
    from onmanifold_bench.latent import CFG_SCALES

    suite = SUITES()["latent"](False, "unused")
    methods = [c.method for c in suite.cells]
    assert [c.setting["scale"] for c in suite.cells if c.method == "cfg"] == list(CFG_SCALES)
    for m in ("sr-none", "sr-dps", "sr-dsg", "sr-dsg-tt2", "sr-dps+tag", "label-dps", "label-dsg", "cfg+tag", "asced"):
        assert m in methods
    assert all(c.setting["n"] == 16 for c in suite.cells if c.method.startswith("val-"))


def test_latent_page_regenerated_from_its_committed_json(tmp_path, capsys):
    """Importing docs/results/latent.json into a scratch run gives the committed page's tables and claims, line for line."""
    res = tmp_path / "results"
    n = len(json.loads((RESULTS / "latent.json").read_text())["records"])
    assert main(["bench", "latent", "--import-results", str(RESULTS / "latent.json"), "--run-dir", str(tmp_path / "run"),
                 "--results-dir", str(res), "--no-progress"]) == 0
    assert f"imported {n} finished cells" in capsys.readouterr().out

    def body(path):
        return [ln for ln in path.read_text().splitlines() if ln.startswith(("|", "- ", "Watching"))]

    committed = body(RESULTS / "latent.md")
    assert committed and body(res / "latent.md") == committed
