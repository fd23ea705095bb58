"""Logit lens, language shares, prompt sets, layer regions and the ``mwork lens`` command."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import mwork
from mwork.cli import main as cli_main
from mwork.lens import (
    LensOptions, LensResult, Prompt, PromptLens, TokenLabeler, builtin_languages, builtin_prompts, estimate_regions,
    language_shares, logit_lens, read_prompts, read_shares, write_csv,
)
from mwork.lens.shares import CSV_HEADER
from mwork.models.tiny import TINY_ALIASES

PROMPTS = [
    Prompt("The quick brown fox jumps over the lazy dog.", "en"),
    Prompt("Le renard", "fr"),
    Prompt("Быстрая коричневая лиса прыгает", "ru"),
]


@pytest.fixture(scope="module", params=TINY_ALIASES)
def tiny64(request, tiny_models):
    model, tok = tiny_models.shared(request.param, torch.float64)
    return request.param, model, tok


def _manual_logits(model, ids: list[int]) -> list[torch.Tensor]:
    """Every lens layer's logits from output_hidden_states, through final norm + LM head."""
    adapter = mwork.get_adapter(model)
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == adapter.num_layers + 1
    logits = []
    cfg = model.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    project_out = getattr(getattr(model.base_model, "decoder", None), "project_out", None)  # OPT
    for h in hs[:-1]:  # HF's last hidden state already has the final norm applied
        x = adapter.final_norm(h[0])
        x = adapter.lm_head(project_out(x) if project_out is not None else x)
        if cfg.model_type in ("cohere", "cohere2"):
            x = x * cfg.logit_scale
        if cfg.model_type == "granite":
            x = x / cfg.logits_scaling
        logits.append(torch.tanh(x / cap) * cap if cap else x)
    logits.append(out.logits[0])
    return logits


def test_lens_equals_manual_decoding(tiny64):
    """Hooked hidden states decoded by the lens == final norm + LM head of HF's hidden states,
    at prompt and generated positions, with greedy generation in a padded batch."""
    name, model, tok = tiny64
    k = 5
    res = logit_lens(model, tok, PROMPTS, top_k=k, max_new_tokens=4, options=LensOptions(batch_size=3),
                     progress=False)
    assert res.num_layers == mwork.get_adapter(model).num_layers
    for p in res.prompts:
        n_gen = len(p.generated_ids)
        assert n_gen == 4  # tiny random models never emit EOS in 4 steps here
        # every prompt position, then each fed-back generated token except the last
        assert p.positions == list(range(p.n_prompt + n_gen - 1))
        manual = _manual_logits(model, p.token_ids)
        for layer, logits in enumerate(manual):
            ref_vals, ref_ids = logits[p.positions].topk(k, dim=-1)
            assert torch.equal(p.topk_ids[layer], ref_ids), (name, layer)
            torch.testing.assert_close(p.topk_logits[layer], ref_vals.float(), rtol=1e-5, atol=1e-5)
        # greedy: each generated token is the argmax of the last layer at the position before it
        final = manual[-1]
        for j in range(p.n_prompt, len(p.token_ids)):
            assert p.token_ids[j] == int(final[j - 1].argmax())


def test_lens_padding_independent(tiny64):
    """Batching with left padding (either tokenizer padding side) gives each prompt's unbatched lens."""
    name, model, tok = tiny64
    alone = [logit_lens(model, tok, [p], top_k=3, max_new_tokens=3, progress=False).prompts[0] for p in PROMPTS]
    original = tok.padding_side
    for side in ("left", "right"):
        tok.padding_side = side
        try:
            batched = logit_lens(model, tok, PROMPTS, top_k=3, max_new_tokens=3,
                                 options=LensOptions(batch_size=3), progress=False).prompts
        finally:
            tok.padding_side = original
        for a, b in zip(alone, batched):
            assert a.token_ids == b.token_ids and a.positions == b.positions, (name, side)
            assert torch.equal(a.topk_ids, b.topk_ids), (name, side)
            torch.testing.assert_close(a.topk_logits, b.topk_logits, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama")


def test_eos_stops_and_special_positions_skipped(llama):
    model, tok = llama
    first = logit_lens(model, tok, [PROMPTS[1]], top_k=2, max_new_tokens=3, progress=False).prompts[0]
    g0 = first.generated_ids[0]
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = g0
    try:
        stopped = logit_lens(model, tok, [PROMPTS[1]], top_k=2, max_new_tokens=3, progress=False).prompts[0]
    finally:
        model.generation_config.eos_token_id = old
    assert stopped.generated_ids == [g0]
    assert stopped.positions == list(range(stopped.n_prompt))  # nothing decoded after EOS
    # a special token in the prompt (here BOS) is fed but not decoded
    with_bos = logit_lens(model, tok, [Prompt("<bos>Le renard", "fr")], top_k=2, max_new_tokens=0,
                          progress=False).prompts[0]
    assert with_bos.token_ids[0] == tok.bos_token_id and with_bos.positions[0] == 1
    kept = logit_lens(model, tok, [Prompt("<bos>Le renard", "fr")], top_k=2, max_new_tokens=0,
                      options=LensOptions(include_special=True), progress=False).prompts[0]
    assert kept.positions[0] == 0
    # segments
    assert first.segment_mask("prompt").sum() == first.n_prompt
    assert first.segment_mask("generated").sum() == len(first.generated_ids) - 1


def test_lens_bad_arguments(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="no prompts"):
        logit_lens(model, tok, [], progress=False)
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, tok, ["x"], top_k=0, progress=False)
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, tok, ["x"], top_k=10**6, progress=False)
    with pytest.raises(ValueError, match="template"):
        logit_lens(model, tok, ["x"], options=LensOptions(template="no placeholder"), progress=False)


def test_save_load_roundtrip(llama, tmp_path):
    model, tok = llama
    res = logit_lens(model, tok, PROMPTS[:2], top_k=2, max_new_tokens=2, progress=False)
    back = LensResult.load(res.save(tmp_path / "lens_topk.safetensors"))
    assert back.model_name == res.model_name and back.top_k == 2
    for a, b in zip(res.prompts, back.prompts):
        assert a.token_ids == b.token_ids and a.positions == b.positions and torch.equal(a.topk_ids, b.topk_ids)


# ---- shares -------------------------------------------------------------------------------


class _Tok:
    """Token id i decodes to PIECES[i]."""

    PIECES = ["<pad>", "the", "maison", "agua", "123", "wasser"]
    all_special_ids = [0]
    added_tokens_decoder: dict = {}

    def decode(self, ids):
        return "".join(self.PIECES[i] for i in ids)


def _prompt(lang: str, layer_ids: list[list[int]], n_prompt: int = 1) -> PromptLens:
    """One position per inner list element, top-1 = that id; layers given outer."""
    ids = torch.tensor(layer_ids)[:, :, None]
    n_pos = ids.shape[1]
    return PromptLens("t", lang, list(range(n_prompt + n_pos)), n_prompt, list(range(n_pos)), ids,
                      torch.zeros(ids.shape))


def test_language_shares():
    # two zh prompts, 2 layers, top-1, positions per prompt: 4 and 2
    p1 = _prompt("zh", [[1, 2, 4, 4], [1, 1, 1, 3]])  # layer0: en, fr, unk, unk; layer1: en en en es
    p2 = _prompt("zh", [[4, 4], [2, 5]])  # layer0: all unknown; layer1: fr, de
    res = LensResult("fake", 1, 1, 0, [p1, p2])
    shares = language_shares(res, TokenLabeler(_Tok()))
    l0, l1 = shares["zh"]
    # layer 0: p2 has no known token -> left out of the English mean; unknown share over both
    assert l0.english_share == pytest.approx(0.5) and l0.non_english_share == pytest.approx(0.5)
    assert l0.unknown_share == pytest.approx((0.5 + 1.0) / 2)
    assert (l0.n_tokens, l0.n_known, l0.n_prompts) == (6, 2, 1)
    # layer 1: p1 3/4 English, p2 0/2 -> mean 0.375
    assert l1.english_share == pytest.approx(0.375) and l1.non_english_share == pytest.approx(0.625)
    assert l1.unknown_share == 0.0 and l1.n_tokens == 6
    assert l1.per_language == pytest.approx({"en": 0.375, "es": 0.125, "fr": 0.25, "de": 0.25})
    assert sum(l1.per_language.values()) == pytest.approx(1.0)
    # segments: with n_prompt = 1 only position 0 is a prompt position
    prompt_only = language_shares(res, TokenLabeler(_Tok()), segment="prompt")["zh"]
    assert prompt_only[0].n_tokens == 2 and prompt_only[0].english_share == pytest.approx(1.0)


def test_shares_nan_when_nothing_known(tmp_path):
    res = LensResult("fake", 0, 1, 0, [_prompt("ru", [[4, 4]])])
    (row,) = language_shares(res, TokenLabeler(_Tok()))["ru"]
    assert math.isnan(row.english_share) and row.unknown_share == 1.0
    write_csv({"ru": [row]}, tmp_path / "lens.csv")
    assert "nan" in (tmp_path / "lens.csv").read_text()


# ---- prompts ------------------------------------------------------------------------------


def test_builtin_prompt_sets():
    langs = builtin_languages()
    assert {"en", "zh", "fr", "es", "ru", "de", "ja"} <= set(langs)
    for lang in langs:
        prompts = builtin_prompts([lang])
        assert len(prompts) >= 20 and len({p.text for p in prompts}) == len(prompts)
        assert all(p.lang == lang for p in prompts)
    assert len(builtin_prompts(["zh", "ru"], max_per_lang=3)) == 6


def test_prompt_errors_and_user_files(tmp_path):
    with pytest.raises(ValueError, match="available: .*zh"):
        builtin_prompts(["zh", "xx"])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty"):
        read_prompts(empty, ["fr"])
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt", ["fr"])
    plain = tmp_path / "p.txt"
    plain.write_text("Bonjour ?\nMerci.\n")
    assert read_prompts(plain, ["fr"]) == [Prompt("Bonjour ?", "fr"), Prompt("Merci.", "fr")]
    with pytest.raises(ValueError, match="exactly one"):
        read_prompts(plain, ["fr", "de"])
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"text": "Hallo", "lang": "de"}\n{"text": "Hola", "lang": "es"}\n')
    assert [p.lang for p in read_prompts(jl)] == ["de", "es"]
    assert read_prompts(jl, ["es"]) == [Prompt("Hola", "es")]
    with pytest.raises(ValueError, match="no prompts in zh"):
        read_prompts(jl, ["zh"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "Hallo"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_prompts(bad)


# ---- regions ------------------------------------------------------------------------------


def _rows(curve):
    return [{"layer": i, "english_share": x, "non_english_share": 1 - x, "unknown_share": 0.0, "n_tokens": 10}
            for i, x in enumerate(curve)]


def test_regions_synthetic_curve(tmp_path):
    # 10 decoder layers -> 11 lens layers; English rises at lens 4 and is last high at lens 8
    zh = [0.1, 0.05, 0.1, 0.2, 0.6, 0.8, 0.9, 0.7, 0.5, 0.2, 0.05]
    ru = [0.1, 0.05, 0.1, 0.2, 0.6, 0.8, 0.9, 0.7, 0.5, 0.2, 0.05]
    en = [1.0] * 11  # English input is ignored
    est = estimate_regions({"zh": _rows(zh), "ru": _rows(ru), "en": _rows(en)})
    assert est.found and est.languages == ["zh", "ru"]
    assert est.threshold == pytest.approx(0.05 + 0.5 * 0.85)
    assert (est.rise_layer, est.fall_layer) == (4, 8)
    assert (est.understanding, est.generation) == (4, 2)
    regions = est.layer_regions()
    assert regions["understanding"] == [0, 1, 2, 3] and regions["generation"] == [8, 9]
    assert regions["task_solving"] == [4, 5, 6, 7]
    assert "U = 4" in est.describe() and est.to_dict()["curve"][6] == 0.9
    # the same from a lens.csv on disk
    with (tmp_path / "lens.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for lang, curve in (("zh", zh), ("en", en)):
            for i, x in enumerate(curve):
                w.writerow([lang, i, x, 1 - x, 0.0, 10])
    from_file = estimate_regions(tmp_path)
    assert (from_file.understanding, from_file.generation) == (4, 2)


def test_regions_flat_curve_and_errors():
    est = estimate_regions({"zh": _rows([0.1, 0.12, 0.11, 0.1])})
    assert not est.found and "no clear English phase" in est.reason and est.layer_regions() == {}
    with pytest.raises(ValueError, match="no non-English"):
        estimate_regions({"en": _rows([0.9, 0.9])})
    with pytest.raises(ValueError, match="no input language ko"):
        estimate_regions({"zh": _rows([0.1, 0.9])}, langs=["ko"])


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_writes_outputs(tmp_path, capsys, shared_tiny):
    out = tmp_path / "lens"
    rc = cli_main(["lens", "--model", "tiny-random-qwen2", "--langs", "zh,ru", "--out", str(out),
                   "--max-prompts", "3", "--max-new-tokens", "3", "--top-k", "4"])
    assert rc == 0
    lines = (out / "lens.csv").read_text().splitlines()
    assert lines[0] == "input_lang,layer,english_share,non_english_share,unknown_share,n_tokens"
    n_layers = mwork.get_adapter(shared_tiny("tiny-random-qwen2")[0]).num_layers + 1
    assert len(lines) == 1 + 2 * n_layers
    for row in csv.DictReader(lines):
        if row["english_share"] != "nan":
            assert float(row["english_share"]) + float(row["non_english_share"]) == pytest.approx(1.0)
        assert 0.0 <= float(row["unknown_share"]) <= 1.0 and int(row["n_tokens"]) > 0
    assert (out / "lens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "lens.json").read_text())
    assert data["top_k"] == 4 and data["model"] == "tiny-random-qwen2" and set(data["shares"]) == {"zh", "ru"}
    assert data["identifier"]["latin_languages"][0] == "en" and "regions" in data
    assert len(read_shares(out)["zh"]) == n_layers
    assert LensResult.load(out / "lens_topk.safetensors").top_k == 4


@pytest.mark.parametrize("args,message", [
    (["--model", "no-such-model"], "unknown model"),
    (["--langs", "zh,xx"], "available"),
    (["--prompts", "EMPTY"], "empty"),
    (["--prompts", "MISSING"], "does not exist"),
    (["--top-k", "0"], "top_k"),
])
def test_cli_bad_input(tmp_path, capsys, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = [str(empty) if a == "EMPTY" else str(tmp_path / "missing.txt") if a == "MISSING" else a for a in args]
    base = ["lens", "--out", str(tmp_path / "o"), "--max-new-tokens", "1", "--max-prompts", "1"]
    if "--model" not in args:
        base += ["--model", "tiny-random-llama"]
    if "--langs" not in args:
        base += ["--langs", "fr"]
    rc = cli_main(base + args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
