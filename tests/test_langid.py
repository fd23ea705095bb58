"""Token language identification: scripts, Latin words via wordfreq, unknowns, pluggability."""

from __future__ import annotations

import pytest

from mwork.lens.langid import (
    UNKNOWN, LanguageIdentifier, ScriptWordfreqIdentifier, TokenLabeler, char_script, clean_token,
)


@pytest.fixture(scope="module")
def ident() -> ScriptWordfreqIdentifier:
    return ScriptWordfreqIdentifier()


KNOWN_WORDS = {
    "en": ["the", "because", "people", "answer", "between", "mountain", "weather"],
    "fr": ["maison", "pourquoi", "une", "beaucoup", "est", "aujourd'hui"],
    "es": ["agua", "cuál", "ciudad", "también", "por"],
    "de": ["und", "nicht", "wasser", "sehr", "warum"],
    "it": ["acqua", "città", "perché", "anche"],
    "pt": ["não", "água", "cidade", "também"],
    "nl": ["het", "een", "niet"],
    "ru": ["привет", "вода", "столица", "Почему"],
    "zh": ["中文", "水", "首都", "意大利"],
    "ja": ["ひらがな", "カタカナ", "です", "東京へ"],
    "ko": ["한국어", "수도", "이탈리아"],
    "ar": ["مرحبا"],
    "th": ["สวัสดี"],
    "hi": ["नमस्ते"],
    "el": ["γεια"],
    "he": ["שלום"],
}


@pytest.mark.parametrize("lang,word", [(lang, w) for lang, words in KNOWN_WORDS.items() for w in words])
def test_known_words(ident, lang, word):
    assert ident.label(word) == lang


@pytest.mark.parametrize("text", [
    "", " ", "\n", "123", "3.14", "2024", "!!", "?", "，", "...", "(", "😀",  # no letters
    "a", "x", "y",  # too short
    "ab1", "x2",  # letters mixed with digits
    "tion", "ation", "zzqx", "ing",  # sub-word fragments: not a word of any language above the threshold
    "\ufffd", "ab\ufffd",  # incomplete UTF-8 byte sequence
])
def test_unknown(ident, text):
    assert ident.label(text) == UNKNOWN


def test_markers_and_case(ident):
    assert clean_token("▁the") == "the" and clean_token("Ġwater ") == "water"
    assert ident.label("▁because") == "en"
    assert ident.label("ĠBECAUSE") == "en"
    assert ident.label(" maison") == "fr"
    assert ident.label("¿Cuál") == "es"  # edge punctuation stripped


def test_english_vs_other_margin(ident):
    # as common in English as in another listed language: cannot tell English from not-English
    assert ident.label("hotel") == UNKNOWN
    # English-only ranking: with only English listed, a frequent English word is English
    only_en = ScriptWordfreqIdentifier(latin_languages=["en"])
    assert only_en.label("hotel") == "en"


def test_configurable_scripts_and_languages():
    ident = ScriptWordfreqIdentifier(latin_languages=["en", "sv"], script_languages={"cyrillic": "uk"})
    assert ident.label("вода") == "uk"
    assert ident.label("中文") == UNKNOWN  # script not in the given map
    assert ident.label("och") == "sv"
    assert ident.label("maison") == UNKNOWN  # French not consulted
    assert ident.settings()["latin_languages"] == ["en", "sv"]


def test_bad_configuration():
    with pytest.raises(ValueError, match="no word list"):
        ScriptWordfreqIdentifier(latin_languages=["en", "xx"])
    with pytest.raises(ValueError, match="empty"):
        ScriptWordfreqIdentifier(latin_languages=[])


def test_char_script():
    assert [char_script(c) for c in "aЖ中カ한α"] == ["latin", "cyrillic", "han", "kana", "hangul", "greek"]
    assert char_script("1") is None


class _FakeTokenizer:
    all_special_ids = [0]
    added_tokens_decoder: dict = {}

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


class _AllGerman:
    def label(self, text: str) -> str:
        return "de"


def test_token_labeler_pluggable():
    tok = _FakeTokenizer(["<pad>", "the", "maison"])
    assert isinstance(_AllGerman(), LanguageIdentifier)
    assert TokenLabeler(tok, _AllGerman()).labels([0, 1, 2]) == [UNKNOWN, "de", "de"]  # special -> unknown
    assert TokenLabeler(tok).labels([1, 2, 1]) == ["en", "fr", "en"]
    with pytest.raises(TypeError):
        TokenLabeler(tok, object())


def test_token_labeler_byte_level_tokenizer():
    """Byte-level BPE tokens are decoded to text before labelling (not read as byte symbols)."""
    from mwork.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    labeler = TokenLabeler(tok)
    by_label: dict[str, list[str]] = {}
    for i in range(len(tok)):
        by_label.setdefault(labeler.label(i), []).append(labeler.token_text(i))
    assert {"zh", "ru", "ja", "ko", "en"} <= set(by_label), sorted(by_label)
    assert all(char_script(t.strip()[0]) == "cyrillic" for t in by_label["ru"])
    assert any("\ufffd" in t for t in by_label[UNKNOWN])  # partial UTF-8 byte tokens
    assert labeler.label(tok.pad_token_id) == UNKNOWN
