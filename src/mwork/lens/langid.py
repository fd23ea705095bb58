"""Offline language identification of single decoded tokens.

The logit lens turns every layer into a list of top-k tokens; to plot "which language does
this layer think in" each token needs a language label. Tokens are short and often sub-word
pieces, so a sentence-level detector is the wrong tool; instead:

1. **Script.** Letters outside the Latin script name their language directly (Han -> ``zh``,
   kana -> ``ja``, Hangul -> ``ko``, Cyrillic -> ``ru``, Arabic -> ``ar`` ...; see
   :data:`SCRIPT_LANGUAGES`, which a caller may override, e.g. Cyrillic -> ``uk``).
2. **Latin words.** A Latin-script token is looked up in the word-frequency lists of
   :mod:`wordfreq` (offline, shipped with the package) for a configurable set of languages
   (the lens consults all of them, :data:`WORDFREQ_LATIN_LANGUAGES`: a language missing from
   the set has its words counted as the nearest listed language, or as English).

The exact rule is in :class:`ScriptWordfreqIdentifier`. Anything that is not a word of a
known language is ``"unknown"`` (:data:`UNKNOWN`); callers count unknown tokens rather than
drop them. :func:`coverage_warnings` names the input languages an identifier cannot label.

Any object with a ``label(text: str) -> str`` method can replace the default identifier
(:class:`LanguageIdentifier`); :class:`TokenLabeler` adds the tokenizer side (token id ->
text -> label, cached).
"""

from __future__ import annotations

import bisect
import string
import unicodedata
from typing import Iterable, Protocol, Sequence, runtime_checkable

UNKNOWN = "unknown"
ENGLISH = "en"

# Code point ranges (inclusive) -> script name. Order does not matter; they do not overlap.
_SCRIPT_RANGES: list[tuple[int, int, str]] = [
    (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00AA, 0x00AA, "latin"),
    (0x00BA, 0x00BA, "latin"), (0x00C0, 0x00D6, "latin"), (0x00D8, 0x00F6, "latin"),
    (0x00F8, 0x024F, "latin"), (0x1E00, 0x1EFF, "latin"), (0xFF21, 0xFF3A, "latin"),
    (0xFF41, 0xFF5A, "latin"),
    (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x052F, "cyrillic"), (0x1C80, 0x1C8F, "cyrillic"), (0x2DE0, 0x2DFF, "cyrillic"),
    (0xA640, 0xA69F, "cyrillic"),
    (0x0530, 0x058F, "armenian"),
    (0x0590, 0x05FF, "hebrew"), (0xFB1D, 0xFB4F, "hebrew"),
    (0x0600, 0x06FF, "arabic"), (0x0750, 0x077F, "arabic"), (0x08A0, 0x08FF, "arabic"),
    (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"),
    (0x0900, 0x097F, "devanagari"), (0x0980, 0x09FF, "bengali"), (0x0A00, 0x0A7F, "gurmukhi"),
    (0x0A80, 0x0AFF, "gujarati"), (0x0B80, 0x0BFF, "tamil"), (0x0C00, 0x0C7F, "telugu"),
    (0x0C80, 0x0CFF, "kannada"), (0x0D00, 0x0D7F, "malayalam"), (0x0D80, 0x0DFF, "sinhala"),
    (0x0E00, 0x0E7F, "thai"), (0x0E80, 0x0EFF, "lao"), (0x1000, 0x109F, "myanmar"),
    (0x10A0, 0x10FF, "georgian"), (0x1200, 0x139F, "ethiopic"), (0x1780, 0x17FF, "khmer"),
    (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"), (0xA960, 0xA97F, "hangul"),
    (0xAC00, 0xD7AF, "hangul"), (0xD7B0, 0xD7FF, "hangul"), (0xFFA0, 0xFFDC, "hangul"),
    (0x3040, 0x309F, "kana"), (0x30A0, 0x30FF, "kana"), (0x31F0, 0x31FF, "kana"),
    (0xFF66, 0xFF9F, "kana"),
    (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xF900, 0xFAFF, "han"),
    (0x20000, 0x2EBEF, "han"), (0x30000, 0x3134F, "han"),
]
_SCRIPT_RANGES.sort()
_STARTS = [r[0] for r in _SCRIPT_RANGES]

#: Script -> language label used for non-Latin scripts (a script shared by several languages
#: is mapped to its most-resourced one; pass ``script_languages`` to change that).
SCRIPT_LANGUAGES: dict[str, str] = {
    "han": "zh", "kana": "ja", "hangul": "ko", "cyrillic": "ru", "greek": "el", "hebrew": "he",
    "arabic": "ar", "devanagari": "hi", "bengali": "bn", "gurmukhi": "pa", "gujarati": "gu",
    "tamil": "ta", "telugu": "te", "kannada": "kn", "malayalam": "ml", "sinhala": "si",
    "thai": "th", "lao": "lo", "myanmar": "my", "georgian": "ka", "armenian": "hy",
    "ethiopic": "am", "khmer": "km",
}

#: The seven Latin-script languages mwork consulted before every wordfreq language was: still the
#: default of :class:`ScriptWordfreqIdentifier` itself, and ``--latin-langs en,fr,es,de,it,pt,nl``
#: gives the lens this old behaviour.
CLASSIC_LATIN_LANGUAGES: tuple[str, ...] = ("en", "fr", "es", "de", "it", "pt", "nl")
DEFAULT_LATIN_LANGUAGES = CLASSIC_LATIN_LANGUAGES  # the class default (kept under its old name)

#: Every Latin-script language wordfreq 3 has a word list for (English first, then by code): the
#: lens's default candidates, so a Romanian or Turkish word is not counted as English or Spanish for
#: want of its own language. (A test checks this against wordfreq's lists.)
WORDFREQ_LATIN_LANGUAGES: tuple[str, ...] = (
    "en", "ca", "cs", "da", "de", "es", "fi", "fil", "fr", "hu", "id", "is", "it", "lt", "lv", "ms",
    "nb", "nl", "pl", "pt", "ro", "sh", "sk", "sl", "sv", "tr", "vi",
)

# Word-boundary markers that tokenizers put into token strings (SentencePiece, byte-level BPE).
_MARKERS = "\u2581\u0120\u010a"
_EDGE_PUNCT = string.punctuation + "\u00bf\u00a1\u00ab\u00bb\u201c\u201d\u2018\u2019\u201e"


def char_script(ch: str) -> str | None:
    """The script of one letter (see ``_SCRIPT_RANGES``), or None when it is not listed."""
    cp = ord(ch)
    i = bisect.bisect_right(_STARTS, cp) - 1
    if i >= 0 and _SCRIPT_RANGES[i][0] <= cp <= _SCRIPT_RANGES[i][1]:
        return _SCRIPT_RANGES[i][2]
    return None


def clean_token(text: str) -> str:
    """Strip whitespace and tokenizer word-boundary markers ('▁', 'Ġ', 'Ċ')."""
    return text.strip().strip(_MARKERS).strip()


@runtime_checkable
class LanguageIdentifier(Protocol):
    """Anything that labels a token's text with a language code or :data:`UNKNOWN`."""

    def label(self, text: str) -> str: ...


class ScriptWordfreqIdentifier:
    """Script detection plus wordfreq look-up for Latin-script words.

    Rule, for one token's text (after :func:`clean_token`):

    * empty, or containing U+FFFD (an incomplete UTF-8 byte sequence) -> unknown;
    * no letters at all (numbers, punctuation, symbols, emoji) -> unknown;
    * any kana letter -> ``ja`` (kana only occurs in Japanese);
    * otherwise the script with the most letters decides; a non-Latin script gives its
      language from ``script_languages`` (Han -> ``zh``: a kanji-only Japanese token is
      counted as Chinese, a known limitation of per-token identification); a script not in
      that map -> unknown;
    * Latin: punctuation at both ends is stripped and the rest must be letters (inner ``'``
      and ``-`` allowed) of length >= ``min_length``, else unknown (e.g. "a", "x2"). The
      lower-cased word's Zipf frequency is looked up in every language of
      ``latin_languages``. If the best frequency is below ``min_zipf`` (default 3.0: once
      per million words) the token is not a word of any of them -> unknown (sub-word
      fragments such as "tion"). Else, with E = English's frequency and O = the best
      non-English one: E >= O + ``margin`` -> ``en``; O >= E + ``margin`` -> that non-English
      language; within the margin (a word about as common in English as elsewhere, e.g.
      "hotel", "general") -> unknown, since it cannot tell English from not-English. With
      English not in ``latin_languages`` the best language wins.

    The default margin (0.5 Zipf, about 3x more frequent) and thresholds are fixed a priori,
    not fitted to any result.

    ``latin_languages`` defaults to the seven of :data:`CLASSIC_LATIN_LANGUAGES`; the lens
    (``LensConfig.latin_langs``) passes every Latin-script wordfreq language
    (:data:`WORDFREQ_LATIN_LANGUAGES`). More candidates make fewer false labels for languages
    outside the seven (Romanian ``care`` is not English), but also fewer words that can be told
    apart: English ``to``, ``for`` and ``at`` are frequent Polish, Danish and Filipino words, so
    within the margin they become unknown or foreign (measured in the lens's tests and notes).
    """

    def __init__(
        self,
        latin_languages: Sequence[str] = DEFAULT_LATIN_LANGUAGES,
        script_languages: dict[str, str] | None = None,
        min_zipf: float = 3.0,
        margin: float = 0.5,
        min_length: int = 2,
    ):
        if not latin_languages:
            raise ValueError("latin_languages is empty; give at least one wordfreq language code, e.g. 'en'")
        import wordfreq

        available = set(wordfreq.available_languages())
        missing = [lang for lang in latin_languages if lang not in available]
        if missing:
            raise ValueError(
                f"wordfreq has no word list for {', '.join(missing)}; available: {', '.join(sorted(available))}"
            )
        self._zipf = wordfreq.zipf_frequency
        self.latin_languages = tuple(latin_languages)
        self.script_languages = dict(SCRIPT_LANGUAGES if script_languages is None else script_languages)
        self.min_zipf = float(min_zipf)
        self.margin = float(margin)
        self.min_length = int(min_length)
        self._cache: dict[str, str] = {}

    def settings(self) -> dict:
        """What a result file records about the identifier."""
        return {
            "identifier": type(self).__name__,
            "latin_languages": list(self.latin_languages),
            "script_languages": self.script_languages,
            "min_zipf": self.min_zipf,
            "margin": self.margin,
            "min_length": self.min_length,
        }

    def languages(self) -> set[str]:
        """Every label this identifier can give besides unknown."""
        return set(self.latin_languages) | set(self.script_languages.values())

    def label(self, text: str) -> str:
        text = clean_token(text)
        if text not in self._cache:
            self._cache[text] = self._label(text)
        return self._cache[text]

    def _label(self, text: str) -> str:
        if not text or "\ufffd" in text:
            return UNKNOWN
        counts: dict[str, int] = {}
        for ch in text:
            if unicodedata.category(ch).startswith("L"):
                script = char_script(ch) or "other"
                counts[script] = counts.get(script, 0) + 1
        if not counts:
            return UNKNOWN
        if "kana" in counts:
            return self.script_languages.get("kana", UNKNOWN)
        script = max(counts, key=counts.get)
        if script == "latin":
            return self._latin_word(text)
        return self.script_languages.get(script, UNKNOWN)

    def _latin_word(self, text: str) -> str:
        word = text.strip(_EDGE_PUNCT).lower()
        core = word.replace("'", "").replace("-", "")
        if len(core) < self.min_length or not core.isalpha():
            return UNKNOWN
        if any(char_script(ch) != "latin" for ch in core):
            return UNKNOWN
        freqs = {lang: self._zipf(word, lang) for lang in self.latin_languages}
        best = max(freqs, key=freqs.get)
        if freqs[best] < self.min_zipf:
            return UNKNOWN
        if ENGLISH not in freqs:
            return best
        others = {lang: f for lang, f in freqs.items() if lang != ENGLISH}
        if not others:
            return ENGLISH
        other = max(others, key=others.get)
        if freqs[ENGLISH] >= others[other] + self.margin:
            return ENGLISH
        if others[other] >= freqs[ENGLISH] + self.margin:
            return other
        return UNKNOWN


class TokenLabeler:
    """Token ids -> language labels for one tokenizer, through a :class:`LanguageIdentifier`.

    Each id is decoded on its own (``tokenizer.decode([id])``, so byte-level BPE gives real
    text, not byte symbols) and labelled once; special and added tokens (``<eos>``,
    ``<unused3>`` ...) are unknown.
    """

    def __init__(self, tokenizer, identifier: LanguageIdentifier | None = None):
        self.tokenizer = tokenizer
        self.identifier = identifier if identifier is not None else ScriptWordfreqIdentifier()
        if not isinstance(self.identifier, LanguageIdentifier):
            raise TypeError("identifier must have a label(text: str) -> str method")
        self._special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._special.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        self._cache: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])

    def label(self, token_id: int) -> str:
        token_id = int(token_id)
        label = self._cache.get(token_id)
        if label is None:
            if token_id in self._special:
                label = UNKNOWN
            else:
                label = self.identifier.label(self.token_text(token_id))
            self._cache[token_id] = label
        return label

    def labels(self, token_ids: Iterable[int]) -> list[str]:
        return [self.label(t) for t in token_ids]


def dominant_script(texts: Iterable[str]) -> str | None:
    """The script with the most letters over ``texts`` (None when they hold no listed letter)."""
    counts: dict[str, int] = {}
    for text in texts:
        for ch in text:
            if unicodedata.category(ch).startswith("L"):
                script = char_script(ch)
                if script is not None:
                    counts[script] = counts.get(script, 0) + 1
    return max(counts, key=counts.get) if counts else None


def coverage_warnings(prompts: Iterable, identifier: LanguageIdentifier) -> list[str]:
    """One sentence per input language of ``prompts`` (objects with ``text`` and ``lang``) that
    ``identifier`` can never give as a label, so its tokens are counted as another language.

    A Latin-script one matters most: its words are labelled as the nearest listed language or as
    English, which inflates the English share. Identifiers without a ``languages()`` method are
    not checked; the language ``"?"`` (plain-string prompts) is skipped."""
    languages = getattr(identifier, "languages", None)
    if not callable(languages):
        return []
    known = set(languages())
    by_lang: dict[str, list[str]] = {}
    for p in prompts:
        by_lang.setdefault(p.lang, []).append(p.text)
    script_languages = getattr(identifier, "script_languages", SCRIPT_LANGUAGES)
    out = []
    for lang, texts in by_lang.items():
        if lang in known or lang == "?":
            continue
        script = dominant_script(texts)
        if script == "latin":
            try:
                import wordfreq

                listed = lang in wordfreq.available_languages()
            except ImportError:  # pragma: no cover - wordfreq is a dependency
                listed = False
            fix = (f"add it to the candidates (--latin-langs / LensConfig.latin_langs: ...,{lang})" if listed
                   else f"wordfreq has no word list for {lang!r}, so no token can be labelled {lang!r}")
            out.append(f"input language {lang!r} is written in Latin script but is not among the languages its "
                       f"tokens are looked up in ({','.join(getattr(identifier, 'latin_languages', ()))}): its "
                       f"words count as one of those or as English, so its English share may be too high; {fix}")
        elif script is not None:
            label = script_languages.get(script, UNKNOWN)
            shown = repr(label) if label != UNKNOWN else UNKNOWN
            out.append(f"input language {lang!r} is written in {script} script, whose tokens are counted as "
                       f"{shown}: its English share is unaffected, but its own share appears under {shown}")
    return out
