"""``onmanifold report``: a self-contained HTML page whose figures a real browser draws."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from onmanifold.cli import main
from onmanifold_bench.report import write_report

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)


def _run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    (run / "figures").mkdir()
    red = np.zeros((120, 200, 3), dtype=np.uint8)
    red[..., 0] = 230
    Image.fromarray(red).save(run / "figures" / "red.png")
    (run / "summary.md").write_text("# demo\n\n| method | fd |\n|---|---|\n| DSG | 1.5 |\n\n![red](figures/red.png)\n")
    (run / "cells" / "a.json").write_text('{"cell": {"method": "dps", "setting": {"zeta": 1.0}, "shard": 0, "seeds": []},'
                                          ' "metrics": {"fd": 2.5, "curve": [1, 2]}, "seconds": 3.0, "finished_at": "x"}')
    return run


def test_report_is_self_contained(tmp_path):
    run = _run_dir(tmp_path)
    html_path, md_path = write_report(run)
    page = html_path.read_text()
    assert "data:image/png;base64," in page and 'src="figures/' not in page
    assert "<table>" in page and "DSG" in page and "dps" in page
    md = md_path.read_text()
    assert "| zeta | fd | seconds |" in md and "| 1 | 2.5 | 3 |" in md


def test_report_of_a_missing_or_empty_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "RUN_DIR" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "holds no" in capsys.readouterr().err


def test_browser_draws_the_figures(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium); the page was not rendered")
    run = _run_dir(tmp_path)
    html_path, _ = write_report(run)
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,1400", html_path.resolve().as_uri()]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (img[..., 0] > 200) & (img[..., 1] < 40) & (img[..., 2] < 40)
    assert red.sum() > 0.5 * 120 * 200  # the inlined figure is drawn (about its full area)
