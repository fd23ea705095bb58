"""The lens pipeline API (``run_lens`` + ``LensConfig``), the ``mwork lens`` shim over it, and the
warning for input languages the token language identifier cannot label."""

from __future__ import annotations

import argparse
import json
import math
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import mwork
from mwork.cli import main as cli_main
from mwork.config import add_arguments, fingerprint, from_args
from mwork.lens import (
    WORDFREQ_LATIN_LANGUAGES, LensConfig, Prompt, ScriptWordfreqIdentifier, TokenLabeler,
    coverage_warnings, estimate_regions, language_shares, logit_lens, read_prompts, run_lens,
)
from mwork.lens.langid import CLASSIC_LATIN_LANGUAGES, char_script

RO_TR = Path(__file__).parent / "data" / "lens_prompts_ro_tr.jsonl"


def _topk(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["mwork_lens"])
        return {k: f.get_tensor(k) for k in f.keys()}, meta


def test_run_lens_writes_what_the_cli_writes(tmp_path, capsys):
    """`mwork lens` and run_lens with the same LensConfig write the same files."""
    args = ["--langs", "zh,ru,fr", "--max-prompts", "2", "--max-new-tokens", "2", "--top-k", "4",
            "--positions", "prompt"]
    assert cli_main(["lens", "--model", "tiny-random-qwen2", "--out", str(tmp_path / "cli"), *args]) == 0
    printed = capsys.readouterr().out

    parser = argparse.ArgumentParser()
    add_arguments(parser, LensConfig)
    config = from_args(LensConfig, parser.parse_args(args))
    assert config == LensConfig(langs=("zh", "ru", "fr"), max_prompts=2, max_new_tokens=2, top_k=4, positions="prompt")
    model, tok = mwork.load_model("tiny-random-qwen2")
    run = run_lens(model, tok, config=config, out=tmp_path / "api", model_name="tiny-random-qwen2")

    cli, api = tmp_path / "cli", tmp_path / "api"
    for name in ("lens.csv", "lens.png"):
        assert (cli / name).read_bytes() == (api / name).read_bytes(), name
    a, b = json.loads((cli / "lens.json").read_text()), json.loads((api / "lens.json").read_text())
    assert set(a["timing"]) == {"load_seconds", "lens_seconds", "label_seconds"} and "load_seconds" not in b["timing"]
    assert {k: v for k, v in a.items() if k != "timing"} == {k: v for k, v in b.items() if k != "timing"}
    assert a["config"] == fingerprint(config) and a["segment"] == "prompt" and a["warnings"] == []
    (ta, ma), (tb, mb) = _topk(cli / "lens_topk.safetensors"), _topk(api / "lens_topk.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert {k: v for k, v in ma.items() if k != "seconds"} == {k: v for k, v in mb.items() if k != "seconds"}
    assert run.english_table() in printed and set(run.files) == {"lens.csv", "lens.json", "lens.png",
                                                                 "lens_topk.safetensors", "lens_explorer.json"}
    assert (cli / "lens_explorer.json").read_bytes() == (api / "lens_explorer.json").read_bytes()


def test_run_lens_equals_its_parts(llama):
    """The shares and regions of run_lens == logit_lens + TokenLabeler + language_shares by hand."""
    model, tok = llama
    prompts = [Prompt("Le renard brun", "fr"), Prompt("Der braune Fuchs", "de"), Prompt("The brown fox", "en")]
    config = LensConfig(top_k=3, max_new_tokens=2, latin_langs=("en", "fr", "de"), progress=False)
    run = run_lens(model, tok, prompts, config)
    direct = logit_lens(model, tok, prompts, top_k=3, max_new_tokens=2, progress=False)
    shares = language_shares(direct, TokenLabeler(tok, ScriptWordfreqIdentifier(latin_languages=("en", "fr", "de"))))
    for lang in shares:
        for mine, theirs in zip(run.shares[lang], shares[lang]):
            assert mine.per_language == theirs.per_language and mine.n_tokens == theirs.n_tokens
            assert (math.isnan(mine.english_share) and math.isnan(theirs.english_share)) \
                or mine.english_share == theirs.english_share
    for mine, theirs in zip(run.result.prompts, direct.prompts):
        assert torch.equal(mine.topk_ids, theirs.topk_ids)
    assert run.regions.curve == estimate_regions(shares).curve and run.files == {}
    assert run.identifier["latin_languages"] == ["en", "fr", "de"]


@pytest.fixture
def llama():
    return mwork.load_model("tiny-random-llama")


def test_lens_config_validation_and_options():
    with pytest.raises(ValueError, match="max_prompts"):
        LensConfig(max_prompts=0)
    with pytest.raises(ValueError, match="template"):
        LensConfig(template="no placeholder")
    with pytest.raises(ValueError, match="more than once"):
        LensConfig(latin_langs=("en", "ro", "en"))
    with pytest.raises(ValueError, match="positions"):
        LensConfig(positions="middle")
    assert LensConfig(langs="zh, ru").langs == ("zh", "ru")
    assert LensConfig().latin_langs == WORDFREQ_LATIN_LANGUAGES
    parser = argparse.ArgumentParser()
    add_arguments(parser, LensConfig)
    args = parser.parse_args(["--template", "Q: {prompt}\\nA:", "--latin-langs", "en,fr", "--include-special"])
    config = from_args(LensConfig, args)
    assert config.template == "Q: {prompt}\nA:" and config.latin_langs == ("en", "fr") and config.include_special
    assert "decode_chunk" not in fingerprint(config) and "progress" not in fingerprint(config)


# ---- which Latin-script languages are candidates ------------------------------------------------


def test_every_latin_script_wordfreq_language_is_a_default_candidate():
    """WORDFREQ_LATIN_LANGUAGES == the wordfreq languages whose most frequent words are Latin script."""
    import wordfreq

    latin = set()
    for lang in wordfreq.available_languages():
        letters = [char_script(ch) for w in wordfreq.top_n_list(lang, 100) for ch in w
                   if unicodedata.category(ch).startswith("L")]
        if letters and letters.count("latin") > len(letters) / 2:
            latin.add(lang)
    assert set(WORDFREQ_LATIN_LANGUAGES) == latin and WORDFREQ_LATIN_LANGUAGES[0] == "en"
    assert set(CLASSIC_LATIN_LANGUAGES) < latin


def test_romanian_and_turkish_words_are_their_own():
    """The defect of issue 17 #9: with the old seven languages Romanian `care` was English."""
    every = ScriptWordfreqIdentifier(latin_languages=WORDFREQ_LATIN_LANGUAGES)
    classic = ScriptWordfreqIdentifier(latin_languages=CLASSIC_LATIN_LANGUAGES)
    assert classic.label("care") == "en" and every.label("care") == "ro"
    for word in ("pentru", "această", "și"):
        assert every.label(word) == "ro", word
    for word in ("için", "bir", "nasıl"):
        assert every.label(word) == "tr", word
    for word, lang in (("the", "en"), ("maison", "fr"), ("wasser", "de"), ("вода", "ru"), ("水", "zh")):
        assert every.label(word) == lang


def test_coverage_warnings():
    prompts = [Prompt("Care este capitala Italiei?", "ro"), Prompt("Quelle est la capitale ?", "fr"),
               Prompt("Яка столиця Італії?", "uk"), Prompt("Zein da Italiako hiriburua?", "eu"),
               Prompt("什么是首都？", "zh"), Prompt("What is it?", "?")]
    classic = coverage_warnings(prompts, ScriptWordfreqIdentifier(latin_languages=CLASSIC_LATIN_LANGUAGES))
    assert len(classic) == 3
    ro, uk, eu = classic
    assert "'ro'" in ro and "Latin script" in ro and "English share may be too high" in ro and ",ro" in ro
    assert "'uk'" in uk and "cyrillic" in uk and "'ru'" in uk and "English share is unaffected" in uk
    assert "'eu'" in eu and "wordfreq has no word list for 'eu'" in eu
    every = coverage_warnings(prompts, ScriptWordfreqIdentifier(latin_languages=WORDFREQ_LATIN_LANGUAGES))
    assert [w.split("'")[1] for w in every] == ["uk", "eu"]

    class Anything:  # an identifier that does not say which languages it knows is not checked
        def label(self, text: str) -> str:
            return "ro"

    assert coverage_warnings(prompts, Anything()) == []


def test_cli_warns_about_a_latin_language_it_cannot_label(tmp_path, capsys):
    prompts = tmp_path / "ro.txt"
    prompts.write_text("Care este capitala Italiei?\nDe ce este cerul albastru?\n", encoding="utf-8")
    out = tmp_path / "lens"
    base = ["lens", "--model", "tiny-random-llama", "--prompts", str(prompts), "--langs", "ro",
            "--max-new-tokens", "1", "--top-k", "2", "--out", str(out)]
    assert cli_main(base + ["--latin-langs", ",".join(CLASSIC_LATIN_LANGUAGES)]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "'ro'" in warning[0] and "--latin-langs" in warning[0]
    assert json.loads((out / "lens.json").read_text())["warnings"] == [warning[0][len("warning: "):]]
    assert cli_main(base) == 0  # the default candidates include Romanian: no warning
    assert "warning:" not in capsys.readouterr().err
    assert json.loads((out / "lens.json").read_text())["warnings"] == []


@pytest.mark.slow
def test_romanian_and_turkish_output_layers_on_the_default_model(gemma):
    """On gemma-3-270m the last layer of Romanian / Turkish prompts is mostly their own language
    with every wordfreq language as a candidate; with the old seven the English share was inflated."""
    model, tok = gemma
    prompts = read_prompts(RO_TR, max_per_lang=6)
    every = run_lens(model, tok, prompts, LensConfig(max_new_tokens=3, progress=False))
    classic = ScriptWordfreqIdentifier(latin_languages=CLASSIC_LATIN_LANGUAGES)
    old_shares = language_shares(every.result, TokenLabeler(tok, classic))
    assert every.warnings == [] and len(coverage_warnings(prompts, classic)) == 2
    for lang in ("ro", "tr"):
        last, old = every.shares[lang][-1], old_shares[lang][-1]
        assert last.english_share < 0.1 and last.english_share < old.english_share, (lang, last, old)
        assert max(last.per_language, key=last.per_language.get) == lang
        assert lang not in old.per_language
