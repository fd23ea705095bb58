"""Language identification from units (``langid.csv`` of ``mwork experiment methods``): the
per-document firing statistic against a direct computation, the accuracy table by hand, and the
experiment's file with its cached statistic."""

from __future__ import annotations

import csv

import pytest
import torch

import mwork.experiments.methods.langid as langid
from mwork.capturing import capture
from mwork.corpus_pass import PassOptions, Request, corpus_pass
from mwork.experiments.methods import MethodsConfig, run_methods
from mwork.experiments.methods.schema import LANGID
from mwork.neurons.windows import Windowing
from mwork.sentence_langid import default_identifier

TEXTS = {"en": ["The cat sleeps on the sofa.", "", "Language models read and write many languages every day."],
         "fr": ["Le chat dort sur le canapé.", "Les modèles de langue lisent le français."]}
DETECT = {"en": ["The quick brown fox jumps over the lazy dog.", "Hello world, again and again.",
                 "Quick numbers: 1, 2, 3, 10, 42, 100."],
          "fr": ["Le renard brun saute par-dessus le chien paresseux.", "Bonjour le monde.",
                 "Encore un document en français, un peu plus long."]}


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama")


def direct_firing(model, tok, text, site, layer):
    """The share of the text's tokens at which each channel of ``site`` is > 0: the document
    run alone, with the tokenizer's special tokens around it (not counted)."""
    w = Windowing.for_tokenizer(tok, 64, False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    with capture(model, site, layers=[layer]) as cap:
        model(input_ids=torch.tensor([[*w.prefix, *ids, *w.suffix]]))
    values = cap[site, layer][0, len(w.prefix):len(w.prefix) + len(ids)]
    return (values > 0).double().mean(0)


def test_doc_firing_equals_a_direct_computation(llama):
    model, tok = llama
    # batched with padding (packed policy), one window per document
    run = corpus_pass(model, tok, TEXTS, [Request("doc_firing", "ffn.act", [1])],
                      PassOptions("windows", 64, False, batch_size=4), progress=False)
    for lang, docs in TEXTS.items():
        stat = run.statistics["doc_firing@ffn.act"][lang][1]
        measured = run.corpora[lang].measured
        assert list(measured) == [i for i, d in enumerate(docs) if d]  # empty texts are not run
        want = torch.stack([direct_firing(model, tok, docs[i], "ffn.act", 1) for i in measured])
        assert torch.allclose(stat.result(), want, atol=0, rtol=1e-12)
    # a selection of units of two kinds, read in one pass
    parts = {("ffn", 0): torch.tensor([1, 5, 9]), ("q", 2): torch.tensor([0, 3])}
    firing = langid.measure_doc_firing(model, tok, TEXTS, parts, PassOptions("windows", 64, False, 2))
    for lang, docs in TEXTS.items():
        prob = firing.probability(lang)
        for row, i in enumerate(firing.docs[lang].tolist()):
            ffn = direct_firing(model, tok, docs[i], "ffn.act", 0)[[1, 5, 9]]
            q = direct_firing(model, tok, docs[i], "q.out", 2)[[0, 3]]
            assert torch.allclose(prob[row], torch.cat([ffn, q]), atol=0, rtol=1e-12)
        score = firing.set_score(lang, {("q", 2): torch.tensor([3])})
        assert torch.equal(score, prob[:, 4])
    # windows of a long document add up to the whole document
    small = langid.measure_doc_firing(model, tok, TEXTS, parts, PassOptions("windows", 6, False, 3))
    whole = langid.measure_doc_firing(model, tok, TEXTS, parts, PassOptions("windows", 256, False, 3))
    assert torch.equal(small.tokens["en"], whole.tokens["en"])
    with pytest.raises(ValueError, match="not measured"):
        firing.columns({("k", 0): torch.tensor([0])})


def test_accuracy_table_by_hand():
    langs = ("en", "fr", "zh")
    scores = {"en": torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.5, 0.1], [0.3, 0.3, 0.0]]),  # right, wrong, tie -> en
              "fr": torch.tensor([[0.4, 0.4, 0.4], [0.0, 0.7, 0.2]]),  # tie of three -> en (wrong), right
              "zh": torch.tensor([[0.1, 0.6, 0.6]])}  # tie fr/zh -> fr (wrong)
    fasttext = {"en": [True, True, False], "fr": [True, True], "zh": [False]}
    pred, tied = langid.predict(scores["fr"])
    assert pred.tolist() == [0, 1] and tied.tolist() == [True, False]
    rows = {r["lang"]: r for r in langid.accuracy_rows(scores, langs, fasttext)}
    assert [rows[k]["correct"] for k in (*langs, "all")] == [2, 1, 0, 3]
    assert [rows[k]["ties"] for k in (*langs, "all")] == [1, 1, 1, 3]
    assert rows["en"]["accuracy"] == pytest.approx(2 / 3) and rows["zh"]["accuracy"] == 0.0
    assert rows["all"]["n"] == 6 and rows["all"]["accuracy"] == pytest.approx(3 / 6)
    assert rows["all"]["fasttext_accuracy"] == pytest.approx(4 / 6) and rows["fr"]["fasttext_accuracy"] == 1.0
    # families of sets over a hand-made firing: en's unit fires on en's documents only
    firing = langid.DocFiring({("ffn", 0): torch.tensor([0, 1])},
                              {"en": torch.tensor([[3, 0], [1, 1]]), "fr": torch.tensor([[0, 2]])},
                              {"en": torch.tensor([3, 2]), "fr": torch.tensor([4])},
                              {"en": torch.tensor([0, 1]), "fr": torch.tensor([0])})
    fam = langid.SetFamily("m", "1", "specific", {"en": {("ffn", 0): torch.tensor([0])},
                                                   "fr": {("ffn", 0): torch.tensor([1])}})
    out = langid.langid_rows(firing, [fam], ("en", "fr"), {"en": [True, False], "fr": [True]})
    ft, mine = [r for r in out if r["method"] == "fasttext"], [r for r in out if r["method"] == "m"]
    assert [(r["lang"], r["accuracy"]) for r in ft] == [("en", 0.5), ("fr", 1.0), ("all", 2 / 3)]
    # en doc 1: 0.5 vs 0.5, a tie -> en (right); fr doc: 0 vs 0.5 -> fr
    assert [(r["lang"], r["correct"], r["ties"]) for r in mine] == [("en", 2, 1), ("fr", 1, 0), ("all", 3, 1)]
    assert all(r["chance"] == 0.5 and r["units"] == 1 for r in mine)


def test_experiment_writes_langid_and_reuses_the_cached_statistic(llama, tmp_path, monkeypatch):
    model, tok = llama
    specs = {"corpus": [], "heldout": []}
    for what, texts in (("corpus", DETECT), ("heldout", TEXTS)):
        for lang, docs in texts.items():
            path = tmp_path / f"{what}.{lang}.txt"
            path.write_text("\n".join(docs) + "\n", encoding="utf-8")
            specs[what].append(f"{lang}={path}")
    config = MethodsConfig(model="tiny-random-llama", corpus=specs["corpus"], heldout=specs["heldout"],
                           methods=("lape", "ap"), sizes=("2%",), seeds=(0,), interventions=("zero",),
                           stability=False, out=str(tmp_path / "out"), max_length=16, eval_max_length=16,
                           batch_size=4, cost_docs=1, cost_repeats=1)
    run_methods(config, model=model, tokenizer=tok, progress=False)
    out = tmp_path / "out"
    with open(out / LANGID.name, encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == LANGID.columns
        rows = list(reader)
    keys = [(r["method"], r["variant"], r["lang"]) for r in rows]
    assert keys == [("fasttext", "", lang) for lang in ("en", "fr", "all")] + [
        (m, v, lang) for m in ("lape", "ap") for v in ("specific", "random0") for lang in ("en", "fr", "all")]
    ident = default_identifier()
    right = {lang: [ident.label(t) == lang for t in docs if t] for lang, docs in TEXTS.items()}
    for r in rows:
        right_here = right["en"] + right["fr"] if r["lang"] == "all" else right[r["lang"]]
        assert int(r["n"]) == len(right_here)  # the empty text is left out
        assert float(r["fasttext_accuracy"]) == pytest.approx(sum(right_here) / len(right_here))
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["chance"]) == 0.5
    assert "## Language identification" in (out / "report.md").read_text()
    cached = out / "scores" / "doc_firing.safetensors"
    before = (cached.read_bytes(), (out / LANGID.name).read_bytes())

    def no_pass(*args, **kwargs):
        raise AssertionError("the firing statistic was measured again")

    monkeypatch.setattr(langid, "measure_doc_firing", no_pass)
    run_methods(config, model=model, tokenizer=tok, progress=False)
    assert (cached.read_bytes(), (out / LANGID.name).read_bytes()) == before
