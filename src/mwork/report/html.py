"""The page's one HTML writer, and its building blocks: compact tables, embedded figures, heatmap
cells, warnings.

Every piece of the page is built by :func:`el` (an element: its tag, children and attributes)
into :class:`Markup`, the type of trusted, already-built HTML. A child or attribute value that is
a plain ``str`` (or a number, or anything else that is not :class:`Markup`) is text, always
escaped with ``html.escape(quote=True)``: a value read from a results file can never become an
element or an attribute, whatever it holds. Sentences that mix the page's own words with values
are :class:`Markup` templates whose ``format`` escapes every value (``Markup("{} of {}").format(a,
b)``); ``+`` and ``join`` escape what is not Markup the same way. Links must be relative URLs
(or http, https, mailto): a ``javascript:`` or other scheme is refused. JSON embedded in a
``<script>`` element escapes ``<``, ``>``, ``&``, U+2028 and U+2029 (:func:`script_json`), so no
value can end the element.

Every table sits in a ``.tbl`` box (it scrolls inside itself on a phone instead of widening the
page); numbers are right-aligned in tabular figures. Heatmap cells always print their number,
so the colour is never the only carrier of the value.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import string
from pathlib import Path
from typing import Any, Iterable, Sequence


class Markup(str):
    """Trusted HTML: what :func:`el` built, or a literal of the page's own code -- never a value
    read from a file. ``+``, :meth:`join` and :meth:`format` escape every operand that is not
    Markup; ``%`` is refused (it would not)."""

    __slots__ = ()

    def __new__(cls, text: str = "") -> "Markup":
        return super().__new__(cls, text)

    def __html__(self) -> "Markup":
        return self

    def __add__(self, other: object) -> "Markup":
        if not isinstance(other, str):
            return NotImplemented
        return Markup(str.__add__(self, esc(other)))

    def __radd__(self, other: object) -> "Markup":
        if not isinstance(other, str):
            return NotImplemented
        return Markup(str.__add__(esc(other), self))

    def __mod__(self, other: object) -> "Markup":
        raise TypeError("Markup % values would not escape them; use Markup.format or el()")

    def join(self, items: Iterable[object]) -> "Markup":  # type: ignore[override]
        return Markup(str.join(self, (esc(i) for i in items)))

    def format(self, *args: object, **kwargs: object) -> "Markup":  # type: ignore[override]
        return Markup(_FORMATTER.vformat(self, args, kwargs))

    def __repr__(self) -> str:
        return f"Markup({str.__repr__(self)})"


class _EscapingFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markup):
            if format_spec:
                raise ValueError("a format spec on Markup")
            return value
        return html.escape(format(value, format_spec), quote=True)


_FORMATTER = _EscapingFormatter()


def esc(value: object) -> Markup:
    """``value`` as HTML: Markup as it is, anything else as escaped text."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def concat(*parts: object) -> Markup:
    """The parts one after the other (None and False left out; text escaped)."""
    return Markup("").join(p for p in _flat(parts))


_TAG = re.compile(r"[a-z][a-z0-9]*\Z")
_ATTRIBUTE = re.compile(r"[a-z][a-z0-9-]*\Z")
VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})
RAW_TEXT = frozenset({"script", "style"})  # their content is not HTML: only Markup, and never their end tag
URL_ATTRIBUTES = frozenset({"href", "src", "action", "formaction", "cite", "poster", "srcset", "background"})
SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
_SCHEME = re.compile(r"([a-z][a-z0-9+.-]*):", re.I)
_IMAGE_DATA = ("data:image/png;base64,", "data:image/svg+xml;base64,")


def safe_url(url: str, *, image: bool = False) -> str:
    """``url`` if it is relative (a file beside the page, ``#id``) or http, https or mailto, and
    for an image's ``src`` also an embedded PNG or SVG; ValueError for anything else (a
    ``javascript:`` URL above all). Blanks and control characters, which a browser drops
    from a scheme, do not hide one."""
    text = str(url)
    bare = re.sub(r"[\x00-\x20\x7f]+", "", text)
    scheme = _SCHEME.match(bare)
    if scheme and scheme.group(1).lower() not in SAFE_SCHEMES:
        if not (image and bare.lower().startswith(_IMAGE_DATA)):
            raise ValueError(f"the page links no {scheme.group(1).lower()}: URL ({text[:40]!r})")
    return text


def _flat(children: Iterable[Any]) -> Iterable[Any]:
    for child in children:
        if child is None or child is False:
            continue
        if isinstance(child, (list, tuple)) or (hasattr(child, "__next__") and not isinstance(child, str)):
            yield from _flat(child)
        else:
            yield child


def _attribute_name(key: str) -> str:
    name = key.rstrip("_").replace("_", "-")  # class_ -> class, aria_label -> aria-label
    if not _ATTRIBUTE.match(name):
        raise ValueError(f"not an attribute name: {key!r}")
    if name.startswith("on"):
        raise ValueError(f"the page sets no event handler in HTML ({name}); its script adds listeners")
    return name


def el(tag: str, *children: Any, quote: str = "'", **attrs: Any) -> Markup:
    """The element ``<tag attrs>children</tag>`` as Markup.

    ``children``: Markup as it is; str, numbers and anything else as escaped text; None and
    False left out; lists, tuples and generators flattened. ``attrs`` (``class_`` for class,
    ``aria_label`` for aria-label): every value escaped; True writes the bare name, None and
    False leave the attribute out; a URL attribute must pass :func:`safe_url`; no event handler
    (``on...``). ``quote``: the attributes' quote character."""
    if not _TAG.match(tag):
        raise ValueError(f"not a tag name: {tag!r}")
    if quote not in ("'", '"'):
        raise ValueError("quote is ' or \"")
    parts = [f"<{tag}"]
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        name = _attribute_name(key)
        if value is True:
            parts.append(f" {name}")
            continue
        text = str(value)
        if name in URL_ATTRIBUTES:
            text = safe_url(text, image=tag == "img" and name == "src")
        parts.append(f" {name}={quote}{html.escape(text, quote=True)}{quote}")
    parts.append(">")
    kids = list(_flat(children))
    if tag in VOID:
        if kids:
            raise ValueError(f"<{tag}> has no children")
        return Markup("".join(parts))
    if tag in RAW_TEXT:
        if not all(isinstance(k, Markup) for k in kids):
            raise TypeError(f"<{tag}> holds only Markup (see script_json)")
        body = "".join(kids)
        if f"</{tag}" in body.lower() or (tag == "script" and "<!--" in body):
            raise ValueError(f"the content of <{tag}> would end it")
        parts.append(body)
    else:
        parts.extend(esc(k) for k in kids)
    parts.append(f"</{tag}>")
    return Markup("".join(parts))


def script_json(value: Any) -> Markup:
    """``value`` as JSON for a ``<script type='application/json'>`` element: ``<``, ``>`` and
    ``&`` (which occur only inside JSON strings) as \\u escapes, so no token text ("</script>",
    "<!--") can end or confuse the element, and U+2028/U+2029 too (JavaScript's line ends)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return Markup(text)


class Cell:
    """A table cell: ``text`` (escaped, or Markup as it is; ``raw`` is the same for Markup);
    ``num`` right-aligns it; ``style`` and ``title`` are attributes (escaped)."""

    __slots__ = ("html", "num", "style", "title", "header")

    def __init__(self, text: object = "", *, raw: Markup | None = None, num: bool = False, style: str = "",
                 title: str = "", header: bool = False):
        if raw is not None and not isinstance(raw, Markup):
            raise TypeError("Cell(raw=...) takes Markup (built with el()); text is escaped: Cell(text)")
        self.html = raw if raw is not None else esc(text)
        self.num, self.style, self.title, self.header = num, style, title, header

    def render(self, tag: str = "td") -> Markup:
        tag = "th" if self.header else tag
        return el(tag, self.html, class_="n" if self.num else None, style=self.style or None,
                  title=self.title or None, scope="row" if tag == "th" and self.header else None)


def short_text(text: Any, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis; ``(empty)`` for none."""
    words = " ".join(str(text or "").split())
    if not words:
        return "(empty)"
    return words if len(words) <= limit else words[:limit - 1].rstrip() + "…"


def generation_cell(text: Any, language: Any, limit: int) -> Cell:
    """A generated text, cut to ``limit`` characters, with its detected language beside it."""
    return Cell(raw=concat(short_text(text, limit), " ", el("span", f"[{language or '?'}]", class_="sub")),
                style="overflow-wrap:anywhere")


def _cell(value: object) -> Cell:
    return value if isinstance(value, Cell) else Cell(value)


def table(head: Sequence[object], rows: Iterable[Sequence[object]], caption: object = "", cls: str = "") -> Markup:
    """A compact table; ``head`` and row entries are text, Markup or :class:`Cell` objects (a
    column is right-aligned where its header cell says ``num``); ``caption`` text or Markup."""
    head_cells = [_cell(h) for h in head]
    body = []
    for row in rows:
        cells = [_cell(v) for v in row]
        for c, h in zip(cells, head_cells):
            c.num = c.num or h.num
        body.append(el("tr", [c.render() for c in cells]))
    return el("div", el(
        "table", el("caption", caption) if caption else None,
        el("thead", el("tr", [el("th", c.html, scope="col", class_="n" if c.num else None, title=c.title or None)
                              for c in head_cells])),
        el("tbody", body), class_=cls or None), class_="tbl")


def figure(path: Path, alt: str, caption: object = "") -> Markup:
    """``path`` (a PNG or SVG) embedded in the page, with alternative text and a caption (text or
    Markup)."""
    data = path.read_bytes()
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return el("figure", el("img", alt=alt, src=src, loading="eager"),
              el("figcaption", caption) if caption else None)


def is_png(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def details(summary: object, body: object, open_: bool = False) -> Markup:
    return el("details", el("summary", summary), body, open=open_)


def warning(text: object) -> Markup:
    return el("p", el("strong", "Warning:"), " ", text, class_="warn", role="note")


def note(text: object) -> Markup:
    return el("p", text, class_="note")


def paper(text: object) -> Markup:
    """The sentence that relates a section to the paper."""
    return el("p", el("strong", "Paper:"), " ", text, class_="paper")


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
