"""``onmanifold report``: a self-contained HTML page whose figures a real browser draws, and that is safe to share:
names, settings, values and markdown from the run directory are shown, never run; only files inside the run
directory are read."""

import base64
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import re

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
    assert "<figcaption>red</figcaption>" in page  # a linked figure gets its alt text as caption


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


# ------------------------------------------------------------------------------------------ safe to share
MARK = "pw" + "ned"  # what an injected script would add to the page; the payloads spell it split, so only running code creates it
SCRIPT = f"document.body.appendChild(document.createElement('{MARK[:2]}'+'{MARK[2:]}'))"
PAYLOADS = [f"<script>{SCRIPT}</script>", f'<img src=x onerror="{SCRIPT}">', f"<svg onload=\"{SCRIPT}\"></svg>"]


def _hostile_run_dir(tmp_path):
    """A run directory whose folder names, cell methods, settings, values and markdown carry script, and whose
    markdown points at a file outside it (directly and through a symlink)."""
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((6, 6, 3), 7, dtype=np.uint8)).save(secret)
    (tmp_path / "secret.md").write_text("SECRET-TEXT-OUTSIDE")
    run = tmp_path / f"run{PAYLOADS[1]}".replace("/", "_")
    (run / "cells").mkdir(parents=True)
    (run / "figures").mkdir()
    os.symlink(secret, run / "figures" / "link.png")
    os.symlink(tmp_path / "secret.md", run / "linked.md")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(run / "figures" / f"fig{PAYLOADS[0]}.png".replace("/", "_"))
    (run / "summary.md").write_text("\n\n".join([
        f"# results {PAYLOADS[0]}", PAYLOADS[1], PAYLOADS[2],
        f"[a](javascript:{SCRIPT}) [b](JaVaScRiPt:alert(1)) [c](&#106;avascript:alert(1)) [d]( java\tscript:alert(1)) "
        "[e](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) [ok](https://example.org/x) [rel](cells/a.json)",
        f"![up](../secret.png) ![sym](figures/link.png) ![abs]({secret}) ![remote](https://example.org/x.png)",
        f"| col |\n|---|\n| {PAYLOADS[0]} |",
        "```\n<script>shown as code</script>\n```",
    ]))
    rec = {"cell": {"method": PAYLOADS[0], "setting": {f"k{PAYLOADS[1]}": f"[x](javascript:{SCRIPT})", "n": 64}, "shard": 0, "seeds": []},
           "metrics": {"fd": 1.0, "note": PAYLOADS[2]}, "seconds": 1.0, "finished_at": "x"}
    (run / "cells" / "a.json").write_text(json.dumps(rec))
    return run, secret


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _elements(page: str):
    p = _Elements()
    p.feed(page)
    return p.tags


def _assert_inert(page: str) -> None:
    tags = _elements(page)
    assert not [t for t, _ in tags if t in ("script", "iframe", "object", "embed", "svg", "base", "form", "link")]
    assert not [(t, a) for t, attrs in tags for a in attrs if a.startswith("on")]
    for t, attrs in tags:
        for a in ("href", "src"):
            if a not in attrs:
                continue
            v = (attrs[a] or "").strip().lower()
            assert not v.startswith(("javascript", "data:text", "vbscript")), (t, attrs)
            if a == "src":
                assert v.startswith("data:image/png;base64,"), (t, attrs)  # every image inlined, nothing loaded


def test_hostile_names_and_markdown_are_shown_not_run(tmp_path):
    run, secret = _hostile_run_dir(tmp_path)
    html_path, md_path = write_report(run)
    page = html_path.read_text()
    _assert_inert(page)
    assert "&lt;script&gt;" in page and "&lt;script&gt;shown as code&lt;/script&gt;" in page  # shown as text
    assert '<a href="https://example.org/x">ok</a>' in page and '<a href="cells/a.json">rel</a>' in page
    # nothing outside the run directory was read
    assert "SECRET-TEXT-OUTSIDE" not in page and "SECRET-TEXT-OUTSIDE" not in md_path.read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page
    for what in ("../secret.png", "figures/link.png", "linked.md", str(secret)):
        assert what in page.split("Not included", 1)[1]  # refused and said so
    md = re.sub(r"^```.*?^```$", "", md_path.read_text(), flags=re.M | re.S)  # code blocks are shown verbatim by any renderer
    assert "<" not in md  # no raw HTML in report.md either
    assert not re.search(r"(?<!\\)\]\(\s*(j\s*a\s*v\s*a|&#|data:)", md, re.I)  # no link target that could run code (\] is text)


def test_report_files_are_written_with_the_umask(tmp_path):
    run = _run_dir(tmp_path)
    old = os.umask(0o022)
    try:
        html_path, md_path = write_report(run)
    finally:
        os.umask(old)
    assert html_path.stat().st_mode & 0o777 == 0o644 and md_path.stat().st_mode & 0o777 == 0o644


def test_numbers_sort_as_numbers_and_n_is_stated(tmp_path):
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    for i, zeta in enumerate([10.0, 2.0, 100.0, 0.3]):
        (run / "cells" / f"{i}.json").write_text(json.dumps({"cell": {"method": "dps", "setting": {"zeta": zeta, "n": 256}, "shard": 0, "seeds": []},
                                                             "metrics": {"fd": zeta}, "seconds": 1.0, "finished_at": "x"}))
    md = write_report(run)[1].read_text()
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ") and "zeta" not in ln]
    assert rows == ["0.3", "2", "10", "100"]
    assert "n = 256" in md


def test_sample_folder_report_states_what_was_run_with_captions(tmp_path):
    out = tmp_path / "s"
    assert main(["sample", "gmm2d-mlp", "-n", "16", "--steps", "5", "--out", str(out), "--no-progress"]) == 0
    page = write_report(out)[0].read_text()
    assert "16 samples as run (n)" in page and "<td>gmm2d-mlp</td>" in page
    assert "<figcaption>Figure 1 (scatter.png): All 16 samples (gmm2d-mlp, 5 steps, eta 0, seed 0).</figcaption>" in page


def _chromium_dom(page_path, tmp_path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
           "--dump-dom", page_path.resolve().as_uri()]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


def test_browser_runs_nothing_from_the_run_directory(tmp_path):
    """Headless Chromium's DOM after loading the report: no element an injected script would add. The page is
    loaded twice, as written and without its Content-Security-Policy, so the escaping alone is shown to hold; a
    control page with the same payload unescaped shows that the browser does run it."""
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (.ci/run installs Debian's chromium); the page was not rendered")
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body>{PAYLOADS[0]}</body></html>")
    assert f"<{MARK}>" in _chromium_dom(control, tmp_path)  # the browser runs an unescaped payload
    run, _ = _hostile_run_dir(tmp_path)
    html_path, _ = write_report(run)
    no_csp = tmp_path / "no-csp.html"
    no_csp.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html_path.read_text()))
    assert "Content-Security-Policy" not in no_csp.read_text()
    for page in (html_path, no_csp):
        dom = _chromium_dom(page, tmp_path)
        assert "Benchmark cells" in dom  # the page was rendered
        assert f"<{MARK}" not in dom.lower()
        _assert_inert(dom)


# ------------------------------------------------------------------------------------------ the methods' figures
def _method_run_dir(tmp_path, with_samples: bool):
    """A run directory with the finished cells of each method (DSG/DPS, TAG toy and corrupt, ASCED) and, if asked, their samples."""
    import torch

    from onmanifold.io import save_tensors_atomic
    from onmanifold_bench.runner import Cell

    run = tmp_path / ("run" if with_samples else "imported")
    (run / "cells").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def cell(method, setting, metrics, samples=None, shard=0):
        c = Cell(method, setting, shard, ())
        (run / "cells" / f"{c.key}.json").write_text(json.dumps({"cell": c.describe(), "metrics": metrics, "seconds": 1.0, "finished_at": "x"}))
        if with_samples and samples is not None:
            save_tensors_atomic(run / "artifacts" / f"{c.key}.pt", samples)

    def img(n, size):
        return torch.rand(n, 1, size, size, generator=g) * 2 - 1

    box = {"bed": "digits", "task": "box", "steps": 100, "n": 16}
    cell("dps", box, {"zeta": 1.0, "psnr": 20.0}, {"x": img(16, 8), "truth": img(16, 8), "y": img(16, 8)})
    cell("dsg", {**box, "k": 1, "g_r": 0.2}, {"psnr": 21.0}, {"x": img(16, 8), "truth": img(16, 8), "y": img(16, 8)})
    for v in ("clean", "drift", "tag-learned"):
        cell("toy", {"eps": "mlp", "variant": v, "seed": 0, "n": 50}, {"w1": 1.0, "omega0": 1.0}, {"x": torch.randn(50, 2, generator=g)})
    curve = [{"t": t, "mean": 10.0 + t / 10} for t in range(0, 1000, 20)]
    for v in ("none", "pre"):
        cell("corrupt", {"sigma": 0.2, "variant": v, "n": 32}, {"tg": 50.0, "tg_curve": curve})
    flagged = torch.tensor([True, True, False, False, True, False])
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[:, 4:10, 4:10] = True
    for m in ("original", "asced"):
        cell(m, {"bed": "shapes", "tc_frac": 0.48, "n": 6}, {"gt_rate": 0.5},
             {"x": img(6, 32), "flagged": flagged, "gt_has": torch.tensor([True, False, True, False, True, False]), "gt_mask": masks,
              "correction_mask": masks, "mask": masks}, shard=0)
    return run


def test_report_draws_each_methods_figure_with_a_caption(tmp_path):
    from onmanifold.images import read_caption

    run = _method_run_dir(tmp_path, with_samples=True)
    html_path, md_path = write_report(run)
    figs = run / "figures" / "methods"
    expected = {"dsg_digits_box_100.png": "measurement y", "tag_toy_scatter.png": "before", "tag_time_gap_curves.png": "time-gap curves",
                "asced_overlay_shapes.png": "ground-truth artifact mask G in green"}
    for name, words in expected.items():
        caption = read_caption(figs / name)
        assert caption and words in caption, (name, caption)
    page, md = html_path.read_text(), md_path.read_text()
    assert "Not drawn" not in md
    assert page.index("Figure 1 (figures/methods/") < page.index("Figure 4 (figures/methods/")  # the methods' figures come first
    assert page.count("<figcaption>Figure ") == len(expected)
    assert "the first 10 of the 16 test images" in read_caption(figs / "dsg_digits_box_100.png")  # n as run
    _assert_inert(page)


def test_report_without_the_samples_says_which_figures_it_could_not_draw(tmp_path):
    run = _method_run_dir(tmp_path, with_samples=False)
    html_path, md_path = write_report(run)
    md = md_path.read_text()
    assert "Not drawn, for want of data" in md
    for what in ("DSG/DPS figure (digits box, 100 steps)", "TAG toy figure", "ASCED figure"):
        assert what in md
    assert "recompute that cell to draw it" in md
    assert (run / "figures" / "methods" / "tag_time_gap_curves.png").is_file()  # drawn from the records alone
