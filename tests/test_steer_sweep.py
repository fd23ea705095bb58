"""``mwork steer``: the sweep's files as the contract states them, its measures against direct
computations, resumable content-keyed cells, and clear errors before any generation."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from mwork.cli import main
from mwork.experiments.steering import SteerConfig, SteerSets, run_steer, run_steer_sweep
from mwork.experiments.steering import sweep as sweep_module
from mwork.experiments.steering.generation import continuation_nll, position_measures
from mwork.experiments.steering.metrics import aggregate, distinct_n
from mwork.experiments.steering.prompts import load_prompts
from mwork.experiments.steering.vocab import VocabLanguages, vocab_languages
from mwork.neurons.neuronset import NeuronSet
from mwork.sentence_langid import UNKNOWN, default_identifier
from tests.conftest import TEST_DATA

REQUIRED = ("method", "strength", "target_rate", "target_prob_mass", "damage_ppl")
CORPUS = ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读和书写多种语言。",
          "素早い茶色の狐が怠け者の犬を飛び越える。"]
PROMPTS = ["The quick brown fox jumps", "Language models read and write", "Quick numbers: 1, 2, 3"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MWORK_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def files(tmp_path, shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    gen = torch.Generator().manual_seed(0)
    ns, off = NeuronSet.empty_for(model, {"language": "zh"}), NeuronSet.empty_for(model, {"language": "en"})
    for k in ns.kinds:
        ns.masks[k] = torch.rand(ns.masks[k].shape, generator=gen) < 0.08
        off.masks[k] = (torch.rand(off.masks[k].shape, generator=gen) < 0.05) & ~ns.masks[k]
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    (tmp_path / "zh.txt").write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return {"neurons": str(ns.save(tmp_path / "zh")), "off": str(off.save(tmp_path / "en")),
            "prompts": str(tmp_path / "prompts.txt"), "corpus": str(tmp_path / "zh.txt"), "dir": tmp_path}


def cli(files, out, *extra):
    return main(["steer", "--model", "tiny-random-llama", "--neurons", files["neurons"], "--target", "zh",
                 "--prompts", files["prompts"], "--source", "en", "--strengths", "0,1,2", "--mode", "set",
                 "--corpus", files["corpus"], "--off", files["off"], "--seeds", "0,1", "--out", str(out),
                 "--max-new-tokens", "5", "--device", "cpu", "--no-progress", *extra])


def test_sets_of_every_detection_method_are_steered_and_named(files):
    """A LAPE (or AP) set goes through the same sweep; steer.csv says which method made it."""
    ns = NeuronSet.load(files["neurons"])
    lape = NeuronSet(ns.masks, dict(ns.meta, method="lape"), ns.extra).save(files["dir"] / "zh_lape")
    out = files["dir"] / "lape"
    assert cli(dict(files, neurons=str(lape)), out, "--strengths", "1", "--seeds", "0") == 0
    rows = read_csv(out / "steer.csv")
    assert {r["detection"] for r in rows} == {"lape"} and {r["method"] for r in rows} == {"specific", "random"}


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_the_command_writes_the_contract_files(files):
    out = files["dir"] / "out"
    assert cli(files, out) == 0
    rows = read_csv(out / "steer.csv")
    assert set(REQUIRED) <= set(rows[0])
    assert {r["method"] for r in rows} == {"specific", "random"}
    assert {r["detection"] for r in rows} == {"plnd"}  # the set records no method: mwork detect's PLND
    assert len(rows) == 3 * 3 and {r["seed"] for r in rows if r["method"] == "random"} == {"0", "1"}
    assert sorted({float(r["strength"]) for r in rows}) == [0.0, 1.0, 2.0]
    for r in rows:
        assert 0.0 <= float(r["target_rate"]) <= 1.0 and 0.0 <= float(r["target_prob_mass"]) <= 1.0
        assert float(r["damage_ppl"]) > 1.0
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(gens) == 9 * len(PROMPTS)
    for g in gens:
        assert {"prompt", "strength", "method", "seed", "text", "detected_language"} <= set(g)
    assert (out / "steer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readable = (out / "generations.md").read_text(encoding="utf-8")
    assert PROMPTS[0] in readable and "**unsteered**" in readable and "strength 2" in readable
    assert (out / "neurons.safetensors").is_file()  # the set with the statistics measured here
    assert NeuronSet.load(out / "neurons.safetensors").statistic_names() == ["mean"]
    base = read_csv(out / "unsteered.csv")[0]
    # strength 0 with --off still switches the source neurons off: not the unsteered model
    zero = [r for r in rows if r["method"] == "specific" and float(r["strength"]) == 0.0][0]
    assert int(zero["off"]) > 0 and base["n"] == str(len(PROMPTS))


def test_identity_strength_rows_are_the_unsteered_model(files, tmp_path, shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    prompts, _ = load_prompts(files["prompts"], "zh", source="en")
    config = SteerConfig(neurons=files["neurons"], target="zh", prompts=files["prompts"], source="en",
                         out=str(tmp_path / "s"), strengths=(0.0, 1.5), mode="add", seeds=(3,), max_new_tokens=4,
                         progress=False)
    res = run_steer_sweep(model, tok, SteerSets(NeuronSet.load(files["neurons"]), corpus=CORPUS), prompts, config)
    base = res["unsteered"]
    for r in res["rows"]:
        if r["strength"] == 0.0:
            assert all(r[k] == base[k] for k in ("target_rate", "target_prob_mass", "damage_ppl", "distinct_2"))
    specific = [r for r in res["rows"] if r["method"] == "specific" and r["strength"] == 1.5][0]
    assert specific["neurons"] == NeuronSet.load(files["neurons"]).count()


def test_random_baselines_have_the_same_counts_and_their_own_statistics(files, shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    ns = NeuronSet.load(files["neurons"])
    config = SteerConfig(neurons=files["neurons"], target="zh", prompts=files["prompts"], source="en",
                         out=str(files["dir"] / "p"), mode="set", stat="median", seeds=(0, 1), kinds="ffn,v",
                         progress=False)
    methods, measured = sweep_module.prepare_sets(model, tok, SteerSets(ns, corpus=CORPUS), config)
    spec = methods["specific"][0]
    assert spec.count("q") == 0 and spec.count("ffn") == ns.count("ffn")
    for name in ("random0", "random1"):
        rnd = methods[name][0]
        assert rnd.counts() == spec.counts()
        assert (rnd & spec).count() == 0
        for k in ("ffn", "v"):
            assert torch.isfinite(rnd.statistic("median", k)[rnd.masks[k]]).all()
    assert measured is not None and measured.count() == ns.count()  # the whole set, for neurons.safetensors
    assert not (methods["random0"][0] == methods["random1"][0])


def test_resume_computes_only_what_is_missing(files, monkeypatch):
    out = files["dir"] / "resume"
    calls = []
    real = sweep_module.generate_measured
    monkeypatch.setattr(sweep_module, "generate_measured", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert cli(files, out) == 0
    assert len(calls) == 1 + 3 * 3  # the unsteered model, then 3 sets x 3 strengths (--off: 0 is steered too)
    first = (out / "steer.csv").read_text()
    calls.clear()
    assert cli(files, out) == 0
    assert calls == [] and (out / "steer.csv").read_text() == first
    assert cli(files, out, "--strengths", "0,1,2,3") == 0
    assert len(calls) == 3  # one new strength for each of the 3 sets
    calls.clear()
    lines = (out / "cells.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "cells.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20], encoding="utf-8")  # a killed write
    assert cli(files, out, "--strengths", "0,1,2,3") == 0
    assert len(calls) == 1
    calls.clear()
    ns = NeuronSet.load(files["neurons"])  # the set changes: every cell of it is recomputed, the unsteered not
    ns.masks["ffn"][0, :3] = ~ns.masks["ffn"][0, :3]
    ns.save(files["neurons"])
    assert cli(files, out, "--strengths", "0,1,2,3") == 0
    assert len(calls) == 3 * 4
    assert cli(files, out, "--mode", "add") == 2  # another experiment in that folder: refused


def test_errors_come_before_any_generation(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "generate_measured", lambda *a, **k: pytest.fail("generated"))
    base = ["steer", "--model", "tiny-random-llama", "--neurons", files["neurons"], "--target", "zh", "--prompts",
            files["prompts"], "--source", "en", "--out", str(tmp_path / "e"), "--device", "cpu", "--no-progress"]
    assert main(base) == 2  # set mode, no statistics and no corpus
    assert "--corpus" in capsys.readouterr().err
    assert main(base + ["--strengths", "1,1"]) == 2
    assert main(base + ["--stat", "q2"]) == 2

    def replaced(flag, value):
        args = list(base)
        args[args.index(flag) + 1] = value
        return args

    assert main(replaced("--target", "xx") + ["--mode", "scale"]) == 2
    assert "labels no token" in capsys.readouterr().err
    assert main(replaced("--prompts", str(tmp_path / "missing.txt"))) == 2
    assert "no prompts file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="plain text"):
        load_prompts(files["prompts"], "zh")
    with pytest.raises(ValueError, match="region or --layers"):
        SteerConfig(neurons="x", target="zh", prompts="builtin:en", out="o", region="generation", layers="1")


def test_scale_mode_needs_no_corpus_and_runs_on_a_region(files, tmp_path):
    config = SteerConfig(neurons=files["neurons"], target="zh", prompts="builtin:en", limit=2, out=str(tmp_path / "r"),
                         model="tiny-random-llama", mode="scale", strengths=(1.0, 4.0), seeds=(0,), region="generation",
                         understanding=1, generation=1, device="cpu", max_new_tokens=3, progress=False)
    res = run_steer(config)
    ns = NeuronSet.load(files["neurons"])
    assert {r["neurons"] for r in res["rows"]} == {ns.restrict([2]).count()}
    assert res["info"]["settings"]["layers"] == [2]


def test_xquad_prompts_carry_the_target_language_answers(monkeypatch):
    monkeypatch.setenv("MWORK_DATA", str(TEST_DATA))  # the local copy, as a user's $MWORK_DATA (no hub)
    prompts, notes = load_prompts("xquad:en[24:25]", "zh", limit=3)
    assert len(prompts) == 3 and all(p.answers for p in prompts) and all(p.lang == "en" for p in prompts)
    assert all("Question:" in p.rendered for p in prompts)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in prompts[0].answers[0])  # Chinese gold answers
    fr, notes = load_prompts("xquad:en[24:25]", "fr", limit=1)
    assert fr[0].answers is None and any("F1 is not measured" in n for n in notes)


def test_next_token_measures_equal_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=gen)
    index = torch.tensor([0, 1, 1, 2, 2, 2, 0, 3, 1, 2])
    vocab = VocabLanguages(("unknown", "en", "zh", "fr"), index, None, {})
    m = position_measures(logits, vocab, "zh")
    p = logits.softmax(-1)
    for t in range(4):
        zh = [i for i in range(10) if index[i] == 2]
        assert math.isclose(float(m["mass"][t]), float(p[t, zh].sum()), rel_tol=1e-6)
        order = torch.argsort(logits[t], descending=True).tolist()
        assert int(m["rank"][t]) == 1 + min(order.index(i) for i in zh)
        masses = {lang: float(p[t, [i for i in range(10) if index[i] == c]].sum()) for c, lang in enumerate(vocab.names)
                  if c}
        ranked = sorted(masses, key=lambda k: -masses[k])
        assert int(m["lang_rank"][t]) == 1 + ranked.index("zh")


def test_damage_is_the_unsteered_models_nll_of_the_generated_tokens(shared_tiny):
    model, tok = shared_tiny("tiny-random-gpt2", torch.float64)
    conts = [[5, 9, 30], [], [7]]
    got = continuation_nll(model, tok, PROMPTS, conts, batch_size=2)
    for p, c, (nll, n) in zip(PROMPTS, conts, got):
        assert n == len(c)
        if not c:
            assert nll == 0.0
            continue
        ids = torch.tensor([tok(p).input_ids + c])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].log_softmax(-1)
        ctx = len(tok(p).input_ids)
        expect = -sum(float(logp[ctx - 1 + i, t]) for i, t in enumerate(c))
        assert math.isclose(nll, expect, rel_tol=1e-9)


def test_aggregate_and_distinct_n():
    assert distinct_n([1, 2, 1, 2], 2) == 2 / 3 and distinct_n([1], 2) is None and distinct_n([3, 3, 3], 1) == 1 / 3
    items = [{"detected_language": "zh", "mass_first": 0.5, "mass_mean": 0.4, "rank_first": 1, "lang_rank_first": 1,
              "nll": 2.0, "scored": 2, "token_target_share": 1.0, "labelled_tokens": 2, "distinct_1": 1.0,
              "distinct_2": 1.0, "f1": 0.5, "text": "你好"},
             {"detected_language": "en", "mass_first": 0.1, "mass_mean": 0.2, "rank_first": 9, "lang_rank_first": 3,
              "nll": 4.0, "scored": 1, "token_target_share": 0.0, "labelled_tokens": 1, "distinct_1": 0.5,
              "distinct_2": None, "f1": None, "text": " "}]
    a = aggregate(items, "zh")
    assert a["target_rate"] == 0.5 and math.isclose(a["damage_ppl"], math.exp(6.0 / 3))
    assert a["target_rank"] == 5 and a["token_target_share"] == 2 / 3 and a["distinct_2"] == 1.0
    assert a["f1"] == 0.5 and a["n_f1"] == 1 and a["empty"] == 1


def test_sentence_identifier_and_vocabulary_labels(shared_tiny):
    ident = default_identifier()
    assert ident.label("The weather is nice today and we will go for a walk in the park.") == "en"
    assert ident.label("今天天气很好，我们去公园散步吧。") == "zh"
    assert ident.label("Il fait beau aujourd'hui, nous allons nous promener dans le parc.") == "fr"
    assert ident.label("") == UNKNOWN and ident.label("12, 34 !") == UNKNOWN
    _, tok = shared_tiny("tiny-random-llama")
    vocab = vocab_languages(tok)
    assert vocab.names[0] == "unknown" and len(vocab.index) == len(tok)
    assert vocab.code("zh") is not None and bool(vocab.mask("zh").any())
    assert int(vocab.index[tok.convert_tokens_to_ids("<eos>")]) == 0  # special tokens are unknown
    assert vocab_languages(tok).names == vocab.names  # from the cache
