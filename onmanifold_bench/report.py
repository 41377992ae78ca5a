"""``onmanifold report RUN_DIR``: one self-contained HTML page and a markdown summary for any run.

A run directory is what ``onmanifold bench`` (``runs/<suite>``: ``cells/*.json``, ``artifacts/``),
``onmanifold demo`` (``demo_out``: ``summary.md``, grids) or ``onmanifold sample`` leaves behind. The
report gathers, in this order:

1. every markdown file at the top of the directory (the demo's ``summary.md``, a suite's page when
   ``--results-dir`` pointed there), rendered;
2. the finished benchmark cells (``cells/*.json``): one table per method, settings and scalar metrics;
3. every PNG figure under the directory, inlined as ``data:`` URIs so the page travels alone (figures a
   markdown file links to are inlined where they are linked).

Written atomically as ``RUN_DIR/report.html`` and ``RUN_DIR/report.md``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import re
from pathlib import Path

from onmanifold.nets.checkpoint import write_text_atomic

__all__ = ["write_report"]

_MAX_FIGURES = 60
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
figure { margin: 1em 0; } figcaption { font-size: 0.8em; color: #555; }
pre, code { background: #f6f6f6; font-size: 0.85em; } pre { padding: 0.6em; overflow-x: auto; }
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))[:60]
    return str(v)


def _cell_tables(run_dir: Path) -> str:
    """Markdown tables of the finished cells, one per method (scalar metrics only)."""
    files = sorted((run_dir / "cells").glob("*.json")) if (run_dir / "cells").is_dir() else []
    by_method: dict[str, list[dict]] = {}
    for f in files:
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            by_method.setdefault(rec["cell"]["method"], []).append(rec)
        except (ValueError, KeyError, TypeError):
            continue  # a corrupt or foreign file is not a finished cell
    if not by_method:
        return ""
    out = [f"## Benchmark cells ({len(files)} finished)", ""]
    for method, recs in by_method.items():
        skeys = list(dict.fromkeys(k for r in recs for k in r["cell"]["setting"]))
        mkeys = list(dict.fromkeys(k for r in recs for k, v in r["metrics"].items() if isinstance(v, (int, float, str, bool))))
        header = [*skeys, *mkeys, "seconds"]
        out += [f"### {method}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in recs:
            row = [_fmt(r["cell"]["setting"].get(k, "")) for k in skeys] + [_fmt(r["metrics"].get(k, "")) for k in mkeys] + [_fmt(r["seconds"])]
            out.append("| " + " | ".join(x.replace("|", "/") for x in row) + " |")
        out.append("")
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_report(run_dir: str | os.PathLike, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` into ``run_dir``; return their paths.

    Raises ``ValueError`` if ``run_dir`` is not a directory or holds nothing to report.
    """
    import markdown

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"RUN_DIR: expected a run directory (from bench, demo or sample), got {str(run_dir)!r}")
    title = title or f"onmanifold report: {run_dir.name}"
    docs = [p for p in sorted(run_dir.glob("*.md")) if p.name != "report.md"]
    figures = [p for p in sorted(run_dir.rglob("*.png"))][:_MAX_FIGURES]
    cells = _cell_tables(run_dir)
    if not docs and not figures and not cells:
        raise ValueError(f"RUN_DIR: {str(run_dir)!r} holds no markdown summary, figure or finished benchmark cell")

    md_parts = [f"# {title}", "", f"Written {_dt.datetime.now().astimezone().isoformat(timespec='seconds')} from `{run_dir}`.", ""]
    texts = [d.read_text(encoding="utf-8").strip() for d in docs]
    for text in texts:
        md_parts += [text, ""]
    if cells:
        md_parts += [cells, ""]
    linked = set()
    for text in texts:
        for m in re.finditer(r"!\[[^\]]*\]\(([^)]+\.png)\)", text):
            linked.add((run_dir / m.group(1)).resolve())
    rest = [f for f in figures if f.resolve() not in linked]
    if rest:
        md_parts += ["## Figures", ""] + [f"![{f.relative_to(run_dir)}]({f.relative_to(run_dir).as_posix()})" for f in rest] + [""]
    md_text = "\n".join(md_parts)
    md_path = run_dir / "report.md"
    write_text_atomic(md_path, md_text)

    body = markdown.markdown(md_text, extensions=["tables", "fenced_code"])

    def inline(m: re.Match) -> str:
        src = html.unescape(m.group(1))
        p = (run_dir / src).resolve()
        if src.startswith("data:") or not p.is_file():
            return m.group(0)
        return f'src="{_data_uri(p)}"'

    body = re.sub(r'src="([^"]+\.png)"', inline, body)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
    html_path = run_dir / "report.html"
    write_text_atomic(html_path, page)
    return html_path, md_path
