"""Latent language (Wendler-style word tasks) and the three lenses: word lists, the item filter,
the token probabilities against a direct computation, the identity tuned lens, tuned-lens
training, the patchscope against a hand-made patch, and the command-line contract."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from mwork.cli import main as cli_main
from mwork.latent import LatentConfig, build_prompts, builtin_words, load_words, run_latent, token_bytes
from mwork.latent.measure import last_states, layer_probs
from mwork.latent.tasks import first_token
from mwork.lens import LensConfig, logit_lens, run_lens
from mwork.lens.lenses import LogitLens, PatchscopeLens
from mwork.lens.tuned import TunedLens, train_tuned_lens
from mwork.lens.tuned_config import TunedLensConfig
from mwork.models.adapters import get_adapter

LLAMA = "tiny-random-llama"
LANGS = ["en", "de", "fr", "es", "it", "pt", "ru", "zh", "ja", "ko"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- word lists ----------------------------------------------------------------------------------

def test_word_lists_load_and_every_entry_has_every_language_it_claims():
    words = builtin_words()
    assert words.languages == LANGS and len(words.items) >= 100
    for item, entry in words.items.items():
        assert set(entry) == set(LANGS), item  # the built-in list claims every language for every item
        assert all(w.strip() == w and w and "\t" not in w for w in entry.values()), item
    assert len(words.cloze) >= 60
    for (item, lang), sentence in words.cloze.items():
        assert item in words.items and lang in words.items[item], (item, lang)
        assert sentence.count("___") == 1, (item, lang)
    licence = Path(__import__("mwork").__file__).parent / "data" / "words" / "LICENSE"
    assert "Apache License, Version 2.0" in licence.read_text()


def test_user_word_list_is_merged_and_checked(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("# mine\nid\ten\tnl\nflower\tflower\tbloem\nlamp\tlamp\tlamp\n", encoding="utf-8")
    words = load_words([path])
    assert words.items["flower"]["nl"] == "bloem" and words.items["flower"]["zh"] == "花"
    assert words.items["lamp"] == {"en": "lamp", "nl": "lamp"} and "nl" in words.languages
    bad = tmp_path / "bad.tsv"
    bad.write_text("id\ten\nx\ty\tz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:2"):
        load_words([bad])
    cloze = tmp_path / "cloze.tsv"
    cloze.write_text("id\tlang\tsentence\nflower\tnl\tno blank here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no blank"):
        load_words([cloze])


# ---- the item filter and the token sets ----------------------------------------------------------

def _direct_text(tok, token: int) -> str:
    return tok.decode([token]).strip().casefold()


def test_item_filter_and_start_tokens_against_a_direct_computation(shared_tiny):
    _, tok = shared_tiny(LLAMA)
    words = builtin_words()
    for target in ("zh", "de", "ru"):
        prompts, counts = build_prompts(words, tok, "translation", "fr", target, shots=2)
        kept = {p.item for p in prompts}
        for item in words.pair("fr", target):
            a = _direct_text(tok, tok.encode(words.items[item]["en"], add_special_tokens=False)[0])
            b = _direct_text(tok, tok.encode(words.items[item][target], add_special_tokens=False)[0])
            # a first token that is a partial UTF-8 character decodes to U+FFFD: compare bytes there
            if "\ufffd" in a + b:
                continue
            assert (item in kept) == (a != b and not a.startswith(b) and not b.startswith(a)), (item, a, b)
        assert counts["kept"] == len(kept) and counts["candidates"] == len(words.pair("fr", target))

    table = token_bytes(tok)
    texts = [tok.decode([token]) for token in range(len(tok))]
    special = set(tok.all_special_ids)
    for word in ("flower", "Blume", "цветок", "花"):
        starts = table.starts(word)
        for token, text in enumerate(texts):
            if "\ufffd" in text or token in special or not text:
                continue
            stripped = text[1:] if text.startswith(" ") else text
            expected = bool(stripped) and word.startswith(stripped)
            assert (token in starts) == expected, (word, token, text)
        assert first_token(tok, word) in starts


def test_token_probabilities_against_a_direct_computation(shared_tiny):
    model, tok = shared_tiny(LLAMA)
    adapter = get_adapter(model)
    prompts, _ = build_prompts(builtin_words(), tok, "translation", "fr", "zh", limit=3, shots=2)
    states = last_states(model, tok, [p.prompt for p in prompts], batch_size=2)
    probs = layer_probs(LogitLens(adapter), states, prompts)
    for r, p in enumerate(prompts):
        ids = torch.tensor([tok(p.prompt).input_ids])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        for layer in range(adapter.num_layers + 1):
            if layer < adapter.num_layers:
                logits = adapter.decode(out.hidden_states[layer][0, -1])
            else:
                logits = out.logits[0, -1]  # the last lens layer is the model's own output
            prob = torch.softmax(logits.double(), -1)
            assert probs.p_target[r, layer].item() == pytest.approx(prob[list(p.target_tokens)].sum().item(), abs=1e-6)
            assert probs.p_english[r, layer].item() == pytest.approx(prob[list(p.english_tokens)].sum().item(), abs=1e-6)
            entropy = -(prob * prob.log()).sum().item()
            assert probs.entropy[r, layer].item() == pytest.approx(entropy, abs=1e-5)
        assert not set(p.target_tokens) & set(p.english_tokens)


# ---- the three lenses ----------------------------------------------------------------------------

def test_identity_tuned_lens_reproduces_the_logit_lens_exactly(shared_tiny, tmp_path):
    model, tok = shared_tiny(LLAMA)
    adapter = get_adapter(model)
    tuned, logit = TunedLens.identity(model), LogitLens(adapter)
    hidden = torch.randn(5, adapter.hidden_size)
    for layer in range(adapter.num_layers + 1):
        assert torch.equal(tuned.decode(layer, hidden), logit.decode(layer, hidden))
    tuned.save(tmp_path / "identity")
    loaded = TunedLens.load(tmp_path / "identity", model)
    assert torch.equal(loaded.weight, tuned.weight)
    a = logit_lens(model, tok, ["Le chat dort.", "狗"], top_k=5, max_new_tokens=2, progress=False)
    b = logit_lens(model, tok, ["Le chat dort.", "狗"], top_k=5, max_new_tokens=2, progress=False, lens=loaded)
    for pa, pb in zip(a.prompts, b.prompts):
        assert torch.equal(pa.topk_ids, pb.topk_ids) and torch.equal(pa.topk_logits, pb.topk_logits)
    config = dict(tasks=("translation",), source="fr", targets=("zh",), limit=4, shots=2, progress=False)
    rl = run_latent(model, tok, LatentConfig(lenses=("logit",), **config))
    rt = run_latent(model, tok, LatentConfig(lenses=("tuned",), tuned_lens=str(tmp_path / "identity"), **config))
    strip = [{k: v for k, v in r.items() if k != "lens"} for r in rl.rows]
    assert strip == [{k: v for k, v in r.items() if k != "lens"} for r in rt.rows]


def test_tuned_lens_training_lowers_heldout_kl(shared_tiny, tmp_path):
    model, tok = shared_tiny(LLAMA)
    config = TunedLensConfig(langs=("en", "fr", "zh"), steps=40, window=16, windows_per_lang=4, heldout_windows=2,
                             lr=3e-3, progress=False)
    result = train_tuned_lens(model, tok, config, tmp_path / "tuned")
    kl = result.report["heldout_kl"]
    L = get_adapter(model).num_layers
    assert len(kl) == L + 1 and kl[L]["kl_logit"] == pytest.approx(kl[L]["kl_tuned"], abs=1e-9)
    assert all(row["kl_tuned"] < row["kl_logit"] for row in kl[:L])
    assert result.report["loss_last"] < result.report["loss_first"]
    saved = json.loads((tmp_path / "tuned" / "tuned_lens.json").read_text())
    assert saved["heldout_kl"] == kl and (tmp_path / "tuned" / "tuned_lens_kl.csv").is_file()
    assert torch.equal(TunedLens.load(tmp_path / "tuned", model).weight, result.lens.weight)


@pytest.mark.parametrize("alias", [LLAMA, "tiny-random-gemma3"])
def test_patchscope_lens_equals_a_hand_made_patch(shared_tiny, alias):
    model, tok = shared_tiny(alias)
    adapter = get_adapter(model)
    lens = PatchscopeLens(model, tok)
    assert lens.patch_position == lens.read_position == len(lens.ids) - 1
    hidden = torch.randn(3, adapter.hidden_size) * 2
    ids = torch.tensor([lens.ids] * 3)
    for layer in (0, 1, adapter.num_layers):
        # the hand-made patch: a plain torch hook on the decoder layer (tests may; mwork never does)
        if layer == 0:
            def pre(module, args, kwargs):
                h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                h = h.clone()
                h[:, lens.patch_position] = hidden
                if "hidden_states" in kwargs:
                    return args, {**kwargs, "hidden_states": h}
                return (h, *args[1:]), kwargs
            handle = adapter.layers[0].register_forward_pre_hook(pre, with_kwargs=True)
        else:
            def post(module, args, output):
                h = (output[0] if isinstance(output, tuple) else output).clone()
                h[:, lens.patch_position] = hidden
                return (h, *output[1:]) if isinstance(output, tuple) else h
            handle = adapter.layers[layer - 1].register_forward_hook(post)
        try:
            with torch.no_grad():
                expected = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1]
        finally:
            handle.remove()
        got = lens.decode(layer, hidden)
        torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-5)
    # at the last lens layer the patchscope is the logit lens
    torch.testing.assert_close(lens.decode(adapter.num_layers, hidden), adapter.decode(hidden).float(),
                               rtol=1e-4, atol=1e-4)


# ---- the command line ----------------------------------------------------------------------------

def test_latent_and_lens_train_commands_as_the_contract_says(tmp_path, capsys):
    out = tmp_path / "latent"
    assert cli_main(["latent", "--model", LLAMA, "--task", "translation", "--source", "fr", "--targets", "zh,de",
                     "--lens", "logit", "--limit", "8", "--out", str(out)]) == 0
    rows = _rows(out / "latent.csv")
    for column in ("task", "source", "target", "lens", "layer", "p_target", "p_english", "n_items"):
        assert column in rows[0]
    assert {(r["source"], r["target"]) for r in rows} == {("fr", "zh"), ("fr", "de")}
    assert all(int(r["n_items"]) <= 8 for r in rows) and (out / "latent_translation.png").is_file()
    summary = json.loads((out / "latent.json").read_text())
    assert {s["target"] for s in summary["survival"]} == {"zh", "de"}

    lens_dir = tmp_path / "tuned"
    assert cli_main(["lens", "train", "--model", LLAMA, "--steps", "3", "--langs", "en,fr", "--window", "12",
                     "--windows-per-lang", "2", "--heldout-windows", "1", "--out", str(lens_dir)]) == 0
    assert (lens_dir / "tuned_lens.safetensors").is_file()
    assert cli_main(["latent", "--model", LLAMA, "--task", "repetition", "--targets", "de", "--lens",
                     "logit,tuned,patchscope", "--tuned-lens", str(lens_dir), "--limit", "3",
                     "--out", str(tmp_path / "three")]) == 0
    assert {r["lens"] for r in _rows(tmp_path / "three" / "latent.csv")} == {"logit", "tuned", "patchscope"}
    for lens in ("tuned", "patchscope"):
        folder = tmp_path / f"lens_{lens}"
        args = ["lens", "--model", LLAMA, "--langs", "fr", "--max-prompts", "1", "--max-new-tokens", "1",
                "--top-k", "3", "--lens", lens, "--out", str(folder)]
        assert cli_main(args + (["--tuned-lens", str(lens_dir)] if lens == "tuned" else [])) == 0
        meta = json.loads((folder / "lens.json").read_text())
        assert meta["config"]["lens"] == lens and (folder / "lens_explorer.json").is_file()
    assert cli_main(["latent", "--model", LLAMA, "--lens", "tuned", "--out", str(tmp_path / "x")]) == 2
    assert "--tuned-lens" in capsys.readouterr().err


def test_run_lens_with_patchscope_matches_logit_lens_at_the_last_layer(shared_tiny):
    model, tok = shared_tiny(LLAMA)
    a = run_lens(model, tok, config=LensConfig(langs=("fr",), max_prompts=1, max_new_tokens=0, top_k=3, progress=False))
    b = run_lens(model, tok, config=LensConfig(langs=("fr",), max_prompts=1, max_new_tokens=0, top_k=3,
                                               lens="patchscope", progress=False))
    pa, pb = a.result.prompts[0], b.result.prompts[0]
    assert torch.equal(pa.topk_ids[-1], pb.topk_ids[-1])
    assert b.result.settings["lens"]["lens"] == "patchscope"


def test_a_missing_tuned_lens_is_refused_before_the_model_loads(tmp_path, capsys):
    missing = str(tmp_path / "no-lens")
    for args in (["latent", "--lens", "tuned"], ["lens", "--lens", "tuned", "--langs", "fr"]):
        # a model that cannot load: the tuned lens must be refused first
        assert cli_main([*args, "--model", str(tmp_path / "no-model"), "--tuned-lens", missing,
                         "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "no tuned lens at" in err and "no-model" not in err
        assert not (tmp_path / "out").exists()
