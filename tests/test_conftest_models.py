"""The shared tiny models of tests/conftest.py: a copy equals a freshly loaded model, and every
kind of change a test could leave on a shared model is caught."""

from __future__ import annotations

import pytest
import torch
import transformers

import mwork
from mwork.fingerprints import model_digest
from mwork.models.tiny import tiny_tokenizer
from tests.conftest import _MODELS, REPRESENTATIVE, _Snapshot


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-xglm", "tiny-random-qwen2_moe"])
def test_fresh_and_shared_equal_a_freshly_loaded_model(alias, fresh_tiny, shared_tiny):
    # xglm: in float64 its model is of a subclass made at load time (mwork.models.tiny)
    assert shared_tiny.__self__ is fresh_tiny.__self__ is _MODELS  # the conftest pytest loaded
    loaded, tok = mwork.load_model(alias, dtype=torch.float64, device="cpu")
    for model, copy_tok in (fresh_tiny(alias, torch.float64), shared_tiny(alias, torch.float64)):
        assert model is not loaded
        assert [(type(m).__name__, type(m).__bases__) for m in model.modules()] == \
            [(type(m).__name__, type(m).__bases__) for m in loaded.modules()]
        assert _Snapshot(loaded).difference(model) is None
        assert model_digest(model) == model_digest(loaded)
        ids = torch.tensor([tok("Le renard brun saute.").input_ids])
        assert copy_tok("Le renard brun saute.").input_ids == tiny_tokenizer()("Le renard brun saute.").input_ids
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    if alias.endswith("xglm"):
        assert type(fresh_tiny(alias, torch.float64)[0].model) is not transformers.XGLMModel
    assert fresh_tiny(alias)[0] is not fresh_tiny(alias)[0]
    assert shared_tiny(alias)[0] is shared_tiny(alias)[0] and shared_tiny(alias)[1] is not shared_tiny(alias)[1]


def test_every_change_is_caught(fresh_tiny):
    model, _ = fresh_tiny("tiny-random-gpt2", torch.float64)
    snapshot = _Snapshot(fresh_tiny("tiny-random-gpt2", torch.float64)[0])
    assert snapshot.difference(model) is None
    weight = next(model.parameters())

    def changed(change, undo) -> str | None:
        change()
        try:
            return snapshot.difference(model)
        finally:
            undo()
            assert snapshot.difference(model) is None

    kept = weight.detach().clone()
    with torch.no_grad():
        assert "values" in changed(lambda: weight[0, 0].add_(1e-12), lambda: weight.copy_(kept))
        assert "values" in changed(lambda: weight.data.mul_(0), lambda: weight.data.copy_(kept))  # no version bump
    assert "gradient" in changed(lambda: setattr(weight, "grad", torch.zeros_like(weight)),
                                 lambda: setattr(weight, "grad", None))
    assert "requires_grad" in changed(lambda: weight.requires_grad_(False), lambda: weight.requires_grad_(True))
    assert "train mode" in changed(model.train, model.eval)
    handles = []
    assert "hooks" in changed(lambda: handles.append(model.lm_head.register_forward_hook(lambda *a: None)),
                              lambda: handles.pop().remove())
    n_head = model.config.n_head
    assert "config" in changed(lambda: setattr(model.config, "n_head", 2 * n_head),
                               lambda: setattr(model.config, "n_head", n_head))
    model.to(torch.float32)
    assert "dtype" in snapshot.difference(model)


def test_a_changed_shared_model_fails_its_test_and_is_renewed():
    model, _ = _MODELS.shared("tiny-random-llama")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(pytest.fail.Exception, match="the-test changed a shared tiny model -- tiny-random-llama "
                                                    r"\(torch.float32\): parameter .*'s values.*fresh_tiny"):
        _MODELS.check("the-test")
    again, _ = _MODELS.shared("tiny-random-llama")
    assert again is not model and _Snapshot(mwork.load_model("tiny-random-llama", device="cpu")[0]).difference(again) is None


def test_representative_families_are_one_per_layout():
    from mwork.models.adapters import get_adapter
    from mwork.models.tiny import MOE_ALIASES, TINY_ALIASES

    assert set(REPRESENTATIVE) <= set(TINY_ALIASES) | set(MOE_ALIASES) and len(set(REPRESENTATIVE)) == len(REPRESENTATIVE)
    adapters = {a: get_adapter(_MODELS.fresh(a)[0]) for a in REPRESENTATIVE}
    assert {ad.block for ad in adapters.values()} == {"sequential", "parallel"}
    assert any(a in MOE_ALIASES for a in REPRESENTATIVE)
    fused = [a for a, ad in adapters.items() if ad.channel_site(0, "q").module is ad.channel_site(0, "k").module]
    assert fused and len(fused) < len(REPRESENTATIVE)  # fused q/k/v and separate projections
