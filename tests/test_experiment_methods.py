"""The head-to-head experiment (``mwork experiment methods``): the contract's files and columns,
its numbers against a direct computation, mean-patching, and resuming."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from safetensors.torch import load_file

import mwork
from mwork.capturing import capture
from mwork.cli import main as cli_main
from mwork.experiments.methods import MeanPatch, MethodsConfig, run_methods, size_count
from mwork.neurons.methods import language_scores
from mwork.neurons.methods.stats import PassOptions, StatsRequest, collect_statistics
from mwork.tasks.perplexity import perplexity

DETECT = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read and write many languages.",
           "Quick numbers: 1, 2, 3, 10, 42, 100.", "Hello world, again and again and again."],
    "fr": ["Le renard brun saute par-dessus le chien paresseux.", "Les modèles de langue lisent le français.",
           "Bonjour le monde.", "Encore un document en français, un peu plus long que les autres."],
}
HELDOUT = {"en": ["Another English text for the test.", "The cat sleeps on the sofa."],
           "fr": ["Un autre texte en français pour tester.", "Le chat dort sur le canapé."]}


def write_texts(tmp_path):
    specs = {}
    for what, texts in (("corpus", DETECT), ("heldout", HELDOUT)):
        specs[what] = []
        for lang, docs in texts.items():
            path = tmp_path / f"{what}.{lang}.txt"
            path.write_text("\n".join(docs) + "\n", encoding="utf-8")
            specs[what].append(f"{lang}={path}")
    return specs


def config_for(tmp_path, out, **overrides):
    specs = write_texts(tmp_path)
    settings = dict(model="tiny-random-llama", corpus=specs["corpus"], heldout=specs["heldout"], sizes=("2%",),
                    seeds=(0,), out=str(out), max_length=16, eval_max_length=16, batch_size=4, cost_docs=2,
                    cost_repeats=1, plnd_qk_method="approx")
    settings.update(overrides)
    return MethodsConfig(**settings)


def rows(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, llama):
    tmp = tmp_path_factory.mktemp("methods")
    model, tok = llama
    config = config_for(tmp, tmp / "out")
    result = run_methods(config, model=model, tokenizer=tok, progress=False)
    return tmp, config, result


def test_contract_files_and_columns(finished):
    tmp, config, result = finished
    out = tmp / "out"
    for name in ("selectivity.csv", "stability.csv", "agreement.csv", "cost.csv", "summary.csv", "matrix.csv",
                 "report.md", "results.json", "selectivity.png", "agreement.png", "cells.jsonl"):
        assert (out / name).exists(), name
    header = (out / "selectivity.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["method", "size", "lang", "own", "others", "random", "selectivity"]
    sel = rows(out / "selectivity.csv")
    assert {(r["intervention"], r["method"]) for r in sel} == {(iv, m) for iv in ("zero", "mean")
                                                                for m in ("plnd", "lape", "ap")}
    n = size_count("2%", 672)
    assert all(int(r["neurons"]) == n for r in sel)  # equal sizes for every method
    assert all(r["kinds"].startswith("ffn=") and "q=" not in r["kinds"] for r in sel if r["method"] == "lape")
    for r in sel:
        assert float(r["selectivity"]) == pytest.approx(float(r["own"]) - float(r["others"]), abs=2e-6)
    cost = rows(out / "cost.csv")
    assert [r["method"] for r in cost] == ["forward", "plnd", "lape", "ap"]
    assert float(cost[0]["relative_to_forward"]) == 1.0 and all(float(r["s_per_1k_tokens"]) > 0 for r in cost)
    stability = rows(out / "stability.csv")
    assert len(stability) == 3 * 2 and all(0 <= float(r["jaccard"]) <= 1 for r in stability)
    agreement = rows(out / "agreement.csv")
    assert {r["layer"] for r in agreement} == {"all", "0", "1", "2"}
    assert "## Summary" in (out / "report.md").read_text()


def test_numbers_equal_a_direct_computation(finished, llama):
    tmp, config, result = finished
    model, tok = llama
    n = size_count("2%", 672)
    texts = {lang: docs for lang, docs in DETECT.items()}
    scores = language_scores(model, tok, texts, "ap", config.method_config("ap"), progress=False)
    original = {lang: perplexity(model, tok, HELDOUT[lang], batch_size=4, max_length=16, progress=False)["ppl"]
                for lang in HELDOUT}
    sel = {(r["intervention"], r["method"], r["lang"]): r for r in rows(tmp / "out" / "selectivity.csv")}
    means = load_file(str(tmp / "out" / "scores" / "means.safetensors"))
    for lang in ("en", "fr"):
        ns = scores.top(lang, n)
        other = "fr" if lang == "en" else "en"
        with mwork.deactivate(model, ns):
            own = math.log(perplexity(model, tok, HELDOUT[lang], batch_size=4, max_length=16,
                                      progress=False)["ppl"] / original[lang])
            others = math.log(perplexity(model, tok, HELDOUT[other], batch_size=4, max_length=16,
                                         progress=False)["ppl"] / original[other])
        with mwork.deactivate(model, ns.random_like(0)):
            rand = math.log(perplexity(model, tok, HELDOUT[lang], batch_size=4, max_length=16,
                                       progress=False)["ppl"] / original[lang])
        row = sel["zero", "ap", lang]
        assert float(row["own"]) == pytest.approx(own, abs=2e-6)
        assert float(row["others"]) == pytest.approx(others, abs=2e-6)
        assert float(row["random"]) == pytest.approx(rand, abs=2e-6)
        with MeanPatch(model, ns, means):
            patched = math.log(perplexity(model, tok, HELDOUT[lang], batch_size=4, max_length=16,
                                          progress=False)["ppl"] / original[lang])
        assert float(sel["mean", "ap", lang]["own"]) == pytest.approx(patched, abs=2e-6)
    # the means: over the languages, of each language's mean over its text tokens at ffn.in
    stats = collect_statistics(model, tok, texts, StatsRequest(site_means=("ffn.in",)),
                               PassOptions(max_length=16, batch_size=4), progress=False)
    want = torch.stack([stats.language_means("ffn.in")[lang] for lang in texts]).mean(0)
    assert torch.allclose(means["ffn"], want, atol=1e-6)
    # stability: the sets of the even and the odd documents
    halves = [language_scores(model, tok, {lang: docs[p::2] for lang, docs in texts.items()}, "lape",
                              config.method_config("lape"), progress=False) for p in (0, 1)]
    stab = {(r["method"], r["lang"]): r for r in rows(tmp / "out" / "stability.csv")}
    for lang in texts:
        a, b = (h.top(lang, n) for h in halves)
        assert float(stab["lape", lang]["jaccard"]) == pytest.approx(a.jaccard(b), abs=1e-6)


def test_mean_patch_sets_the_neurons_to_their_means(llama, shared_tiny):
    for alias, kind in (("tiny-random-llama", "ffn"), ("tiny-random-gpt2", "q")):
        model, tok = shared_tiny(alias)
        adapter = mwork.get_adapter(model)
        ns = mwork.NeuronSet.empty_for(model)
        ns.masks[kind][0, [1, 5, 7]] = True
        means = {k: torch.randn(adapter.num_layers, c) for k, c in adapter.neuron_counts().items()}
        site = {"ffn": "ffn.in", "q": "q.out"}[kind]
        ids = torch.tensor([tok("Le renard brun saute.")["input_ids"]])
        with capture(model, site, layers=[0]) as plain:
            model(input_ids=ids)
        with MeanPatch(model, ns, means), capture(model, site, layers=[0]) as cap:
            model(input_ids=ids)
        v, p = cap[site, 0][0], plain[site, 0][0]
        assert torch.allclose(v[:, [1, 5, 7]], means[kind][0, [1, 5, 7]].expand(v.shape[0], 3))
        keep = [c for c in range(v.shape[-1]) if c not in (1, 5, 7)]
        assert torch.equal(v[:, keep], p[:, keep])
        with capture(model, site, layers=[0]) as after:
            model(input_ids=ids)
        assert torch.equal(after[site, 0], plain[site, 0])  # removed on exit


def compare_outputs(a, b):
    for name in ("selectivity.csv", "summary.csv", "matrix.csv", "stability.csv", "agreement.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    cut = "## Cost"
    assert (a / "report.md").read_text().split(cut)[0] == (b / "report.md").read_text().split(cut)[0]


def test_a_resumed_experiment_equals_an_uninterrupted_one(finished, llama, tmp_path, monkeypatch):
    ref_tmp, _, _ = finished
    model, tok = llama
    config = config_for(tmp_path, tmp_path / "out")
    from mwork.tasks import runtime

    calls = {"n": 0}
    real = runtime.Evaluator.__call__

    def dies_after_ten(self, lang):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt("killed")
        return real(self, lang)

    monkeypatch.setattr(runtime.Evaluator, "__call__", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        run_methods(config, model=model, tokenizer=tok, progress=False)
    monkeypatch.setattr(runtime.Evaluator, "__call__", real)
    cells = (tmp_path / "out" / "cells.jsonl").read_text().splitlines()
    assert len(cells) == 10 and not (tmp_path / "out" / "selectivity.csv").exists()
    with open(tmp_path / "out" / "cells.jsonl", "a", encoding="utf-8") as f:
        f.write(cells[-1][: len(cells[-1]) // 2])  # a torn line, as a kill while writing leaves it
    run_methods(config, model=model, tokenizer=tok, progress=False)
    compare_outputs(ref_tmp / "out", tmp_path / "out")
    again = (tmp_path / "out" / "cells.jsonl").read_bytes()
    run_methods(config, model=model, tokenizer=tok, progress=False)  # nothing left to compute
    assert (tmp_path / "out" / "cells.jsonl").read_bytes() == again


def test_bad_settings_fail_before_any_work(tmp_path, capsys):
    specs = write_texts(tmp_path)
    with pytest.raises(ValueError, match="same order"):
        MethodsConfig(corpus=specs["corpus"], heldout=specs["heldout"][::-1], out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="zero and/or mean"):
        MethodsConfig(corpus=specs["corpus"], heldout=specs["heldout"], out=str(tmp_path / "o"),
                      interventions=("zero", "noise"))
    with pytest.raises(ValueError, match="unknown detection method"):
        MethodsConfig(corpus=specs["corpus"], heldout=specs["heldout"], out=str(tmp_path / "o"), methods=("plnd", "x"))
    base = ["experiment", "methods", "--model", "tiny-random-llama", "--out", str(tmp_path / "o")]
    both = [a for s in specs["corpus"] for a in ("--corpus", s)]
    same = [a for s in specs["corpus"] for a in ("--heldout", s)]
    assert cli_main(base + both + same) == 2  # held-out texts that are detection texts
    assert "also detection texts" in capsys.readouterr().err
    held = [a for s in specs["heldout"] for a in ("--heldout", s)]
    assert cli_main(base + both + held + ["--sizes", "50%"]) == 2
    assert "lape draws from its 288 ffn neurons" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_contract(tmp_path, capsys):
    specs = write_texts(tmp_path)
    out = tmp_path / "cli"
    args = ["experiment", "methods", "--model", "tiny-random-llama", "--methods", "lape,ap", "--sizes", "1%,2%",
            "--seeds", "0,1", "--out", str(out), "--max-length", "16", "--eval-max-length", "16", "--cost-docs", "1",
            "--cost-repeats", "1", "--quiet"]
    args += [a for s in specs["corpus"] for a in ("--corpus", s)] + [a for s in specs["heldout"] for a in ("--heldout", s)]
    assert cli_main(args) == 0
    assert "## Summary" in capsys.readouterr().out
    sel = rows(out / "selectivity.csv")
    assert {(r["method"], r["size"], r["intervention"]) for r in sel} == {
        (m, s, iv) for m in ("lape", "ap") for s in ("1%", "2%") for iv in ("zero", "mean")}
    for name in ("stability.csv", "agreement.csv", "cost.csv"):
        assert rows(out / name)
