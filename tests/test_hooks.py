"""The hook layer: one torch hook per point, edits before reads, clean removal, capture."""

from __future__ import annotations

import pytest
import torch

from mwork.capturing import capture
from mwork.hooks import SITES, Hooks, active_hooks, pack_left, packed_ids
from mwork.models.adapters import get_adapter

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Le renard brun saute."]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama", torch.float64)


def _batch(tok):
    tok.padding_side = "right"
    return tok(TEXTS, return_tensors="pt", padding=True)


def _points(model) -> int:
    return sum(active_hooks(m) for m in model.modules())


def test_every_site_resolves_on_every_family(tiny):
    model, _ = tiny
    ad = get_adapter(model)
    for name in SITES:
        site = ad.site(name, None if name == "final_norm.in" else 0)
        assert site.name == name and site.port in ("in", "out")
        assert site.module in list(model.modules())
    with pytest.raises(ValueError, match="unknown site"):
        ad.site("ffn.nope", 0)
    with pytest.raises(ValueError, match="needs a layer"):
        ad.site("ffn.in", ad.num_layers)


def test_edits_run_before_reads_whatever_the_nesting(llama):
    model, tok = llama
    ad = get_adapter(model)
    site = ad.site("ffn.in", 1)
    seen: list[torch.Tensor] = []
    with Hooks().read(site, seen.append):  # the reader is registered first ...
        with Hooks().edit(site, lambda x: x * 0 + 7):  # ... and still sees the edit
            model(**_batch(tok))
    assert torch.all(seen[-1] == 7)
    assert _points(model) == 0


def test_edits_compose_in_registration_order(llama):
    model, tok = llama
    site = get_adapter(model).site("q.out", 0)
    seen: list[torch.Tensor] = []
    hooks = Hooks().edit(site, lambda x: x + 1).edit(site, lambda x: x * 2).read(site, seen.append)
    with torch.no_grad(), capture(model, "q.out", layers=[0]) as plain:
        model(**_batch(tok))
    with torch.no_grad(), hooks:
        model(**_batch(tok))
    torch.testing.assert_close(seen[-1], (plain["q.out", 0] + 1) * 2, rtol=0, atol=0)


def test_removed_after_an_exception_and_bit_identical(llama):
    model, tok = llama
    batch = _batch(tok)
    with torch.no_grad():
        before = model(**batch).logits
    with pytest.raises(RuntimeError, match="boom"):
        with Hooks().edit(get_adapter(model).site("v.out", 2), lambda x: x * 0):
            raise RuntimeError("boom")
    assert _points(model) == 0
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)


def test_capture_keeps_last_or_all_and_cuts_fused_channels(shared_tiny):
    model, tok = shared_tiny("tiny-random-gpt2")
    ad = get_adapter(model)
    ids = tok(["hello there, hello world"], return_tensors="pt")["input_ids"]
    with capture(model, ["q.out", "k.out"], layers=[1], keep="all") as cap:
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                       pad_token_id=tok.pad_token_id)
    steps = cap.values("q.out", 1)
    assert len(steps) == 3 and steps[0].shape[1] == ids.shape[1] and steps[1].shape[1] == 1
    width = ad.neuron_counts()["q"]
    assert cap["q.out", 1].shape[-1] == width and cap["k.out", 1].shape[-1] == ad.neuron_counts()["k"]
    with capture(model, "q.out", layers=[1], channels=False) as whole:
        model(input_ids=ids)
    assert whole["q.out", 1].shape[-1] == 3 * width  # the fused c_attn output
    with pytest.raises(KeyError, match="not captured"):
        cap["q.out", 0]
    with pytest.raises(ValueError, match="out of range"):
        capture(model, "q.out", layers=[99])


def test_capture_copies_what_the_model_later_changes_in_place(shared_tiny):
    model, tok = shared_tiny("tiny-random-falcon")  # adds attention into the FFN output
    batch = tok(TEXTS[:1], return_tensors="pt")
    with torch.no_grad(), capture(model, "ffn.out", layers=[0]) as copied, \
            capture(model, "ffn.out", layers=[0], clone=False) as shared:
        model(**batch)
    down = get_adapter(model).mlp_down(0)
    with torch.no_grad(), capture(model, "ffn.in", layers=[0]) as h:
        model(**batch)
    torch.testing.assert_close(copied["ffn.out", 0], down(h["ffn.in", 0]))
    assert not torch.equal(copied["ffn.out", 0], shared["ffn.out", 0])


def test_flattened_ffn_tokens_come_back_as_batch_and_tokens(shared_tiny):
    model, tok = shared_tiny("tiny-random-opt")  # OPT runs its FFN on (B * T, F)
    batch = _batch(tok)
    B, T = batch["input_ids"].shape
    with torch.no_grad(), capture(model, ["ffn.in", "ffn.act"], layers=[0]) as cap:
        model(**batch)
    assert cap["ffn.in", 0].shape == (B, T, get_adapter(model).ffn_size) == cap["ffn.act", 0].shape
    # an edit sees (B, T, F) too, and may index tokens: zero the first token's FFN neurons only
    site = get_adapter(model).site("ffn.in", 0)

    def first_token_off(x):
        assert x.shape[:2] == (B, T)
        return torch.cat([x[:, :1] * 0, x[:, 1:]], dim=1)

    with torch.no_grad(), Hooks().edit(site, first_token_off), capture(model, "ffn.in", layers=[0]) as after:
        model(**batch)
    assert torch.all(after["ffn.in", 0][:, 0] == 0)
    torch.testing.assert_close(after["ffn.in", 0][:, 1:], cap["ffn.in", 0][:, 1:], rtol=0, atol=0)


def test_packed_policy():
    left = {"input_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 4]]), "attention_mask": torch.tensor([[0, 0, 1, 1], [1] * 4])}
    ids, lengths = pack_left(left)
    assert lengths == [2, 4] and ids.tolist() == [[5, 6, 0, 0], [7, 8, 9, 4]]
    assert packed_ids([[1, 2], [3]], pad_id=0).tolist() == [[1, 2], [3, 0]]
    with pytest.raises(ValueError, match="holes"):
        pack_left({"input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": torch.tensor([[1, 0, 1]])})
