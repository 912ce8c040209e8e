"""The demo's report: one self-contained HTML page (pictures embedded) with the
conditioning images beside their samples, the interpolation strip and the numbers."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from rcdm_cli.fileio import write_bytes


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(path: Path, *, title: str, intro: str, sections: list[dict[str, Any]], numbers: dict[str, Any]) -> None:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "img{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}"
        "table{border-collapse:collapse}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
        "code{background:#f4f4f4;padding:1px 4px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{intro}</p>",
        "<h2>Numbers</h2><table>",
    ]
    for key, value in numbers.items():
        shown = f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))
        parts.append(f"<tr><th>{html.escape(key)}</th><td>{shown}</td></tr>")
    parts.append("</table>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section['title'])}</h2><p>{section.get('text', '')}</p>")
        for image in section["images"]:
            parts.append(f"<p>{_img(image, section['title'])}</p>")
    parts.append("</body></html>")
    write_bytes(path, "\n".join(parts).encode())
