"""HTML building blocks of the page: compact tables, embedded figures, heatmap cells, warnings.

Every table sits in a ``.tbl`` box (it scrolls inside itself on a phone instead of widening the
page); numbers are right-aligned in tabular figures. Heatmap cells always print their number,
so the colour is never the only carrier of the value.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Iterable, Sequence


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


class Cell:
    """A table cell: ``text`` (escaped), or ``raw`` HTML; ``num`` right-aligns it; ``style``
    and ``title`` are attributes."""

    __slots__ = ("html", "num", "style", "title", "header")

    def __init__(self, text: object = "", *, raw: str | None = None, num: bool = False, style: str = "",
                 title: str = "", header: bool = False):
        self.html = raw if raw is not None else esc(text)
        self.num, self.style, self.title, self.header = num, style, title, header

    def render(self, tag: str = "td") -> str:
        tag = "th" if self.header else tag
        attrs = ""
        classes = "n" if self.num else ""
        if classes:
            attrs += f" class='{classes}'"
        if self.style:
            attrs += f" style='{esc(self.style)}'"
        if self.title:
            attrs += f" title='{esc(self.title)}'"
        if tag == "th" and self.header:
            attrs += " scope='row'"
        return f"<{tag}{attrs}>{self.html}</{tag}>"


def _cell(value: object) -> Cell:
    return value if isinstance(value, Cell) else Cell(value)


def table(head: Sequence[object], rows: Iterable[Sequence[object]], caption: str = "", cls: str = "") -> str:
    """A compact table; ``head`` and row entries are text or :class:`Cell` objects (a column is
    right-aligned where its header cell says ``num``)."""
    head_cells = [_cell(h) for h in head]
    parts = ["<div class='tbl'><table" + (f" class='{cls}'" if cls else "") + ">"]
    if caption:
        parts.append(f"<caption>{caption}</caption>")
    parts.append("<thead><tr>")
    for c in head_cells:
        attrs = " scope='col'" + (" class='n'" if c.num else "") + (f" title='{esc(c.title)}'" if c.title else "")
        parts.append(f"<th{attrs}>{c.html}</th>")
    parts.append("</tr></thead><tbody>")
    for row in rows:
        cells = [_cell(v) for v in row]
        for c, h in zip(cells, head_cells):
            c.num = c.num or h.num
        parts.append("<tr>" + "".join(c.render() for c in cells) + "</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def figure(path: Path, alt: str, caption: str = "") -> str:
    """``path`` (a PNG or SVG) embedded in the page, with alternative text and a caption."""
    data = path.read_bytes()
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img alt='{esc(alt)}' src='{src}' loading='eager'>{cap}</figure>"


def is_png(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{summary}</summary>{body}</details>"


def warning(text_html: str) -> str:
    return f"<p class='warn' role='note'><strong>Warning:</strong> {text_html}</p>"


def note(text_html: str) -> str:
    return f"<p class='note'>{text_html}</p>"


def paper(text_html: str) -> str:
    """The sentence that relates a section to the paper."""
    return f"<p class='paper'><strong>Paper:</strong> {text_html}</p>"


# ---- colour scales (luminance-ordered, readable by colour-blind readers; numbers always shown) ----
BLUES = ((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
ORANGES = ((255, 245, 235), (253, 208, 162), (253, 141, 60), (217, 72, 1), (127, 39, 4))


def shade(t: float | None, scale: Sequence[tuple[int, int, int]] = BLUES) -> str:
    """CSS for a heatmap cell at ``t`` in [0, 1] (None: no colour): background and a text colour
    with enough contrast."""
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return ""
    t = min(max(t, 0.0), 1.0) * (len(scale) - 1)
    i = min(int(t), len(scale) - 2)
    f = t - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(scale[i], scale[i + 1]))
    luminance = (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255
    return f"background:rgb({r},{g},{b});color:{'#fff' if luminance < 0.5 else '#111'}"
