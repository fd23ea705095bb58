from __future__ import annotations

import pytest

from mwork.corpora import builtin_corpus, builtin_paragraphs


@pytest.mark.parametrize("lang", ["en", "zh", "fr", "es", "de", "ru", "ja"])
def test_builtin_corpus_has_body_paragraphs_only(lang):
    paras = builtin_paragraphs(lang)
    assert len(paras) >= 100
    for p in paras:
        assert not p.startswith("#") and "**" not in p
    # the chat preamble ("Here is 30,000 words ...") is gone
    assert not any("30,000" in p or "30 000" in p or "30.000" in p for p in paras[:2])


def test_detect_and_heldout_are_disjoint_and_complete():
    detect, held = builtin_corpus("fr"), builtin_corpus("fr", "heldout")
    assert not set(detect) & set(held)
    assert len(detect) + len(held) == len(builtin_paragraphs("fr"))


def test_unknown_language_is_a_clear_error():
    with pytest.raises(ValueError, match="available"):
        builtin_corpus("xx")
