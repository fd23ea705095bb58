"""NeuronSet: construction, queries, algebra, files, and model compatibility."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet, as_neuron_set


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama")[0]


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models.shared("tiny-random-gpt2")[0]


def sample(model) -> NeuronSet:
    return NeuronSet.from_indices(model, {"ffn": {0: [1, 5, 7], 2: [0]}, "q": {1: [3]}, "v": {2: [0, 31]}},
                                  {"language": "fr", "model_id": "tiny-random-llama", "rule": {"x": 1}})


def test_queries(llama):
    ns = sample(llama)
    ad = get_adapter(llama)
    assert ns.kinds == ["ffn", "q", "k", "v"] and ns.num_layers == 3
    assert ns.indices("ffn", 0).tolist() == [1, 5, 7] and ns.indices("k", 0).tolist() == []
    assert ns.count() == 7 and ns.count("ffn") == 4 and ns.count("ffn", 0) == 3 and ns.count(layer=2) == 3
    assert ns.counts()["ffn"] == [3, 0, 1]
    assert ns.total_neurons() == ad.total_neurons()
    assert ns.fraction() == pytest.approx(7 / ad.total_neurons()) and len(ns) == 7
    assert "lang=fr" in repr(ns)
    with pytest.raises(ValueError, match="unknown neuron kind"):
        NeuronSet.from_indices(llama, {"mlp": {0: [1]}})


def test_round_trip(llama, tmp_path):
    ns = sample(llama)
    ns.extra["doc_count.ffn"] = torch.arange(3 * 96, dtype=torch.int32).reshape(3, 96)
    path = ns.save(tmp_path / "sub" / "fr")  # suffix added, folders made
    assert path.name == "fr.safetensors" and path.with_suffix(".json").exists()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["count"] == 7 and meta["language"] == "fr" and meta["fingerprint"]["num_layers"] == 3
    for p in (path, tmp_path / "sub" / "fr", path.with_suffix(".json")):
        back = NeuronSet.load(p, llama)
        assert back == ns and back.meta == ns.meta
        assert torch.equal(back.extra["doc_count.ffn"], ns.extra["doc_count.ffn"])
    assert as_neuron_set(str(path)) == ns and as_neuron_set(ns, llama) is ns
    path.unlink()
    with pytest.raises(FileNotFoundError, match="no NeuronSet"):
        NeuronSet.load(path)
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a NeuronSet"):
        NeuronSet.load(tmp_path / "other.safetensors")


def test_loading_against_another_model_is_a_clear_error(llama, gpt2, tmp_path):
    path = sample(llama).save(tmp_path / "fr")
    with pytest.raises(ValueError, match="made for tiny-random-llama and does not fit"):
        NeuronSet.load(path, gpt2)
    with pytest.raises(ValueError, match="does not fit"):
        as_neuron_set(sample(llama), gpt2)
    bare = NeuronSet({"ffn": torch.zeros(3, 50, dtype=torch.bool)})  # no fingerprint: shapes are checked
    with pytest.raises(ValueError, match="shape"):
        bare.check_compatible(llama)


def test_algebra(llama):
    a = sample(llama)
    b = NeuronSet.from_indices(llama, {"ffn": {0: [5, 6]}, "v": {2: [0]}})
    assert (a & b).count() == 2 and (a | b).count() == 8 and (a - b).count() == 5 and (b - a).count() == 1
    assert a.jaccard(b) == pytest.approx(2 / 8) and a.jaccard(a) == 1.0
    empty = NeuronSet.empty_for(llama)
    assert empty.jaccard(empty) == 1.0 and (a - a) == empty
    r = a.restrict(layers=[0, 1], kinds=["ffn", "q"])
    assert r.count() == 4 and r.indices("ffn", 2).numel() == 0 and r.meta["restricted"]["layers"] == [0, 1]
    means = {k: torch.arange(m.numel(), dtype=torch.float32).reshape(m.shape) for k, m in a.masks.items()}
    with_stats = a.with_statistics({"mean": means}, {"corpus": "test"})
    kept = with_stats.restrict(layers=[0, 1])  # shapes kept, so the statistics stay valid and stay
    assert kept.statistic_names() == ["mean"] and torch.equal(kept.statistic("mean", "ffn"), means["ffn"])
    ffn_only = NeuronSet({"ffn": a.masks["ffn"]}, {"fingerprint": a.fingerprint})
    assert (a & ffn_only).count() == 4 and (a - ffn_only).count() == 3


def test_random_like(llama):
    a = sample(llama)
    r1, r2 = a.random_like(seed=1), a.random_like(seed=1)
    assert r1 == r2 and r1.counts() == a.counts()
    ex = a.random_like(seed=2, exclude=a)
    assert (ex & a).count() == 0 and ex.counts() == a.counts()


def test_sets_of_different_shapes_do_not_combine(llama, gpt2):
    with pytest.raises(ValueError, match="different shapes"):
        _ = sample(llama) & NeuronSet.empty_for(gpt2)
