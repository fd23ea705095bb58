"""Word lists for the latent-language word tasks: common concrete nouns with their translations
(``mwork/data/words/words.tsv``, written for mwork, Apache-2.0) and cloze sentences
(``cloze.tsv``), extendable with the user's own TSV files of the same two layouts.

``words.tsv``: ``#`` comment lines, then a header ``id<TAB>en<TAB>de...`` and one concept per
line; an empty cell means the concept has no reliable single word in that language.
``cloze.tsv``: header ``id<TAB>lang<TAB>sentence``; the sentence holds ``___`` where the item's
word (from the word list, same id and language) goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable

BLANK = "___"
#: language names in their own language, for the translation prompts (``Français: "fleur" - 中文: "``)
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "de": "Deutsch", "fr": "Français", "es": "Español", "it": "Italiano", "pt": "Português",
    "ru": "Русский", "zh": "中文", "ja": "日本語", "ko": "한국어", "nl": "Nederlands", "pl": "Polski",
    "tr": "Türkçe", "ar": "العربية", "hi": "हिन्दी", "uk": "Українська", "sv": "Svenska", "vi": "Tiếng Việt",
}


@dataclass
class WordList:
    """``items[id][lang] = word``; ``cloze[(id, lang)] = sentence``; ``languages`` in header order."""

    languages: list[str] = field(default_factory=list)
    items: dict[str, dict[str, str]] = field(default_factory=dict)
    cloze: dict[tuple[str, str], str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def words(self, lang: str) -> dict[str, str]:
        """``{id: word}`` of the items that have a word in ``lang``."""
        return {i: w[lang] for i, w in self.items.items() if w.get(lang)}

    def pair(self, source: str, target: str) -> list[str]:
        """Ids of the items with a word in ``source``, ``target`` and English."""
        return [i for i, w in self.items.items() if all(w.get(lang) for lang in {source, target, "en"})]

    def merge(self, other: "WordList") -> "WordList":
        """``other``'s entries added (a word of an id and language replaces this list's)."""
        for lang in other.languages:
            if lang not in self.languages:
                self.languages.append(lang)
        for i, words in other.items.items():
            self.items.setdefault(i, {}).update(words)
        self.cloze.update(other.cloze)
        self.sources += other.sources
        return self


def _rows(text: str, where: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{where} has no header line (id<TAB>lang...)")
    header = [c.strip() for c in lines[0][1].split("\t")]
    if not header or header[0] != "id" or len(header) < 2:
        raise ValueError(f"{where}:{lines[0][0]}: the header must start with 'id' and name columns, tab-separated; got {header}")
    return header, [(n, line.split("\t")) for n, line in lines[1:]]


def parse_words(text: str, where: str = "word list") -> WordList:
    """A word list or cloze TSV (told apart by the header: ``id lang sentence`` is a cloze file)."""
    from mwork.files import check_name

    header, rows = _rows(text, where)
    out = WordList(sources=[where])
    if header == ["id", "lang", "sentence"]:
        for n, cells in rows:
            if len(cells) != 3 or not all(c.strip() for c in cells):
                raise ValueError(f"{where}:{n}: expected id, lang and sentence, tab-separated")
            i, lang, sentence = (c.strip() for c in cells)
            if BLANK not in sentence:
                raise ValueError(f"{where}:{n}: the sentence has no blank {BLANK!r}")
            out.cloze[(i, check_name(lang))] = sentence
        return out
    langs = [check_name(c) for c in header[1:]]
    if len(set(langs)) != len(langs):
        raise ValueError(f"{where}: a language column appears twice in the header {header}")
    out.languages = langs
    for n, cells in rows:
        if len(cells) > len(header):
            raise ValueError(f"{where}:{n}: {len(cells)} cells for {len(header)} columns")
        i = cells[0].strip()
        if not i:
            raise ValueError(f"{where}:{n}: empty id")
        if i in out.items:
            raise ValueError(f"{where}:{n}: id {i!r} appears twice")
        out.items[i] = {lang: c.strip() for lang, c in zip(langs, cells[1:]) if c.strip()}
    return out


def read_words(path: str | Path) -> WordList:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word list {str(path)!r} does not exist")
    return parse_words(path.read_text(encoding="utf-8"), str(path))


def builtin_words() -> WordList:
    """mwork's own word list and cloze sentences."""
    folder = resources.files("mwork") / "data" / "words"
    words = parse_words((folder / "words.tsv").read_text(encoding="utf-8"), "mwork:words.tsv")
    return words.merge(parse_words((folder / "cloze.tsv").read_text(encoding="utf-8"), "mwork:cloze.tsv"))


def load_words(extra: Iterable[str | Path] = ()) -> WordList:
    """The built-in lists with the user's TSV files (word lists or cloze files) merged in."""
    words = builtin_words()
    for path in extra:
        words.merge(read_words(path))
    return words
