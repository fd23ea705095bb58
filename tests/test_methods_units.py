"""``mwork experiment methods --units neurons,sae:DIR``: neurons and a dictionary's features
compared at the same set sizes -- rows for both kinds with equal counts, feature cells equal to
hand-made edits (zeroing keeps the reconstruction error; mean-patching sets the features to their
means), random features per layer, language identification from features, neuron rows unchanged
by the added kind, and bad ``--units`` refused before the model loads."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import mwork
from mwork.cli import main as cli_main
from mwork.experiments.methods import MethodsConfig, run_methods, size_count
from mwork.experiments.methods.tables import MethodsKey
from mwork.experiments.methods.units import random_like
from mwork.hooks import Hooks
from mwork.neurons.methods import language_scores
from mwork.tasks.perplexity import perplexity
from mwork.units import Codebook, Dictionary

DETECT = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read and write many languages.",
           "Quick numbers: 1, 2, 3, 10, 42, 100.", "Hello world, again and again and again."],
    "fr": ["Le renard brun saute par-dessus le chien paresseux.", "Les modèles de langue lisent le français.",
           "Bonjour le monde.", "Encore un document en français, un peu plus long que les autres."],
}
HELDOUT = {"en": ["Another English text for the test.", "The cat sleeps on the sofa."],
           "fr": ["Un autre texte en français pour tester.", "Le chat dort sur le canapé."]}
D, WIDTH = 64, 24  # the tiny model's hidden size; features per layer (3 layers: 72 features)
N = size_count("2%", 672)  # 13 units of every kind


def _book(seed: int) -> Codebook:
    g = torch.Generator().manual_seed(seed)
    return Codebook(torch.randn(D, WIDTH, generator=g) * 4, torch.randn(WIDTH, generator=g) * 0.1,
                    torch.randn(WIDTH, D, generator=g) / 4, torch.randn(D, generator=g) * 0.01, "relu")


def write_inputs(tmp_path):
    specs = {"corpus": [], "heldout": []}
    for what, texts in (("corpus", DETECT), ("heldout", HELDOUT)):
        for lang, docs in texts.items():
            path = tmp_path / f"{what}.{lang}.txt"
            path.write_text("\n".join(docs) + "\n", encoding="utf-8")
            specs[what].append(f"{lang}={path}")
    folder = tmp_path / "sae"
    folder.mkdir()
    Dictionary({layer: _book(layer) for layer in range(3)}, site="layer.out").save(folder / "dictionary.safetensors")
    return specs, folder


def config_for(tmp_path, specs, out, **overrides):
    settings = dict(model="tiny-random-llama", corpus=specs["corpus"], heldout=specs["heldout"], sizes=("2%",),
                    seeds=(0,), out=str(out), max_length=16, eval_max_length=16, batch_size=4, cost_docs=1,
                    cost_repeats=1, plnd_qk_method="approx", methods=("lape", "ap"))
    settings.update(overrides)
    return MethodsConfig(**settings)


def rows(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama")


@pytest.fixture(scope="module")
def both(tmp_path_factory, llama):
    """One comparison of neurons and features, and the same comparison on neurons alone."""
    tmp = tmp_path_factory.mktemp("units")
    specs, folder = write_inputs(tmp)
    model, tok = llama
    mixed = config_for(tmp, specs, tmp / "mixed", units=("neurons", f"sae:{folder}"))
    run_methods(mixed, model=model, tokenizer=tok, progress=False)
    run_methods(config_for(tmp, specs, tmp / "neurons"), model=model, tokenizer=tok, progress=False)
    return tmp, folder, mixed


def test_rows_for_both_kinds_with_equal_counts(both):
    tmp, folder, _ = both
    kind = f"sae:{folder}"
    out = tmp / "mixed"
    sel = rows(out / "selectivity.csv")
    assert (out / "selectivity.csv").read_text().splitlines()[0].startswith("units,method,size,lang,")
    assert {(r["units"], r["method"], r["intervention"]) for r in sel} == {
        (u, m, iv) for u in ("neurons", kind) for m in ("lape", "ap") for iv in ("zero", "mean")}
    assert all(int(r["neurons"]) == N for r in sel)  # the same count for every kind and method
    assert all(r["kinds"].startswith("L") for r in sel if r["units"] == kind)
    for name in ("summary.csv", "matrix.csv", "stability.csv", "agreement.csv"):
        got = rows(out / name)
        assert {r["units"] for r in got} == {"neurons", kind}, name
    # agreement: methods on the same kind only
    assert {(r["units"], r["method_a"], r["method_b"]) for r in rows(out / "agreement.csv")} == {
        ("neurons", "lape", "ap"), (kind, "lape", "ap")}
    stab = [r for r in rows(out / "stability.csv") if r["units"] == kind]
    assert len(stab) == 2 * 2 and all(0 <= float(r["jaccard"]) <= 1 and int(r["neurons"]) == N for r in stab)
    langid = rows(out / "langid.csv")
    assert {r["unit_kind"] for r in langid} == {"", "neurons", kind}
    assert all(int(r["units"]) == N for r in langid if r["unit_kind"] == kind and r["lang"] != "all")
    assert [r["method"] for r in rows(out / "cost.csv")] == ["forward", "lape", "ap"]  # neurons are timed
    assert "units" in (out / "report.md").read_text().split("## Summary")[1].splitlines()[2]


def test_neuron_rows_do_not_change_when_a_kind_is_added(both):
    tmp, _, _ = both
    assert "units" not in (tmp / "neurons" / "selectivity.csv").read_text().splitlines()[0]
    assert '"units"' not in (tmp / "neurons" / "cells.jsonl").read_text()
    assert "units" not in json.loads((tmp / "neurons" / "settings.json").read_text())
    for name in ("selectivity.csv", "matrix.csv", "stability.csv", "agreement.csv", "summary.csv"):
        alone = rows(tmp / "neurons" / name)
        mixed = [{k: v for k, v in r.items() if k != "units"} for r in rows(tmp / "mixed" / name)
                 if r["units"] == "neurons"]
        assert mixed == alone, name


def test_feature_cells_equal_hand_made_edits(both, llama):
    tmp, folder, config = both
    model, tok = llama
    kind = f"sae:{folder}"
    dictionary = mwork.load_units(folder)
    scores = language_scores(model, tok, DETECT, "lape", config.method_config("lape"), units=dictionary,
                             progress=False)
    means = load_file(str(tmp / "mixed" / "scores" / "means.sae1.safetensors"))["features"]
    adapter = mwork.get_adapter(model)
    sel = {(r["intervention"], r["method"], r["lang"]): r for r in rows(tmp / "mixed" / "selectivity.csv")
           if r["units"] == kind}

    def ppl(lang, units=None, value=None):
        """Held-out perplexity with ``units``' features set to ``value(f, layer, feats)`` by hand:
        x + (new - f) W_dec[feats] at every layer, the reconstruction error kept."""
        hooks = Hooks()
        for layer in sorted(set(units.layers.tolist())) if units is not None else []:
            feats = units.features[units.layers == layer]

            def edit(x, book=dictionary.books[layer], feats=feats, layer=layer):
                f = book.encode(x.float())[..., feats]
                return (x.float() + (value(f, layer, feats) - f) @ book.W_dec[feats]).to(x.dtype)

            hooks.edit(adapter.site("layer.out", layer), edit)
        with hooks:
            return perplexity(model, tok, HELDOUT[lang], batch_size=4, max_length=16, progress=False)["ppl"]

    def zero(f, layer, feats):
        return torch.zeros_like(f)

    def mean(f, layer, feats):
        return means[layer * WIDTH + feats].to(f).expand_as(f)

    for lang in ("en", "fr"):
        units = scores.top(lang, N)
        assert units.count() == N and isinstance(units, Dictionary)
        original = ppl(lang)
        assert float(sel["zero", "lape", lang]["own"]) == pytest.approx(math.log(ppl(lang, units, zero) / original),
                                                                        abs=2e-5)
        assert float(sel["mean", "lape", lang]["own"]) == pytest.approx(math.log(ppl(lang, units, mean) / original),
                                                                        abs=2e-5)
        rand = random_like(units, 0)
        assert [int((rand.layers == i).sum()) for i in range(3)] == [int((units.layers == i).sum()) for i in range(3)]
        assert float(sel["zero", "lape", lang]["random"]) == pytest.approx(
            math.log(ppl(lang, rand, zero) / original), abs=2e-5)
    # the means: over the languages, of each language's mean activation over its text tokens
    assert means.shape == (3 * WIDTH,) and bool((means >= 0).all()) and bool((means > 0).any())


def test_units_key_keeps_neuron_keys_as_before():
    key = MethodsKey("zero", "lape", "1%", "set", "en", "fr")
    assert "units" not in key.to_json() and MethodsKey.from_json(key.to_json()) == key
    other = MethodsKey("zero", "lape", "1%", "set", "en", "fr", "sae:x")
    assert other.to_json()["units"] == "sae:x" and MethodsKey.from_json(other.to_json()) == other


def test_bad_units_are_refused_before_the_model_loads(tmp_path, capsys):
    specs, folder = write_inputs(tmp_path)
    for units, message in ((("vectors",), "one unit per layer"), (("sae:",), "neurons or sae:DIR"),
                           (("neurons", "neurons"), "twice"), ((f"sae:{tmp_path / 'none'}",), "no dictionary at")):
        with pytest.raises(ValueError, match=message):
            config_for(tmp_path, specs, tmp_path / "o", units=units)
    with pytest.raises(ValueError, match="none of --methods plnd scores dictionary features"):
        config_for(tmp_path, specs, tmp_path / "o", units=(f"sae:{folder}",), methods=("plnd",))
    with pytest.raises(ValueError, match="has 72 features"):
        config_for(tmp_path, specs, tmp_path / "o", units=(f"sae:{folder}",), sizes=("100",))
    base = ["experiment", "methods", "--model", "no-such-model-anywhere", "--out", str(tmp_path / "o")]
    base += [a for s in specs["corpus"] for a in ("--corpus", s)] + [a for s in specs["heldout"] for a in ("--heldout", s)]
    assert cli_main(base + ["--units", "neurons,vectors"]) == 2  # refused before the (missing) model is looked for
    assert "one unit per layer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_report_names_each_methods_unit_kind(both, tmp_path):
    from mwork.report import render_report

    src, folder, _ = both
    html = render_report(src / "mixed", tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"LAPE [sae:{folder}]" in html and "activation AP [sae:" in html
