"""A self-contained HTML page from a Markdown report: its figures embedded as data URIs."""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bnpipe.analysis import Analysis

_HTML_STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; max-width: 1100px;
       margin: 1.5em auto; padding: 0 1em; line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _embedded(match: re.Match[str], folder: Path) -> str:
    src = html.unescape(match.group(2))
    if ":" in src:  # data:, http: and the like are left as they are
        return match.group(0)
    path = folder / src
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"{match.group(1)}data:{mime};base64,{data}{match.group(3)}"


def markdown_to_html(text: str, folder: Path, title: str = "report") -> str:
    """A self-contained HTML page from Markdown: images under ``folder`` embedded as data URIs.

    MLflow's artifact viewer shows HTML in a sandboxed frame and does not resolve relative image
    links (neither in Markdown nor in HTML), so the figures must travel inside the page.
    """
    body = markdown_body(text, folder)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_HTML_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def markdown_body(text: str, folder: Path) -> str:
    """Markdown as an HTML fragment (no page, no style: a notebook's output cell has its own),
    images under ``folder`` embedded as data URIs."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"])
    return re.sub(r'(<img[^>]*\ssrc=")([^"]+)(")', lambda m: _embedded(m, folder), body)


def write_html_report(report_md: Path) -> Path:
    """Write ``report.html`` beside ``report_md`` (figures embedded); its path."""
    text = report_md.read_text(encoding="utf-8")
    title = next((ln[2:] for ln in text.splitlines() if ln.startswith("# ")), report_md.stem)
    out = report_md.with_suffix(".html")
    out.write_text(markdown_to_html(text, report_md.parent, title), encoding="utf-8")
    return out


def headline_figure(analysis: Analysis) -> str:
    """The file name of the figure a run's short view shows: the sequential monitoring figure
    when the design looked, else the compared factor's difference per stratum."""
    from bnpipe.report.figures import FIGURE_FILES, difference_figure_name

    if analysis.design is not None and len(analysis.design.looks):
        return FIGURE_FILES["sequential_monitoring"]
    return difference_figure_name(analysis.comparison)


def run_view_html(
    analysis: Analysis,
    *,
    title: str,
    figure_png: bytes | None,
    links: list[tuple[str, str | None]],
    facts: str = "",
) -> str:
    """A run in a notebook's output cell: the decided table (report.md's, from ``analysis``),
    one figure and links (text, URL or None for plain text)."""
    from bnpipe.report.markdown import answer_markdown

    parts = [f"<h4>{html.escape(title)}</h4>"]
    if facts:
        parts.append(f"<p>{html.escape(facts)}</p>")
    parts.append(markdown_body(answer_markdown(analysis), Path(".")))
    if figure_png is not None:
        data = base64.b64encode(figure_png).decode("ascii")
        parts.append(f'<img style="max-width: 720px" src="data:image/png;base64,{data}">')
    items = [
        f'<li><a href="{html.escape(url)}" target="_blank">{html.escape(text)}</a></li>'
        if url
        else f"<li>{html.escape(text)}</li>"
        for text, url in links
    ]
    parts.append(f"<ul>{''.join(items)}</ul>")
    return "\n".join(parts)


def framed(page: str, height_px: int = 900) -> str:
    """A whole HTML page (report.html) inside an iframe, so its style stays its own in a
    notebook."""
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" '
        f'style="width: 100%; height: {height_px}px; border: 1px solid #ccc"></iframe>'
    )
