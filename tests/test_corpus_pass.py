"""The one corpus pass (mwork.corpus_pass): every statistic it offers equals a direct computation
over captured values (each unit run alone, every counted value kept), several statistics share
one read of each site, and a statistic defined outside the package runs through it."""

from __future__ import annotations

import pytest
import torch
from tokenizers.processors import TemplateProcessing

import mwork
import mwork.corpus_pass as cp
import mwork.corpus_statistics as cs
from mwork.corpus_pass import PassOptions, Request, corpus_pass, residual_means
from mwork.corpus_statistics import parse_stat
from tests.plugins.max_statistic import Maximum  # a statistic written outside mwork
from mwork.models.adapters import get_adapter
from mwork.models.tiny import tiny_tokenizer
from mwork.neurons.windows import Windowing

CORPORA = {
    "fr": ["Le renard brun saute par-dessus le chien paresseux. Les modèles de langue lisent le français.", "",
           "Les chats dorment au soleil.", "x"],
    "de": ["Der schnelle braune Fuchs springt über den faulen Hund. " * 2, "Sprachmodelle lesen viele Sprachen.",
           "  "],
}


def bos_tokenizer():
    """The tiny tokenizer, adding a BOS (so that a special token is run, not counted)."""
    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return tok


def units(tok, docs, rule, max_length):
    """(document, ids, first counted, end counted) of every unit the rule runs, by the rule's text."""
    out = []
    if rule == "windows":
        win = Windowing.for_tokenizer(tok, max_length, False)
        for i, text in enumerate(docs):
            ids = tok(text, add_special_tokens=False)["input_ids"] if text.strip() else []
            out += [(i, w.ids, len(win.prefix), len(w.ids) - len(win.suffix)) for w in win.split(i, ids)]
        return out
    special = set(tok.all_special_ids)
    for i, text in enumerate(docs):
        ids = tok(text).input_ids[:max_length] if text.strip() else []
        lead = 0
        while lead < len(ids) and ids[lead] in special:
            lead += 1
        if len(ids) - lead >= 1:
            out.append((i, ids, lead, len(ids)))
    return out


def captured(model, tok, docs, sites, rule="windows", max_length=8):
    """Per (site, layer): the counted values of every unit, each run alone, and the document of
    each counted token (a Routing at ffn.route: its experts and weights at the counted tokens)."""
    values, owner = {}, []
    for doc, ids, start, stop in units(tok, docs, rule, max_length):
        with mwork.capture(model, sites) as cap, torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False)
        owner += [doc] * (stop - start)
        for (site, layer), store in cap._values.items():
            v = store[-1]
            if isinstance(v, torch.Tensor):
                v = v[0, start:stop].to(torch.float64)
            else:
                v = (v.experts[0, start:stop], v.weights[0, start:stop].to(torch.float64))
            values.setdefault((site, layer), []).append(v)
    out = {}
    for key, vs in values.items():
        out[key] = torch.cat(vs) if isinstance(vs[0], torch.Tensor) else tuple(torch.cat(p) for p in zip(*vs))
    return out, torch.tensor(owner)


def close(a, b):
    return torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_each_statistic_equals_a_direct_computation(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama", torch.float64)
    tok = bos_tokenizer()
    layers = get_adapter(model).num_layers
    requests = [Request("mean", "ffn.in"), Request("mean", "ffn.in", options={"sum": "rows"}, key="rows"),
                Request("quantiles", "ffn.in", options={"qs": (0.0, 0.25, 0.9, 1.0)}), Request("median", "ffn.in"),
                Request("firing_probability", "ffn.act"), Request("doc_means", "v.out"), Request("mean", "q.out")]
    run = corpus_pass(model, tok, CORPORA, requests, PassOptions(max_length=8, batch_size=3, parts=2), progress=False)
    for lang, docs in CORPORA.items():
        ref, owner = captured(model, tok, docs, ["ffn.in", "ffn.act", "v.out", "q.out"])
        measured = sorted(set(owner.tolist()))
        assert list(run.corpora[lang].measured) == measured
        assert run.empty[lang] == [i for i in range(len(docs)) if i not in measured]
        assert run.n_tokens(lang) == len(owner)
        assert run.tokens[lang].tolist() == [int((owner % 2 == p).sum()) for p in (0, 1)]
        for layer in range(layers):
            x = ref["ffn.in", layer]
            assert close(run.value("mean@ffn.in", lang, layer), x.mean(0))
            assert close(run.value("rows", lang, layer), x.mean(0))
            assert close(run.value("quantiles@ffn.in", lang, layer),
                         torch.quantile(x, torch.tensor([0.0, 0.25, 0.9, 1.0], dtype=torch.float64), dim=0))
            assert close(run.value("median@ffn.in", lang, layer), cs.quantile(x, 0.5))
            # means kept per part: documents i % 2
            sums = run.statistics["mean@ffn.in"][lang][layer].sums
            for p in (0, 1):
                assert close(sums[p], x[owner % 2 == p].sum(0))
            a = ref["ffn.act", layer]
            assert close(run.value("firing_probability@ffn.act", lang, layer),
                               (a > 0).sum(0).to(torch.float64) / len(a))
            v = ref["v.out", layer]
            want = torch.stack([v[owner == d].mean(0) for d in measured])
            assert close(run.value("doc_means@v.out", lang, layer), want)
            assert close(run.value("mean@q.out", lang, layer), ref["q.out", layer].mean(0))


def test_the_truncate_sorted_rule_counts_all_but_the_leading_special_tokens(shared_tiny):
    model, _ = shared_tiny("tiny-random-gpt2", torch.float64)
    tok = bos_tokenizer()
    docs = CORPORA["fr"]
    run = corpus_pass(model, tok, {"fr": docs}, [Request("mean", "ffn.in"), Request("quantiles", "ffn.in")],
                      PassOptions("truncate-sorted", max_length=6, batch_size=2), progress=False)
    ref, owner = captured(model, tok, docs, ["ffn.in"], "truncate-sorted", 6)
    assert run.n_tokens("fr") == len(owner) and run.empty["fr"] == [1]
    for layer in range(get_adapter(model).num_layers):
        x = ref["ffn.in", layer]
        assert close(run.value("mean@ffn.in", "fr", layer), x.mean(0))
        assert close(run.value("quantiles@ffn.in", "fr", layer)[0], x.median(0).values)


def test_residual_means_equal_captured_layer_outputs(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama", torch.float64)
    tok = bos_tokenizer()
    means = residual_means(model, tok, CORPORA, max_length=8, batch_size=2)
    hidden = get_adapter(model).hidden_size
    for lang, docs in CORPORA.items():
        ref, _ = captured(model, tok, docs, ["layer.out"])
        assert means[lang].shape == (get_adapter(model).num_layers, hidden) and means[lang].dtype == torch.float64
        for layer in range(means[lang].shape[0]):
            assert close(means[lang][layer], ref["layer.out", layer].mean(0))
    some = residual_means(model, tok, CORPORA, layers=[1], max_length=8, batch_size=2)
    assert some["fr"].shape == (1, hidden) and torch.equal(some["fr"][0], means["fr"][1])


def test_router_counts_equal_the_captured_routing(shared_tiny):
    model, tok = shared_tiny("tiny-random-qwen2_moe", torch.float64)
    E = get_adapter(model).num_experts
    run = corpus_pass(model, tok, CORPORA, [Request("router_counts", "ffn.route", options={"experts": E})],
                      PassOptions("truncate-sorted", max_length=16, batch_size=2), progress=False)
    for lang, docs in CORPORA.items():
        ref, _ = captured(model, tok, docs, ["ffn.route"], "truncate-sorted", 16)
        for layer in range(get_adapter(model).num_layers):
            experts, weights = ref["ffn.route", layer]
            selections, weight_sums = run.value("router_counts@ffn.route", lang, layer)
            assert torch.equal(selections, torch.bincount(experts.flatten(), minlength=E))
            want = torch.zeros(E, dtype=torch.float64).index_add_(0, experts.flatten(), weights.flatten())
            torch.testing.assert_close(weight_sums, want, rtol=1e-6, atol=1e-6)  # weights: float32-level batch effects


class Counting:
    """A read transform (channels -> 3 directions) that counts its calls."""

    def __init__(self, width):
        self.directions = torch.randn(width, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x @ self.directions.to(x.dtype)


def test_several_statistics_share_one_read_of_each_site(shared_tiny, monkeypatch):
    model, _ = shared_tiny("tiny-random-llama", torch.float64)
    tok = bos_tokenizer()
    adapter = get_adapter(model)
    registered = []

    class CountingHooks(cp.Hooks):
        def read(self, site, fn, **kw):
            registered.append((site.name, site.layer))
            return super().read(site, fn, **kw)

    monkeypatch.setattr(cp, "Hooks", CountingHooks)
    read = Counting(adapter.ffn_size)
    requests = [Request(name, "ffn.in", options=options, read=read, key=name)
                for name, options in (("mean", {}), ("quantiles", {"qs": (0.5, 0.9)}), ("firing_probability", {}),
                                      ("doc_means", {}))]
    requests += [Request(Maximum, "ffn.in", read=read), Request(Maximum, "ffn.in", key="raw max"),
                 Request("mean", "ffn.in", key="raw mean")]
    run = corpus_pass(model, tok, CORPORA, requests, PassOptions(max_length=8, batch_size=2), progress=False)
    layers = adapter.num_layers
    assert sorted(registered) == [("ffn.in", i) for i in range(layers)]  # one hook per site and layer
    batches = sum((len(units(tok, docs, "windows", 8)) + 1) // 2 for docs in CORPORA.values())
    assert read.calls == batches * layers  # the transform once per call, for five statistics
    for lang, docs in CORPORA.items():
        ref, _ = captured(model, tok, docs, ["ffn.in"])
        for layer in range(layers):
            x = ref["ffn.in", layer]
            y = x @ read.directions
            assert run.value("mean", lang, layer).shape == (3,)
            assert close(run.value("mean", lang, layer), y.mean(0))
            assert close(run.value("quantiles", lang, layer)[1], torch.quantile(y, 0.9, dim=0))
            assert close(run.value("test_max@ffn.in", lang, layer), y.max(0).values)
            assert close(run.value("raw max", lang, layer), x.max(0).values)
            assert close(run.value("raw mean", lang, layer), x.mean(0))


def test_requests_are_checked():
    with pytest.raises(ValueError, match="unknown statistic"):
        Request("mode", "ffn.in")
    with pytest.raises(ValueError, match="unknown site"):
        Request("mean", "ffn.middle")
    with pytest.raises(ValueError, match="quantiles in"):
        cs.Quantiles(qs=(1.5,))
    with pytest.raises(ValueError, match="registered already"):
        cs.register_statistic(type("Other", (cs.Statistic,), {"name": "mean"}))


def test_bad_settings_are_refused(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    with pytest.raises(ValueError, match="token rule"):
        corpus_pass(model, tok, CORPORA, [], PassOptions(tokens="everything"), progress=False)
    with pytest.raises(ValueError, match="same key|the key"):
        corpus_pass(model, tok, CORPORA, [Request("mean", "ffn.in"), Request("mean", "ffn.in")], progress=False)


def test_parse_stat_lives_here_and_steering_names_it():
    import mwork.steering

    assert mwork.steering.parse_stat is parse_stat
    assert parse_stat("Q0.90") == "q0.9" and parse_stat(" Median ") == "median"
    with pytest.raises(ValueError, match="unknown statistic"):
        parse_stat("q1.5")
