"""Documents of one language, streamed from a text file, JSON Lines, SQuAD JSON or a hub data set.

Every source yields *every* document in order, empty ones included, so that detection can
report them by number instead of dropping them silently. Document numbers are 0-based
positions in the corpus (for text and JSONL files: line number - 1). ``max_docs`` keeps the
first N documents, empty ones included.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

FORMATS = ("auto", "text", "jsonl", "squad")


@dataclass(frozen=True)
class Corpus:
    """Where the documents come from; iterate it to stream them (str each).

    * ``path`` + ``format``: ``text`` (one document per line), ``jsonl`` (one JSON object per
      line, the document in ``text_field``), ``squad`` (SQuAD-format JSON such as XQuAD: each
      paragraph's ``context`` is a document; ``articles=(start, stop)`` picks articles
      ``data[start:stop]``). ``auto``: ``.jsonl``/``.ndjson`` -> jsonl, ``.json`` -> squad,
      anything else -> text.
    * ``hf_dataset`` (+ ``hf_config``, ``hf_split``, ``text_field``): a Hugging Face data set
      (hub id or local folder), streamed; needs the ``datasets`` package.
    """

    path: str | Path | None = None
    format: str = "auto"
    text_field: str = "text"
    hf_dataset: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    articles: tuple[int, int] | None = None
    max_docs: int | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("give exactly one corpus source: a file (--corpus) or a hub data set (--hf-dataset)")
        if self.format not in FORMATS:
            raise ValueError(f"unknown corpus format {self.format!r}; use one of {', '.join(FORMATS)}")
        if self.max_docs is not None and self.max_docs < 1:
            raise ValueError(f"max_docs must be at least 1, got {self.max_docs}")
        if self.path is not None and not Path(self.path).is_file():
            raise FileNotFoundError(f"corpus file {self.path} does not exist")
        if self.articles is not None and self.resolved_format() != "squad":
            raise ValueError("articles=(start, stop) only applies to SQuAD-format JSON corpora")

    def resolved_format(self) -> str:
        if self.hf_dataset is not None:
            return "hf"
        if self.format != "auto":
            return self.format
        suffix = Path(self.path).suffix.lower()
        return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "squad"}.get(suffix, "text")

    def __iter__(self) -> Iterator[str]:
        source = {"text": _text_lines, "jsonl": _jsonl, "squad": _squad, "hf": _hf}[self.resolved_format()](self)
        for n, doc in enumerate(source):
            if self.max_docs is not None and n >= self.max_docs:
                break
            yield doc

    def describe(self) -> dict[str, Any]:
        """What the corpus is, for a NeuronSet's metadata."""
        fmt = self.resolved_format()
        info: dict[str, Any] = {"format": fmt, "max_docs": self.max_docs}
        if fmt == "hf":
            info.update(hf_dataset=self.hf_dataset, hf_config=self.hf_config, hf_split=self.hf_split,
                        text_field=self.text_field)
        else:
            info["path"] = str(Path(self.path).resolve())
            if fmt == "jsonl":
                info["text_field"] = self.text_field
            if fmt == "squad":
                info["articles"] = list(self.articles) if self.articles else None
        return info


def _text_lines(c: Corpus) -> Iterator[str]:
    # binary read: split on "\n" only (a stray "\r" inside a document does not split it)
    with open(c.path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise ValueError(f"{c.path}, line {lineno}: not valid UTF-8 ({err.reason})") from err
            yield line.lstrip("\ufeff") if lineno == 1 else line


def _jsonl(c: Corpus) -> Iterator[str]:
    for lineno, line in enumerate(_text_lines(c), start=1):
        if not line.strip():
            yield ""  # a blank line is an empty document (reported), keeping numbers = line - 1
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{c.path}, line {lineno}: not valid JSON ({err.msg})") from err
        yield _field(row, c.text_field, f"{c.path}, line {lineno}")


def _squad(c: Corpus) -> Iterator[str]:
    with open(c.path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{c.path} is not valid JSON ({err.msg}); for JSON Lines use format 'jsonl'") from err
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise ValueError(f"{c.path} is not SQuAD-format JSON ({{'data': [articles]}}); "
                         "for JSON Lines use format 'jsonl', for plain text 'text'")
    articles = data["data"]
    if c.articles is not None:
        start, stop = c.articles
        articles = articles[start:stop]
    for article in articles:
        for paragraph in article.get("paragraphs", []):
            yield paragraph.get("context") or ""


def _hf(c: Corpus) -> Iterator[str]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("reading a hub data set needs the 'datasets' package: pip install datasets") from err
    ds = datasets.load_dataset(c.hf_dataset, c.hf_config, split=c.hf_split, streaming=True)
    for n, row in enumerate(ds):
        yield _field(row, c.text_field, f"{c.hf_dataset} row {n}")


def _field(row: Any, field: str, where: str) -> str:
    if not isinstance(row, dict) or field not in row:
        fields = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"{where}: no text field {field!r} (has: {fields}); choose the field with --text-field")
    value = row[field]
    return "" if value is None else str(value)


def parse_articles(text: str) -> tuple[int, int]:
    """``"0:24"`` -> (0, 24)."""
    try:
        start, stop = (int(x) for x in text.split(":"))
    except ValueError as err:
        raise ValueError(f"articles must look like START:STOP (e.g. 0:24), got {text!r}") from err
    return start, stop


class CorpusHasher:
    """sha256 of the documents in order, each as its UTF-8 length (8 bytes, little endian) then
    its bytes, so that no two different document lists share a fingerprint."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, doc: str) -> None:
        data = doc.encode("utf-8")
        self._h.update(len(data).to_bytes(8, "little"))
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def fingerprint_documents(docs: Iterable[str]) -> str:
    h = CorpusHasher()
    for d in docs:
        h.update(d)
    return h.hexdigest()
