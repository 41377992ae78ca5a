"""``onmanifold report RUN_DIR``: one self-contained HTML page and a markdown summary for any run.

A run directory is what ``onmanifold bench`` (``runs/<suite>``: ``cells/*.json``, ``artifacts/``),
``onmanifold demo`` (``demo_out``: ``summary.md``, grids) or ``onmanifold sample`` (``samples.json``,
``grid.png``) leaves behind. The report gathers, in this order:

1. the run's settings as run (a sample folder's ``samples.json``: model, method, n, steps, ...);
2. every markdown file at the top of the directory (the demo's ``summary.md``, a suite's page when
   ``--results-dir`` pointed there), rendered;
3. the finished benchmark cells (``cells/*.json``): one table per method, settings and scalar
   metrics, rows sorted by their settings (numbers as numbers), with the ``n`` each cell ran with;
4. for each method the figure a reader wants, drawn from the run's records and saved samples into
   ``figures/methods/`` (:mod:`onmanifold_bench.figures`: DSG/DPS measurement, truth and samples side
   by side; TAG's toy scatter before and after and its time-gap curves; ASCED's samples with the
   detected and the ground-truth masks overlaid, before and after correction), with a note for each
   one whose data the run does not hold;
5. every PNG figure under the directory (the methods' first), inlined as a ``data:`` URI so the page
   travels alone, with the caption stored in the PNG (:func:`onmanifold.images.read_caption`) saying
   what it shows;
6. what was left out and why (a corrupt cell, a link to a file outside the run directory).

Safe to share: the page runs no script and loads nothing. Every name, setting and value is escaped;
markdown is rendered with raw HTML turned into text and links limited to http(s), mailto and relative
addresses; only regular files inside the run directory are read (a path or a symlink that leads
outside is refused and listed). Written atomically with the user's umask as ``RUN_DIR/report.html``
and ``RUN_DIR/report.md``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import re
import xml.etree.ElementTree as etree
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from onmanifold.io import write_text_atomic

__all__ = ["write_report", "render_markdown", "markdown_text"]

_MAX_FIGURES = 60
_MAX_FILE_BYTES = 20 << 20  # a markdown file, a cell or a figure larger than this is left out
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif"}  # never SVG (it can carry script)
_SAFE_LINK_SCHEMES = ("http", "https", "mailto")
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #444; max-width: 900px; }
pre, code { background: #f6f6f6; font-size: 0.85em; } pre { padding: 0.6em; overflow-x: auto; }
.left-out { color: #a33; }
"""
# no script, no network, no plugins: a browser enforces what the renderer already guarantees
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def markdown_text(value) -> str:
    """``value`` as literal markdown text: nothing in it becomes markup, a link, a table cell border or HTML."""
    s = str(value)
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    s = re.sub(r"([\\`*_\[\]|!#])", r"\\\1", s)
    return s.replace("\n", " ").replace("\r", " ")


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))[:60]
    return str(v)


def _number_first(v) -> tuple:
    """Sort key: numbers by value (before text), then text."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v) if math.isfinite(v) else math.inf, "")
    return (1, 0.0, str(v))


class _RunFiles:
    """Reads files of one run directory, refusing anything that resolves outside it (symlinks included)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.root = run_dir.resolve()
        self.left_out: list[tuple[str, str]] = []  # (what, why)

    def inside(self, relative: str | Path, what: str) -> Path | None:
        """The resolved path of ``relative`` if it is a regular file inside the run directory, else None (noted)."""
        p = Path(relative)
        if p.is_absolute():
            self.left_out.append((what, "an absolute path; only files inside the run directory are read"))
            return None
        resolved = (self.run_dir / p).resolve()
        if resolved != self.root and self.root not in resolved.parents:
            self.left_out.append((what, "leads outside the run directory; only files inside it are read"))
            return None
        if not resolved.is_file():
            self.left_out.append((what, "no such file"))
            return None
        if resolved.stat().st_size > _MAX_FILE_BYTES:
            self.left_out.append((what, f"larger than {_MAX_FILE_BYTES >> 20} MB"))
            return None
        return resolved

    def walk(self, suffix: str) -> list[Path]:
        """Files ending in ``suffix`` under the run directory (symlinked folders not followed), relative, sorted."""
        found = []
        for folder, dirs, files in os.walk(self.run_dir, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [Path(folder, f).relative_to(self.run_dir) for f in files if f.lower().endswith(suffix) and not f.startswith(".")]
        return sorted(found)

    def data_uri(self, relative: str | Path, what: str) -> str | None:
        kind = _IMAGE_TYPES.get(Path(str(relative)).suffix.lower())
        if kind is None:
            self.left_out.append((what, "not a PNG, JPEG or GIF image"))
            return None
        p = self.inside(relative, what)
        if p is None:
            return None
        return f"data:{kind};base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def _safe_href(href: str) -> str | None:
    """``href`` if it is an http(s), mailto, fragment or relative address; None for anything else (javascript:, data:, ...)."""
    decoded = html.unescape(href)
    compact = re.sub(r"[\x00-\x20\x7f]+", "", decoded)
    if compact.startswith("//"):
        return decoded  # network-path reference: http(s) on a page opened over http(s), nothing on a file
    scheme = urlsplit(compact).scheme.lower()
    if not scheme:
        return None if ":" in compact.split("/", 1)[0] else decoded
    return decoded if scheme in _SAFE_LINK_SCHEMES else None


def _link_targets(text: str):
    """``(start, end)`` of every markdown link target ``](target ...)`` up to its closing parenthesis (parentheses
    inside may nest; blanks are kept in, since a browser drops tabs inside a URL: ``java<TAB>script:``)."""
    for m in re.finditer(r"\]\(", text):
        start = i = m.end()
        depth = 0
        while i < len(text) and text[i] != "\n":
            if text[i] == "(":
                depth += 1
            elif text[i] == ")":
                if depth == 0:
                    break
                depth -= 1
            i += 1
        yield start, i


def _defang_markdown(text: str) -> str:
    """The run's markdown for ``report.md``: raw HTML outside code shown as text, unsafe link targets replaced by ``#``."""
    parts = re.split(r"(^```.*?^```[ \t]*$|`[^`\n]*`)", text, flags=re.M | re.S)
    out = []
    for k, part in enumerate(parts):
        if k % 2:  # a code block or code span: shown verbatim by any renderer
            out.append(part)
            continue
        part = part.replace("<", "&lt;")
        for start, end in reversed(list(_link_targets(part))):
            if _safe_href(part[start:end]) is None:
                part = part[:start] + "#" + part[end:]
        out.append(part)
    return "".join(out)


def render_markdown(text: str, files: _RunFiles) -> str:
    """Markdown -> HTML that runs nothing: raw HTML becomes text, unsafe links lose their target, images
    inside the run directory are inlined and get a caption (their alt text), others become a note."""
    import markdown
    from markdown.treeprocessors import Treeprocessor

    class _Sanitize(Treeprocessor):
        def run(self, root):
            parent_of = {c: p for p in root.iter() for c in p}
            for el in list(root.iter()):
                for attr in list(el.attrib):
                    if attr.lower().startswith("on") or attr.lower() == "style":
                        del el.attrib[attr]
                if el.tag == "a":
                    safe = _safe_href(el.get("href", ""))
                    if safe is None:
                        el.attrib.pop("href", None)
                        el.set("title", "link removed: only http(s), mailto and relative links are kept")
                    else:
                        el.set("href", safe)
                elif el.tag == "img":
                    self._image(el, parent_of)
            return root

        def _image(self, el, parent_of) -> None:
            src = html.unescape(el.get("src", ""))
            alt = el.get("alt", "") or src
            uri = None
            scheme = urlsplit(src).scheme.lower()
            if scheme == "data" and re.match(r"data:image/(png|jpeg|gif);base64,[A-Za-z0-9+/=\s]*$", src):
                uri = src
            elif not scheme and not src.startswith("//"):
                uri = files.data_uri(unquote(src), src)
            else:
                files.left_out.append((src, "an image from outside the run directory is not loaded"))
            if uri is None:
                note = etree.Element("span", {"class": "left-out"})
                note.text = f"[figure not included: {src}]"
                el.tag, el.attrib, el.text = note.tag, note.attrib, note.text
                return
            el.set("src", uri)
            parent = parent_of.get(el)
            if parent is not None and parent.tag == "p" and len(parent) == 1 and not (parent.text or "").strip() and not (el.tail or "").strip():
                parent.tag = "figure"  # an image alone in its paragraph: a figure with its alt text as caption
                cap = etree.SubElement(parent, "figcaption")
                cap.text = alt

    md = markdown.Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")  # raw HTML blocks are shown as text
    md.inlinePatterns.deregister("html")  # so is inline raw HTML
    md.treeprocessors.register(_Sanitize(md), "onmanifold-sanitize", -10)  # after every other tree processor
    return md.convert(text)


def _read_json(files: _RunFiles, relative: Path):
    p = files.inside(relative, str(relative))
    if p is None:
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        files.left_out.append((str(relative), f"not valid JSON ({str(e)[:80]})"))
        return None


def _settings_section(files: _RunFiles) -> str:
    """A sample folder's ``samples.json``: what was run, with n as run."""
    if not (files.run_dir / "samples.json").exists():
        return ""
    info = _read_json(files, Path("samples.json"))
    if not isinstance(info, dict):
        return ""
    rows = [(k, v) for k, v in info.items() if k not in ("files", "timesteps")]
    out = ["## Run", "", f"{markdown_text(info.get('num_samples', '?'))} samples as run (n).", "", "| setting | value |", "|---|---|"]
    out += [f"| {markdown_text(k)} | {markdown_text(_fmt(v))} |" for k, v in rows]
    return "\n".join(out + [""])


def _finished_records(files: _RunFiles) -> list[dict]:
    """The run's finished cell records (``cells/*.json``); a file that is not one is listed as left out."""
    out = []
    cells_dir = files.run_dir / "cells"
    names = sorted(p.name for p in cells_dir.glob("*.json")) if cells_dir.is_dir() else []
    for name in names:
        rec = _read_json(files, Path("cells") / name)
        if rec is None:
            continue
        try:
            method, setting, metrics = str(rec["cell"]["method"]), rec["cell"]["setting"], rec["metrics"]
            if not isinstance(setting, dict) or not isinstance(metrics, dict):
                raise TypeError("setting or metrics is not an object")
        except (KeyError, TypeError) as e:
            files.left_out.append((f"cells/{name}", f"not a finished cell record ({type(e).__name__}: {str(e)[:60]})"))
            continue
        out.append(rec)
    return out


def _cell_tables(records: list[dict]) -> str:
    """Markdown tables of the finished cells, one per method (scalar metrics only), rows sorted by setting."""
    by_method: dict[str, list[dict]] = {}
    for rec in records:
        by_method.setdefault(str(rec["cell"]["method"]), []).append(rec)
    if not by_method:
        return ""
    total = sum(len(v) for v in by_method.values())
    ns = sorted({r["cell"]["setting"]["n"] for v in by_method.values() for r in v if isinstance(r["cell"]["setting"].get("n"), int)})
    n_text = f" Samples per cell as run: n = {', '.join(map(str, ns))}." if ns else ""
    out = [f"## Benchmark cells", "", f"{total} finished cells of {len(by_method)} methods.{n_text} Rows are sorted by their settings.", ""]
    for method in sorted(by_method):
        recs = by_method[method]
        skeys = list(dict.fromkeys(k for r in recs for k in r["cell"]["setting"]))
        mkeys = list(dict.fromkeys(k for r in recs for k, v in r["metrics"].items() if isinstance(v, (int, float, str, bool))))
        recs = sorted(recs, key=lambda r: [_number_first(r["cell"]["setting"].get(k, "")) for k in skeys] + [_number_first(r.get("cell", {}).get("shard", 0))])
        header = [*skeys, *mkeys, "seconds"]
        method_ns = sorted({r["cell"]["setting"]["n"] for r in recs if isinstance(r["cell"]["setting"].get("n"), int)})
        out += [f"### {markdown_text(method)}", ""]
        out += [f"{len(recs)} cells" + (f", n = {', '.join(map(str, method_ns))} samples each as run." if method_ns else "."), ""]
        out += ["| " + " | ".join(markdown_text(h) for h in header) + " |", "|" + "---|" * len(header)]
        for r in recs:
            row = [r["cell"]["setting"].get(k, "") for k in skeys] + [r["metrics"].get(k, "") for k in mkeys] + [r.get("seconds", "")]
            out.append("| " + " | ".join(markdown_text(_fmt(v)) for v in row) + " |")
        out.append("")
    return "\n".join(out)


_METHOD_FIGURES = Path("figures") / "methods"


def _method_figures(files: _RunFiles, records: list[dict]) -> str:
    """Draw each method's figure from the run's records and saved samples into ``figures/methods/``
    (:func:`onmanifold_bench.figures.method_figures`); markdown notes on the figures that could not be drawn."""
    if not records:
        return ""
    from .figures import method_figures

    def artifact(rec: dict) -> Path | None:
        from .runner import Cell

        try:
            relative = Path("artifacts") / f"{Cell.from_description(rec['cell']).key}.pt"
        except ValueError:
            return None
        if not (files.run_dir / relative).exists():
            return None
        return files.inside(relative, relative.as_posix())  # a symlink out of the run directory is refused (and listed)

    def measurement(bed: str, task: str, n: int):
        from .dsg import inverse_problem

        return inverse_problem(bed, task, "test", n, 0)[3]

    made, notes = method_figures(records, artifact, files.run_dir / _METHOD_FIGURES, measurement)
    if not made and not notes:
        return ""
    out = ["## Method figures", ""]
    if made:
        out += [f"Drawn from this run's saved samples into {markdown_text(_METHOD_FIGURES.as_posix())}/ (shown first under Figures): "
                + ", ".join(markdown_text(p.name) for p, _ in made) + ".", ""]
    if notes:
        out += ["Not drawn, for want of data:", ""] + [f"- {markdown_text(n)}" for n in notes] + [""]
    return "\n".join(out)


def _figure_caption(path: Path, relative: Path) -> str:
    from onmanifold.images import read_caption

    return read_caption(path) or "saved without a caption: its file name is all that is known of it"


def write_report(run_dir: str | os.PathLike, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained, script-free) and ``report.md`` into ``run_dir``; return their paths.

    Raises ``ValueError`` if ``run_dir`` is not a directory or holds nothing to report.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"RUN_DIR: expected a run directory (from bench, demo or sample), got {str(run_dir)!r}")
    files = _RunFiles(run_dir)
    title = title or f"onmanifold report: {run_dir.resolve().name}"
    doc_names = [p.name for p in sorted(run_dir.glob("*.md")) if p.name != "report.md" and not p.name.startswith(".")]
    texts = []
    for name in doc_names:
        p = files.inside(name, name)
        if p is not None:
            texts.append(p.read_text(encoding="utf-8", errors="replace").strip())
    settings = _settings_section(files)
    records = _finished_records(files)
    cells = _cell_tables(records)
    method_notes = _method_figures(files, records)
    linked = set()
    for text in texts:
        for m in re.finditer(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)", text):
            linked.add(os.path.normpath(unquote(html.unescape(m.group(1)))))
    figures = [f for f in files.walk(".png") if os.path.normpath(f.as_posix()) not in linked]
    figures.sort(key=lambda f: f.parent != _METHOD_FIGURES)  # the methods' figures first
    if len(figures) > _MAX_FIGURES:
        files.left_out += [(f.as_posix(), f"more than {_MAX_FIGURES} figures; the first {_MAX_FIGURES} are shown") for f in figures[_MAX_FIGURES:]]
        figures = figures[:_MAX_FIGURES]
    shown = [(f, files.inside(f, f.as_posix())) for f in figures]
    shown = [(f, p) for f, p in shown if p is not None]
    if not texts and not shown and not cells and not settings:
        raise ValueError(f"RUN_DIR: {str(run_dir)!r} holds no markdown summary, figure or finished benchmark cell")

    written = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    head = [f"# {markdown_text(title)}", "", f"Written {written} from {markdown_text(run_dir)}.", ""]
    body_md = ([settings] if settings else []) + [t + "\n" for t in texts] + ([cells] if cells else []) + ([method_notes] if method_notes else [])
    safe_md = ([settings] if settings else []) + [_defang_markdown(t) + "\n" for t in texts] + ([cells] if cells else []) + ([method_notes] if method_notes else [])
    captions = [(f, p, _figure_caption(p, f)) for f, p in shown]
    md_figures = []
    if captions:
        md_figures = ["## Figures", ""]
        for k, (f, _, cap) in enumerate(captions, 1):
            md_figures += [f"![{markdown_text(cap)}]({quote(f.as_posix())})", "", f"*Figure {k} ({markdown_text(f.as_posix())}): {markdown_text(cap)}*", ""]

    def left_out_md() -> list[str]:
        if not files.left_out:
            return []
        out = ["## Not included", ""]
        out += [f"- {markdown_text(what)}: {markdown_text(why)}" for what, why in dict.fromkeys(files.left_out)]
        return out + [""]

    html_parts = [render_markdown("\n".join(head + body_md), files)]
    if captions:
        html_parts.append("<h2>Figures</h2>")
        for k, (f, p, cap) in enumerate(captions, 1):
            uri = files.data_uri(f, f.as_posix())
            if uri is None:
                continue
            html_parts.append(f'<figure><img src="{html.escape(uri, quote=True)}" alt="{html.escape(cap, quote=True)}">'
                              f"<figcaption>Figure {k} ({html.escape(f.as_posix())}): {html.escape(cap)}</figcaption></figure>")
    tail = left_out_md()
    if tail:
        html_parts.append(render_markdown("\n".join(tail), files))
    md_text = "\n".join(head + safe_md + md_figures + tail)
    md_path = run_dir / "report.md"
    write_text_atomic(md_path, md_text)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(html_parts) + "\n</body></html>\n")
    html_path = run_dir / "report.html"
    write_text_atomic(html_path, page)
    return html_path, md_path
