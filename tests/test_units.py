"""Units and the one intervention primitive: directions edit exactly what their formulas say
(against hooks written here), unit files round-trip through ``mwork.load_units`` for every kind
(NeuronSets included, nothing unpickled), and a unit kind written outside the package runs
through ``deactivate`` and ``steer`` like mwork's own."""

from __future__ import annotations

import pickle

import pytest
import torch

import mwork
from mwork.hooks import Hooks, active_hooks
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.steering import Steering
from mwork.units import (UNIT_KINDS, Directions, Intervention, NeuronUnits, UnitEdit, load_units,
                         register_unit_kind)
from tests.plugins.one_direction import OneDirection

LAYER = 1


def _batch(tok):
    tok.padding_side = "left"
    return tok(["The quick brown fox jumps over the dog.", "Быстрая лиса"], return_tensors="pt", padding=True)


def _logits(model, batch, edit=None, layer=LAYER):
    """Logits, with ``edit`` (x -> x') placed by a hook written here at layer.out of ``layer``."""
    hooks = Hooks()
    if edit is not None:
        hooks.edit(get_adapter(model).site("layer.out", layer), edit)
    with hooks, torch.no_grad():
        return model(**batch).logits


def _directions(model, seed=0, layers=(LAYER,), stats=None) -> Directions:
    d = get_adapter(model).fingerprint()["hidden_size"]
    gen = torch.Generator().manual_seed(seed)
    return Directions(torch.randn(len(layers), d, generator=gen), list(layers), names=["fr"] * len(layers),
                      stats=stats, meta={"fingerprint": get_adapter(model).fingerprint()})


def test_add_is_x_plus_alpha_v(rep_dense_tiny):
    model, tok = rep_dense_tiny
    batch = _batch(tok)
    dirs = _directions(model)
    v = dirs.write[0]
    want = _logits(model, batch, lambda x: x + 2.5 * v.to(x))
    with mwork.steer(model, dirs, "add", 2.5), torch.no_grad():
        got = model(**batch).logits
    real = batch["attention_mask"].bool()  # padding is never steered, so compare real tokens
    torch.testing.assert_close(got[real], want[real])
    assert active_hooks(get_adapter(model).layers[LAYER]) == 0


def test_zero_removes_the_component_and_set_sets_the_coordinate(rep_dense_tiny):
    model, tok = rep_dense_tiny
    batch = _batch(tok)
    dirs = _directions(model, stats={"mean": torch.tensor([0.75])})
    v, r = dirs.write[0].double(), dirs.read[0].double()
    torch.testing.assert_close(r, v / v.dot(v))
    with mwork.deactivate(model, dirs), mwork.capture(model, "layer.out", layers=[LAYER]) as cap, torch.no_grad():
        model(**batch)
    assert cap["layer.out", LAYER].double().matmul(r).abs().max() < 1e-5
    with mwork.steer(model, dirs, "set:mean", 1.0), \
            mwork.capture(model, "layer.out", layers=[LAYER]) as cap, torch.no_grad():
        model(**batch)
    coord = cap["layer.out", LAYER].double().matmul(r)[batch["attention_mask"].bool()]
    torch.testing.assert_close(coord, torch.full_like(coord, 0.75), atol=1e-4, rtol=0)


def test_an_unedited_direction_changes_nothing(rep_dense_tiny):
    model, tok = rep_dense_tiny
    batch = _batch(tok)
    dirs = _directions(model)
    clean = _logits(model, batch)
    group, = dirs.groups(model)
    with Intervention(model, [UnitEdit(group, "affine", keep=1.0, shift=torch.zeros(1))]), torch.no_grad():
        assert torch.equal(model(**batch).logits, clean)


def test_keep_norm_restores_each_edited_norm(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    batch = _batch(tok)
    dirs = _directions(model)
    with mwork.capture(model, "layer.out", layers=[LAYER]) as cap, torch.no_grad():
        model(**batch)
    before = cap["layer.out", LAYER].norm(dim=-1)
    with mwork.steer(model, dirs, "add", 4.0, keep_norm=True), \
            mwork.capture(model, "layer.out", layers=[LAYER]) as cap, torch.no_grad():
        model(**batch)
    after = cap["layer.out", LAYER]
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(after.norm(dim=-1)[real], before[real], rtol=1e-5, atol=1e-5)
    plain = _logits(model, batch, lambda x: x + 4.0 * dirs.write[0].to(x))
    with mwork.steer(model, dirs, "add", 4.0, keep_norm=True), torch.no_grad():
        assert not torch.allclose(model(**batch).logits[real], plain[real])


def test_generated_positions_leave_the_prompt_pass_alone(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    batch = _batch(tok)
    clean = _logits(model, batch)
    with mwork.steer(model, _directions(model), "add", 8.0, positions="generated"), torch.no_grad():
        assert torch.equal(model(**batch).logits, clean)


def test_off_removes_the_source_direction_and_adds_the_target(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    batch = _batch(tok)
    target, source = _directions(model, seed=1), _directions(model, seed=2)
    v, r_src, w_src = target.write[0], source.read[0], source.write[0]

    def by_hand(x):
        y = x + 1.5 * v.to(x)
        return y - (y @ r_src.to(x))[..., None] * w_src.to(x)

    want = _logits(model, batch, by_hand)
    with mwork.steer(model, target, "add", 1.5, off=source), torch.no_grad():
        got = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


def test_layers_restrict_directions_and_are_checked(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    dirs = _directions(model, layers=(0, 1, 1))
    assert dirs.restrict([1]).count() == 2 and [g.parts[0][1] for g in dirs.groups(model)] == [0, 1]
    with pytest.raises(ValueError, match="out of range"):
        mwork.steer(model, dirs, "add", 1.0, layers="99")
    with pytest.raises(ValueError, match="no neuron kinds"):
        mwork.deactivate(model, dirs, kinds="ffn")


def test_unit_files_round_trip_through_load_units(shared_tiny, tmp_path):
    model, _ = shared_tiny("tiny-random-llama")
    dirs = _directions(model, layers=(0, 1), stats={"mean": torch.tensor([0.5, -1.0])})
    path = dirs.save(tmp_path / "fr")
    back = mwork.load_units(path, model)
    assert isinstance(back, Directions) and back.names == ["fr", "fr"] and back.site == "layer.out"
    assert torch.equal(back.write, dirs.write) and torch.equal(back.read, dirs.read)
    assert torch.equal(back.layers, dirs.layers) and torch.equal(back.stats["mean"], dirs.stats["mean"])
    assert (tmp_path / "fr.json").exists()
    ns = NeuronSet.empty_for(model)
    ns.masks["ffn"][0, :3] = True
    units = load_units(ns.save(tmp_path / "set"), model)
    assert isinstance(units, NeuronUnits) and units.neurons == ns and units.count() == 3


def test_unit_files_that_are_not_ours_are_refused(shared_tiny, tmp_path):
    model, _ = shared_tiny("tiny-random-llama")
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ValueError, match="not a readable unit set"):
        load_units(bad)
    with pytest.raises(ValueError, match="hidden size"):
        Directions(torch.ones(1, 7), [0]).check_compatible(model)
    with pytest.raises(FileNotFoundError):
        load_units(tmp_path / "missing")


def test_a_unit_kind_from_outside_runs_through_deactivate_and_steer(shared_tiny, tmp_path):
    model, tok = shared_tiny("tiny-random-llama")
    batch = _batch(tok)
    d = get_adapter(model).fingerprint()["hidden_size"]
    v = torch.randn(d, generator=torch.Generator().manual_seed(3))
    register_unit_kind(OneDirection)
    try:
        unit = load_units(OneDirection(v, LAYER).save(tmp_path / "one.safetensors"), model)
        assert isinstance(unit, OneDirection)
        n = unit.v
        real = batch["attention_mask"].bool()
        want = _logits(model, batch, lambda x: x - (x @ n.to(x))[..., None] * n.to(x))
        with mwork.deactivate(model, unit), torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, want)
        want = _logits(model, batch, lambda x: x + 3.0 * (x @ n.to(x))[..., None] * n.to(x))
        with mwork.steer(model, unit, "scale", 4.0), torch.no_grad():
            torch.testing.assert_close(model(**batch).logits[real], want[real])
    finally:
        UNIT_KINDS.pop("one-direction", None)


def test_random_directions_keep_each_norm_and_layer(shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    dirs = _directions(model, layers=(0, 1), stats={"mean": torch.tensor([1.0, 2.0])})
    rand = dirs.random_like(0)
    torch.testing.assert_close(rand.write.norm(dim=-1), dirs.write.norm(dim=-1))
    assert torch.equal(rand.layers, dirs.layers) and not rand.stats
    assert torch.equal(rand.write, dirs.random_like(0).write) and not torch.equal(rand.write, dirs.random_like(1).write)
    cos = torch.nn.functional.cosine_similarity(rand.write, dirs.write, dim=-1)
    assert cos.abs().max() < 0.9


def test_an_outside_unit_kind_and_statistic_run_through_the_corpus_pass(shared_tiny):
    from mwork.corpus_pass import PassOptions, Request, corpus_pass
    from mwork.neurons.windows import Windowing
    from tests.plugins.max_statistic import Maximum

    model, tok = shared_tiny("tiny-random-llama")
    d = get_adapter(model).fingerprint()["hidden_size"]
    unit = OneDirection(torch.randn(d, generator=torch.Generator().manual_seed(4)), LAYER)
    group, = unit.groups(model)
    docs = ["The cat sleeps.", "Rivers run to the sea again."]
    request = Request(Maximum, "layer.out", [LAYER], read={LAYER: group.read}, width={LAYER: 1}, key="max")
    got = corpus_pass(model, tok, {"en": docs}, [request], PassOptions(max_length=32), progress=False).value("max", "en", LAYER)
    win = Windowing.for_tokenizer(tok, 32, False)
    best = -float("inf")
    for text in docs:
        ids = list(win.prefix) + tok(text, add_special_tokens=False)["input_ids"] + list(win.suffix)
        with mwork.capture(model, "layer.out", layers=[LAYER]) as cap, torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        x = cap["layer.out", LAYER][0, len(win.prefix):len(ids) - len(win.suffix)]
        best = max(best, float((x @ unit.v).max()))
    assert got.shape == (1,)
    assert abs(float(got[0]) - best) < 1e-5


# ---- dictionary features ---------------------------------------------------------------------


def _book(d, m, activation="relu", seed=0, **kw):
    from mwork.units import Codebook

    gen = torch.Generator().manual_seed(seed)
    return Codebook(torch.randn(d, m, generator=gen) / d ** 0.5, torch.randn(m, generator=gen) * 0.1,
                    torch.randn(m, d, generator=gen) / m ** 0.5, torch.randn(d, generator=gen) * 0.1,
                    activation, **kw)


def test_dictionary_activations_against_a_direct_computation():
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))
    relu = _book(8, 16)
    pre = (x - relu.b_dec) @ relu.W_enc + relu.b_enc
    torch.testing.assert_close(relu.encode(x), pre.clamp_min(0))
    jump = _book(8, 16, "jumprelu", threshold=torch.full((16,), 0.2))
    torch.testing.assert_close(jump.encode(x), torch.where(pre > 0.2, pre, torch.zeros_like(pre)))
    topk = _book(8, 16, "topk", k=3)
    got = topk.encode(x)
    for row, p in zip(got.reshape(-1, 16), pre.reshape(-1, 16)):
        keep = p.argsort(descending=True)[:3]
        want = torch.zeros(16)
        want[keep] = p[keep].clamp_min(0)
        torch.testing.assert_close(row, want)


def test_an_identity_dictionary_changes_nothing_and_ablation_keeps_the_error(shared_tiny, tmp_path):
    from mwork.units import Codebook, Dictionary

    model, tok = shared_tiny("tiny-random-llama")
    batch = _batch(tok)
    d = get_adapter(model).fingerprint()["hidden_size"]
    eye = Codebook(torch.eye(d), torch.zeros(d), torch.eye(d), torch.zeros(d))
    ident = Dictionary({LAYER: eye})
    clean = _logits(model, batch)
    with Intervention(model, [UnitEdit(g, "affine", keep=1.0) for g in ident.groups(model)]), torch.no_grad():
        assert torch.equal(model(**batch).logits, clean)
    book = _book(d, 32, "topk", k=4, seed=2)
    feats = Dictionary({LAYER: book}).select(LAYER, [3, 7])
    assert feats.count() == 2

    def by_hand(x):
        f = book.encode(x)
        delta = torch.zeros_like(f)
        delta[..., [3, 7]] = -f[..., [3, 7]]
        return x + delta @ book.W_dec  # the decoded change only: x - decode(f) (the error) stays

    want = _logits(model, batch, by_hand)
    with mwork.deactivate(model, feats), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, want, rtol=1e-5, atol=1e-5)
    back = load_units(feats.save(tmp_path / "sae"), model)
    assert isinstance(back, Dictionary) and back.features.tolist() == [3, 7] and back.books[LAYER].k == 4
    torch.testing.assert_close(back.books[LAYER].W_dec, book.W_dec)
    with mwork.deactivate(model, back), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, want, rtol=1e-5, atol=1e-5)


def _add(group, alpha):
    return UnitEdit(group, "affine", keep=1.0, shift=torch.full((1,), alpha))


def test_rows_edit_only_their_rows_so_settings_share_a_batch(rep_dense_tiny):
    model, tok = rep_dense_tiny
    batch = _batch(tok)
    dirs = _directions(model)
    group, = dirs.groups(model)
    v = dirs.write[0]
    alphas = torch.tensor([2.5, -1.0])
    want = _logits(model, batch, lambda x: x + alphas.to(x)[:, None, None] * v.to(x))
    with Intervention(model, [_add(group, 2.5)], positions="all", rows=[0]), \
            Intervention(model, [_add(group, -1.0)], positions="all", rows=[1]), torch.no_grad():
        got = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real])
    with pytest.raises(ValueError, match="rows 0..1"), torch.no_grad(), \
            Intervention(model, [_add(group, 1.0)], positions="all", rows=[2]):
        model(**batch)
    with pytest.raises(ValueError, match="need positions"):
        Intervention(model, [_add(group, 1.0)], rows=[0])


def test_rows_in_generate_equal_each_setting_alone(rep_dense_tiny):
    model, tok = rep_dense_tiny
    tok.padding_side = "left"
    batch = tok(["The quick brown fox", "The quick brown fox"], return_tensors="pt", padding=True)
    group, = _directions(model).groups(model)
    kw = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        with Intervention(model, [_add(group, 3.0)], positions="generated"):
            alone = model.generate(**batch, **kw)[0]
        plain = model.generate(**batch, **kw)[1]
        with Intervention(model, [_add(group, 3.0)], positions="generated", rows=[0]):
            both = model.generate(**batch, **kw)
    assert not torch.equal(alone, plain)  # the setting changes what is generated
    assert torch.equal(both[0], alone) and torch.equal(both[1], plain)


def test_steering_settings_on_their_rows_equal_each_setting_alone(rep_dense_tiny):
    model, tok = rep_dense_tiny
    tok.padding_side = "left"
    batch = tok(["The quick brown fox"] * 3, return_tensors="pt", padding=True)
    dirs = _directions(model)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        alone = []
        for strength in (2.0, 6.0):
            with mwork.steer(model, dirs, "add", strength, positions="generated", keep_norm=True):
                alone.append(model.generate(**batch, **kw)[0])
        plain = model.generate(**batch, **kw)[2]
        with Steering(model, dirs, "add", 2.0, positions="generated", keep_norm=True, rows=[0]), \
                Steering(model, dirs, "add", 6.0, positions="generated", keep_norm=True, rows=[1]):
            shared = model.generate(**batch, **kw)
    assert torch.equal(shared[0], alone[0]) and torch.equal(shared[1], alone[1]) and torch.equal(shared[2], plain)
