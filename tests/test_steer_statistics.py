"""Activation statistics for steering: one streaming, batched pass equals a direct computation
(each document alone, every value kept, torch's mean / quantile), and they travel with the set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mwork
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.neurons.statistics import MeasureOptions, add_statistics, measure_statistics, quantile, statistics_digest

TEXTS = [
    "Le renard brun saute par-dessus le chien paresseux. Les modèles de langue lisent le français.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "",
    "敏捷的棕色狐狸跳过了懒狗。语言模型可以阅读和书写多种语言。",
    "Der schnelle braune Fuchs springt über den faulen Hund. Sprachmodelle lesen viele Sprachen. " * 3,
    "x",
]
STATS = ("mean", "median", "q0.9", "q0.0", "q1.0")
QUIET = MeasureOptions(progress=False)


def a_set(model, seed=0) -> NeuronSet:
    ns = NeuronSet.empty_for(model)
    gen = torch.Generator().manual_seed(seed)
    for k in ns.kinds:
        ns.masks[k] = torch.rand(ns.masks[k].shape, generator=gen) < 0.1
    ns.masks["ffn"][0, 3] = True
    return ns


def direct(model, tok, texts, ns, max_length):
    """Every value of every neuron of ``ns`` at every counted token, each document run alone."""
    ad = get_adapter(model)
    special = set(tok.all_special_ids)
    values = {}
    for kind in ns.kinds:
        for layer in range(ns.num_layers):
            if ns.count(kind, layer):
                values[kind, layer] = []
    sites = sorted({ad.neuron_site(k, 0).name for k, _ in values})
    for text in texts:
        ids = tok(text).input_ids[:max_length] if text.strip() else []
        prefix = 0
        while prefix < len(ids) and ids[prefix] in special:
            prefix += 1
        if len(ids) - prefix < 1:
            continue
        with mwork.capture(model, sites) as cap, torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        for (kind, layer), store in values.items():
            x = cap[ad.neuron_site(kind, layer).name, layer][0]  # (tokens, channels)
            store.append(x[prefix:, ns.indices(kind, layer)])
    return {key: torch.cat(v) for key, v in values.items()}


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-gemma3"])
def test_streaming_pass_equals_direct_computation(alias, shared_tiny):
    model, tok = shared_tiny(alias, torch.float64)
    ns = a_set(model)
    got, info = measure_statistics(model, tok, TEXTS, ns, STATS, options=MeasureOptions(max_length=24, batch_size=3, progress=False))
    ref = direct(model, tok, TEXTS, ns, 24)
    tokens = next(iter(ref.values())).shape[0]
    assert info["tokens"] == tokens and info["empty_documents"] == [2]
    for (kind, layer), vals in ref.items():
        ch = ns.indices(kind, layer)
        expect = {"mean": vals.mean(0), "median": torch.quantile(vals, 0.5, dim=0),
                  "q0.9": torch.quantile(vals, 0.9, dim=0), "q0.0": vals.min(0).values, "q1.0": vals.max(0).values}
        for stat, e in expect.items():
            assert torch.allclose(got[stat][kind][layer, ch], e, rtol=1e-10, atol=1e-12), (stat, kind, layer)
            assert np.allclose(got[stat][kind][layer, ch].numpy(),
                               np.quantile(vals.numpy(), {"mean": None, "median": 0.5, "q0.9": 0.9, "q0.0": 0.0,
                                                          "q1.0": 1.0}[stat], axis=0) if stat != "mean"
                               else vals.numpy().mean(0), rtol=1e-10, atol=1e-12)
        outside = ~ns.masks[kind][layer]
        assert torch.isnan(got["mean"][kind][layer, outside]).all()


def test_batch_size_one_matches_exactly_and_other_batches_closely(shared_tiny):
    model, tok = shared_tiny("tiny-random-qwen3", torch.float64)
    ns = a_set(model, seed=1)
    one, _ = measure_statistics(model, tok, TEXTS, ns, ("median",), options=MeasureOptions(max_length=16, batch_size=1, progress=False))
    ref = direct(model, tok, TEXTS, ns, 16)
    for (kind, layer), vals in ref.items():
        assert torch.equal(one["median"][kind][layer, ns.indices(kind, layer)], torch.quantile(vals, 0.5, dim=0))
    four, _ = measure_statistics(model, tok, TEXTS, ns, ("median",), options=MeasureOptions(max_length=16, batch_size=4, progress=False))
    for kind in ns.kinds:
        m = ns.masks[kind]
        assert torch.allclose(one["median"][kind][m], four["median"][kind][m], rtol=1e-10, atol=1e-12)


def test_quantile_equals_torch_for_any_shape():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(101, 7, generator=gen, dtype=torch.float64)
    for q in (0.0, 0.1, 0.25, 0.5, 0.9, 1.0):
        assert torch.equal(quantile(x, q), torch.quantile(x, q, dim=0))
    assert torch.equal(quantile(x[:1], 0.5), x[0])
    with pytest.raises(ValueError):
        quantile(x[:0], 0.5)


def test_statistics_are_stored_with_the_set_and_several_sets_share_one_pass(tmp_path, shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    ns = a_set(model)
    ns.meta["language"] = "fr"
    rnd = ns.random_like(seed=0, exclude=ns)
    short = MeasureOptions(max_length=24, progress=False)
    both = add_statistics(model, tok, [ns, rnd], TEXTS, ("mean", "median"), language="fr", corpus="test texts",
                          options=short)
    alone = add_statistics(model, tok, ns, TEXTS, ("mean", "median"), language="fr", options=short)
    assert torch.allclose(both[0].statistic("mean", "ffn"), alone.statistic("mean", "ffn"), equal_nan=True, atol=1e-6)
    path = both[0].save(tmp_path / "fr")
    back = NeuronSet.load(path, model)
    assert back == ns and back.statistic_names() == ["mean", "median"]
    torch.testing.assert_close(back.statistic("median", "v"), both[0].statistic("median", "v"), rtol=0, atol=0,
                               equal_nan=True)
    info = back.meta["statistics"]
    assert info["language"] == "fr" and info["corpus"] == "test texts" and info["tokens"] > 0
    assert info["model_digest"] and len(info["corpus_sha256"]) == 64
    assert statistics_digest(back) == statistics_digest(both[0]) != statistics_digest(both[1])
    # the set steers from the file alone
    with mwork.steer(model, path, "set", 1.0):
        model(**tok(TEXTS[:1], return_tensors="pt"))
    # measured statistics at neurons outside the set are NaN, never another set's
    assert torch.isnan(back.statistic("mean", "ffn")[~ns.masks["ffn"]]).all()


def test_bad_input_is_refused_before_the_pass(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    ns = a_set(model)
    with pytest.raises(ValueError, match="statistic"):
        measure_statistics(model, tok, TEXTS, ns, ("mode",), options=QUIET)
    with pytest.raises(ValueError, match="no neuron"):
        measure_statistics(model, tok, TEXTS, NeuronSet.empty_for(model), options=QUIET)
    with pytest.raises(ValueError, match="none of the"):
        measure_statistics(model, tok, ["", "  "], ns, options=QUIET)
    other, _ = shared_tiny("tiny-random-gpt2")
    with pytest.raises(ValueError, match="does not fit"):
        measure_statistics(other, tok, TEXTS, ns, options=QUIET)
