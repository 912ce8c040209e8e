"""The demo's report: one self-contained HTML page (pictures embedded), built from a
list of blocks (headings, paragraphs, tables, pictures) in reading order."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

from rcdm_cli.fileio import write_bytes

STYLE = (
    "body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.4}"
    "img{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}"
    "img.chart{image-rendering:auto}"
    "table{border-collapse:collapse;margin:0.5em 0 1em}"
    "td,th{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".agrees{color:#1a7f37}.disagrees{color:#b42318}.muted{color:#666;font-size:0.9em}"
    "code{background:#f4f4f4;padding:1px 4px}"
)


def heading(text: str, level: int = 2) -> dict:
    return {"kind": "heading", "text": text, "level": level}


def paragraph(markup: str) -> dict:
    """Trusted markup written by the demo itself (not user text)."""
    return {"kind": "paragraph", "markup": markup}


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> dict:
    return {"kind": "table", "columns": list(columns), "rows": [list(r) for r in rows], "caption": caption}


def picture(path: Path, alt: str, chart: bool = False) -> dict:
    return {"kind": "picture", "path": Path(path), "alt": alt, "chart": chart}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="n">{value:.3f}</td>'
    text = html.escape(str(value))
    for word in ("agrees", "disagrees"):
        if text.startswith(word):
            return f'<td class="{word}">{text}</td>'
    return f"<td>{text}</td>"


def _render(block: dict) -> str:
    kind = block["kind"]
    if kind == "heading":
        level = block["level"]
        return f"<h{level}>{html.escape(block['text'])}</h{level}>"
    if kind == "paragraph":
        return f"<p>{block['markup']}</p>"
    if kind == "table":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in block["columns"])
        body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in block["rows"])
        caption = f'<p class="muted">{html.escape(block["caption"])}</p>' if block["caption"] else ""
        return f"<table><tr>{head}</tr>{body}</table>{caption}"
    if kind == "picture":
        data = base64.b64encode(block["path"].read_bytes()).decode()
        css = ' class="chart"' if block["chart"] else ""
        return f'<p><img{css} alt="{html.escape(block["alt"])}" src="data:image/png;base64,{data}"></p>'
    raise ValueError(f"unknown report block {kind!r}")


def write_report(path: Path, title: str, blocks: Sequence[dict]) -> None:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        *(_render(b) for b in blocks),
        "</body></html>",
    ]
    write_bytes(path, "\n".join(parts).encode())
