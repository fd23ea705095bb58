"""Published dictionary layouts (SAELens, Gemma Scope) read into mwork's Dictionary from files
written here, checked against a direct computation of each activation; ``mwork sae load``
converts them for ``mwork.load_units``; bad files are refused clearly; a transcoder (read site !=
write site) changes nothing unedited and ablates as a hand-made edit keeping the error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mwork
from mwork.cli import main
from mwork.hooks import Hooks
from mwork.models.adapters import get_adapter
from mwork.units import Codebook, Dictionary, Intervention, UnitEdit
from mwork.units.sae_layouts import read_dictionary, site_of_hook

D, M = 8, 16


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(D, M, generator=g), "b_enc": torch.randn(M, generator=g) * 0.1,
            "W_dec": torch.randn(M, D, generator=g), "b_dec": torch.randn(D, generator=g)}


def _saelens(folder, cfg: dict, tensors: dict) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    return str(folder)


def _x(seed: int = 5) -> torch.Tensor:
    return torch.randn(3, 4, D, generator=torch.Generator().manual_seed(seed))


def test_saelens_relu_topk_and_jumprelu_against_a_direct_computation(tmp_path):
    w = _weights()
    x = _x()
    pre_x = x @ w["W_enc"] + w["b_enc"]  # apply_b_dec_to_input false: the encoder reads x itself
    relu = read_dictionary(_saelens(tmp_path / "relu", {"architecture": "standard", "d_in": D, "d_sae": M,
                                                         "hook_name": "blocks.1.hook_resid_post",
                                                         "apply_b_dec_to_input": False}, w))
    assert relu.site == "layer.out" and sorted(relu.books) == [1] and relu.meta["format"] == "saelens"
    torch.testing.assert_close(relu.books[1].encode(x), torch.relu(pre_x), rtol=1e-5, atol=1e-5)

    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    topk = read_dictionary(_saelens(tmp_path / "topk", {"architecture": "topk", "k": 3,
                                                         "metadata": {"hook_name": "blocks.0.hook_mlp_out"}}, w))
    assert topk.site == "ffn.out" and topk.books[0].k == 3
    want = torch.zeros_like(pre)
    idx = pre.topk(3, dim=-1).indices
    want.scatter_(-1, idx, pre.gather(-1, idx).clamp_min(0))
    torch.testing.assert_close(topk.books[0].encode(x), want)

    theta = torch.rand(M, generator=torch.Generator().manual_seed(1))
    jump = read_dictionary(_saelens(tmp_path / "jump", {"architecture": "jumprelu", "hook_name": "blocks.2.hook_resid_pre"},
                                    {**w, "log_threshold": theta.log()}))
    assert jump.site == "layer.in" and sorted(jump.books) == [2]
    torch.testing.assert_close(jump.books[2].encode(x), pre * (pre > theta), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(jump.books[2].decode(jump.books[2].encode(x)),
                               (pre * (pre > theta)) @ w["W_dec"] + w["b_dec"], rtol=1e-5, atol=1e-5)


def test_gemma_scope_npz_and_safetensors_read_without_pickle(tmp_path):
    w = _weights(3)
    theta = torch.rand(M, generator=torch.Generator().manual_seed(2))
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_2" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in w.items()}, threshold=theta.numpy())
    x = _x()
    pre = x @ w["W_enc"] + w["b_enc"]  # Gemma Scope's encoder reads x
    got = read_dictionary(folder)
    assert (got.site, sorted(got.books), got.books[2].activation) == ("layer.out", [2], "jumprelu")
    torch.testing.assert_close(got.books[2].encode(x), pre * (pre > theta), rtol=1e-5, atol=1e-5)

    other = tmp_path / "plain"
    other.mkdir()
    save_file({k.lower(): v.contiguous() for k, v in {**w, "threshold": theta}.items()}, str(other / "params.safetensors"))
    with pytest.raises(ValueError, match="site and layer"):
        read_dictionary(other)
    named = read_dictionary(other, layer=1, site="ffn.out")
    assert named.site == "ffn.out" and sorted(named.books) == [1]
    torch.testing.assert_close(named.books[1].encode(x), pre * (pre > theta), rtol=1e-5, atol=1e-5)

    out = tmp_path / "converted"
    assert main(["sae", "load", str(folder / "params.npz"), "--out", str(out)]) == 0
    back = mwork.load_units(out)
    assert isinstance(back, Dictionary) and back.site == "layer.out"
    torch.testing.assert_close(back.books[2].encode(x), got.books[2].encode(x))


def test_gemma_scope_2_reads_its_points_from_config_json(tmp_path):
    w = _weights(6)
    theta = torch.rand(M, generator=torch.Generator().manual_seed(3))
    lower = {k.lower(): v.contiguous() for k, v in {**w, "threshold": theta}.items()}  # w_enc, w_dec as published
    res = tmp_path / "gemma-scope-2-270m-pt" / "resid_post" / "layer_3_width_16k_l0_small"
    res.mkdir(parents=True)
    save_file(lower, str(res / "params.safetensors"))
    (res / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.3.output",
                                                 "hf_hook_point_out": "model.layers.3.output", "width": M}))
    got = read_dictionary(res)
    assert (got.site, got.read_site, sorted(got.books)) == ("layer.out", None, [3])
    x = _x()
    pre = x @ w["W_enc"] + w["b_enc"]
    torch.testing.assert_close(got.books[3].encode(x), pre * (pre > theta), rtol=1e-5, atol=1e-5)

    tc = tmp_path / "transcoder" / "layer_1_width_16k"
    tc.mkdir(parents=True)
    save_file(lower, str(tc / "params.safetensors"))
    (tc / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.1.input",
                                                "hf_hook_point_out": "model.layers.1.mlp.output"}))
    coder = read_dictionary(tc)
    assert (coder.site, coder.read_site, sorted(coder.books)) == ("ffn.out", "layer.in", [1])
    (tc / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.1.pre_feedforward_layernorm.output",
                                                "hf_hook_point_out": "model.layers.1.mlp.output"}))
    with pytest.raises(ValueError, match="has no mwork site"):
        read_dictionary(tc)
    (tc / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.2.output"}))
    with pytest.raises(ValueError, match="names layer 2 and its folder layer 1"):
        read_dictionary(tc)


def test_bad_dictionary_files_are_refused_clearly(tmp_path, capsys):
    w = _weights()
    with pytest.raises(ValueError, match="architecture 'gated' is not supported"):
        read_dictionary(_saelens(tmp_path / "gated", {"architecture": "gated", "hook_name": "blocks.0.hook_resid_post"}, w))
    with pytest.raises(ValueError, match="normalize_activations"):
        read_dictionary(_saelens(tmp_path / "norm", {"architecture": "standard", "hook_name": "blocks.0.hook_resid_post",
                                                     "normalize_activations": "expected_average_only_in"}, w))
    with pytest.raises(ValueError, match="W_dec has shape"):
        read_dictionary(_saelens(tmp_path / "shape", {"architecture": "standard", "hook_name": "blocks.0.hook_resid_post"},
                                 {**w, "W_dec": torch.zeros(M, D + 1)}))
    with pytest.raises(ValueError, match="no mwork site"):
        site_of_hook("blocks.0.ln2.hook_normalized")
    assert site_of_hook("blocks.4.hook_mlp_out", "gpt2") == ("ffn.out", 4)
    tc = read_dictionary(_saelens(tmp_path / "tc", {"architecture": "standard", "hook_name": "blocks.2.hook_resid_pre",
                                                    "hook_name_out": "blocks.2.hook_mlp_out"}, w))
    assert (tc.read_site, tc.site, sorted(tc.books)) == ("layer.in", "ffn.out", [2])
    with pytest.raises(ValueError, match="skip transcoder"):
        read_dictionary(_saelens(tmp_path / "skip", {"architecture": "standard", "hook_name": "blocks.0.hook_resid_pre"},
                                 {**w, "W_skip": torch.zeros(D, D)}))
    with pytest.raises(ValueError, match="hook_head_index is not supported"):
        read_dictionary(_saelens(tmp_path / "head", {"architecture": "standard", "hook_name": "blocks.0.attn.hook_z",
                                                     "hook_head_index": 3}, w))
    with pytest.raises(ValueError, match="after the post-norm"):  # TransformerLens' Gemma 2/3 hook: not ffn.out
        read_dictionary(_saelens(tmp_path / "g2mlp", {"architecture": "standard", "hook_name": "blocks.0.hook_mlp_out",
                                                      "model_name": "gemma-2-2b"}, w))
    mlp = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_0" / "width_16k"
    mlp.mkdir(parents=True)
    np.savez(mlp / "params.npz", **{k: v.numpy() for k, v in w.items()}, threshold=np.ones(M, dtype=np.float32))
    with pytest.raises(ValueError, match="post-FFN norm"):
        read_dictionary(mlp)
    with pytest.raises(FileNotFoundError, match="holds no dictionary"):
        (tmp_path / "empty").mkdir()
        read_dictionary(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no dictionary at"):
        read_dictionary(tmp_path / "missing")
    pickled = tmp_path / "layer_0-res"
    pickled.mkdir()
    np.savez(pickled / "params.npz", W_enc=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickled Python objects"):
        read_dictionary(pickled)
    assert main(["sae", "load", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "mwork sae: error: no dictionary at" in capsys.readouterr().err


def test_a_transcoder_reads_one_site_and_writes_another(shared_tiny, tmp_path):
    model, tok = shared_tiny("tiny-random-llama")
    adapter = get_adapter(model)
    d = adapter.hidden_size
    g = torch.Generator().manual_seed(4)
    book = Codebook(torch.randn(d, 24, generator=g), torch.zeros(24), torch.randn(24, d, generator=g) * 0.1,
                    torch.zeros(d), activation="topk", k=4)
    coder = Dictionary({1: book}, site="ffn.out", read_site="layer.in")
    batch = tok(["The quick brown fox jumps over the dog."], return_tensors="pt")
    with torch.no_grad():
        clean = model(**batch).logits
    with Intervention(model, [UnitEdit(grp, "affine", keep=1.0) for grp in coder.groups(model)]), torch.no_grad():
        assert torch.equal(model(**batch).logits, clean)  # an unedited feature leaves the model as it was

    feats = coder.select(1, [0, 2, 5])
    (group,) = feats.groups(model)
    seen = {}

    def by_hand(x):  # ablate the features: f from the read site, the decoded change only
        f = book.encode(seen["in"])
        return x - f[..., [0, 2, 5]] @ book.W_dec[[0, 2, 5]]

    hooks = Hooks().read(adapter.site("layer.in", 1), lambda v: seen.__setitem__("in", v.detach()))
    hooks.edit(adapter.site("ffn.out", 1), by_hand)
    with hooks, torch.no_grad():
        want = model(**batch).logits
    placed = Hooks()
    for site, fn in group.reads:
        placed.read(site, fn)
    placed.edit(group.site, group.editor("zero"))
    with placed, torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(want, clean)
    # the one intervention primitive places a transcoder's reads itself: the same ablation
    with Intervention(model, [UnitEdit(grp, "affine", keep=0.0) for grp in feats.groups(model)]), torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, want, rtol=1e-5, atol=1e-5)
    (fresh,) = feats.groups(model)
    with pytest.raises(RuntimeError, match="group.reads"):  # nothing read at the read site yet
        fresh.read(torch.zeros(1, 1, d))
    back = mwork.load_units(feats.save(tmp_path / "tc"), model)
    assert back.read_site == "layer.in" and back.site == "ffn.out" and back.features.tolist() == [0, 2, 5]
