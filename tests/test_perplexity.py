"""Perplexity: equal to a hand computation, windows as documented, independent of padding and
batch size; text loaders; the ``mwork ppl`` command."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from tokenizers import processors

import mwork
from mwork.cli import main
from mwork.intervene import deactivate
from mwork.models.tiny import TINY_ALIASES
from mwork.neurons.neuronset import NeuronSet
from mwork.tasks.perplexity import make_windows, perplexity
from mwork.texts import data_dir, load_texts, xquad_texts
from tests.conftest import TEST_DATA

TEXTS = [
    "The quick brown fox jumps over the lazy dog. Language models read and write many languages.",
    "Le renard brun saute.",
    "敏捷的棕色狐狸跳过了懒狗。语言模型可以阅读和书写多种语言。",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "1, 2, 3",
]


@pytest.fixture
def load(shared_tiny):
    """``load(alias="tiny-random-llama", dtype=torch.float64)``: the shared tiny model (read-only)."""
    return lambda alias="tiny-random-llama", dtype=torch.float64: shared_tiny(alias, dtype)


def with_bos(tok):
    """The tiny tokenizer, made to add a BOS like Gemma's and Llama's."""
    tok = copy.deepcopy(tok)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


def next_token_nll(model, ids: list[int]) -> torch.Tensor:
    """NLL of ids[1:] given the preceding ids, from the model's own logits (one sequence)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return -torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)


@pytest.mark.parametrize("alias,bos", [(a, False) for a in TINY_ALIASES] + [("tiny-random-llama", True)],
                         ids=lambda x: x if isinstance(x, str) else ("bos" if x else "no-bos"))
def test_equals_manual_computation(alias, bos, load):
    model, tok = load(alias)
    tok = with_bos(tok) if bos else tok
    total, count = 0.0, 0
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert (ids[0] == tok.bos_token_id) == bos
        nll = next_token_nll(model, ids)  # with BOS: every text token is scored, from BOS on
        total, count = total + float(nll.sum()), count + len(nll)
    r = perplexity(model, tok, TEXTS, batch_size=3, progress=False)
    assert r["tokens"] == count == sum(len(tok(t, add_special_tokens=False)["input_ids"]) - (not bos) for t in TEXTS)
    assert r["nll"] == pytest.approx(total / count, rel=1e-10)
    # ppl = exp(nll): its relative error is the absolute error of nll (eager attention takes its
    # softmax in float32 even in float64, so batched and single rows differ by ~1e-10 in nll)
    assert r["ppl"] == pytest.approx(math.exp(total / count), rel=1e-9)


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_sliding_windows_match_the_documented_rule(bos, load):
    """stride=1: token t is scored from the prefix plus the (max_length - prefix - 1) text
    tokens before it, computed here one token at a time."""
    model, tok = load()
    tok = with_bos(tok) if bos else tok
    text, max_length = TEXTS[0], 8
    ids = tok(text)["input_ids"]
    prefix, body = ids[:int(bos)], ids[int(bos):]
    width = max_length - len(prefix)
    expected = []
    for t in range(0 if bos else 1, len(body)):
        window = prefix + body[max(0, t - width + 1):t + 1]
        expected.append(float(next_token_nll(model, window)[-1]))
    r = perplexity(model, tok, [text], max_length=max_length, stride=1, per_text=True, progress=False)
    assert r["tokens"] == len(expected)
    assert r["per_text"][0]["nll_sum"] == pytest.approx(sum(expected), rel=1e-10)


def test_windows_score_every_token_once_with_enough_context():
    body = list(range(100, 137))
    for n_prefix in (0, 1):
        ids = [1] * n_prefix + body
        for max_length, stride in [(8, None), (8, 3), (10, 1), (64, None)]:
            windows = make_windows(ids, n_prefix, max_length, stride)
            scored = []
            for inp, n in windows:
                assert len(inp) <= max_length and inp[:n_prefix] == [1] * n_prefix
                start = body.index(inp[n_prefix])
                scored += list(range(start + len(inp) - n_prefix - n, start + len(inp) - n_prefix))
                if start > 0:  # later windows: every scored token has context of its own text
                    width = max_length - n_prefix
                    assert len(inp) - n_prefix - n >= width - (stride or width - 1)
            assert scored == list(range(0 if n_prefix else 1, len(body)))
    with pytest.raises(ValueError, match="stride"):
        make_windows([1] + body, 1, 8, stride=7)
    with pytest.raises(ValueError, match="max_length"):
        make_windows([1] + body, 1, 2)


@pytest.mark.parametrize("alias", TINY_ALIASES)
def test_batch_size_and_padding_do_not_change_the_result(alias, load):
    model, tok = load(alias, dtype=torch.float32)
    one = perplexity(model, tok, TEXTS, batch_size=1, max_length=16, progress=False)
    four = perplexity(model, tok, TEXTS, batch_size=4, max_length=16, progress=False)
    assert one["tokens"] == four["tokens"] and one["n_windows"] > len(TEXTS)  # windows of unequal length
    assert four["ppl"] == pytest.approx(one["ppl"], rel=1e-5)
    assert perplexity(model, tok, TEXTS, batch_size=4, max_length=16, progress=False) == four  # deterministic


def test_empty_texts_are_reported(load):
    model, tok = load()
    r = perplexity(model, tok, ["", TEXTS[0], "", TEXTS[1]], progress=False)
    assert r["empty_texts"] == [0, 2] and r["n_texts"] == 4
    assert r["tokens"] == perplexity(model, tok, [TEXTS[0], TEXTS[1]], progress=False)["tokens"]
    with pytest.raises(ValueError, match="none of the texts"):
        perplexity(model, tok, ["", ""], progress=False)
    with pytest.raises(ValueError, match="list of strings"):
        perplexity(model, tok, "one string", progress=False)


def test_deactivated_perplexity_equals_edited_weights(load):
    model, tok = load("tiny-random-gpt2")
    ns = NeuronSet.from_indices(model, {"ffn": {0: [1, 2, 3]}, "v": {1: [0, 5]}})
    base = perplexity(model, tok, TEXTS, progress=False)
    with deactivate(model, ns):
        off = perplexity(model, tok, TEXTS, progress=False)
    edited = copy.deepcopy(model)
    with torch.no_grad():  # by hand: GPT-2 Conv1D weights are (in, out); c_attn outputs [Q | K | V]
        edited.transformer.h[0].mlp.c_proj.weight[[1, 2, 3], :] = 0
        v_features = [2 * 64 + 0, 2 * 64 + 5]  # n_embd = 64
        edited.transformer.h[1].attn.c_attn.weight[:, v_features] = 0
        edited.transformer.h[1].attn.c_attn.bias[v_features] = 0
    assert off["ppl"] == pytest.approx(perplexity(edited, tok, TEXTS, progress=False)["ppl"], rel=1e-10)
    assert off["ppl"] != pytest.approx(base["ppl"], rel=1e-6)
    assert perplexity(model, tok, TEXTS, progress=False) == base


def test_load_texts(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("first\n\nthird\n", encoding="utf-8")
    assert load_texts(txt) == ["first", "", "third"]
    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "a"}\n"b"\n{"text": "c", "lang": "en"}\n', encoding="utf-8")
    assert load_texts(jl) == ["a", "b", "c"]
    jl.write_text('{"body": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="t.jsonl:1"):
        load_texts(jl)
    with pytest.raises(FileNotFoundError):
        load_texts(tmp_path / "missing.txt")


def test_xquad_texts_from_a_squad_file(tmp_path):
    data = {"data": [{"paragraphs": [{"context": f"a{a}p{p}", "qas": []} for p in range(2)]} for a in range(4)]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert xquad_texts(path, articles=[1, 3]) == ["a1p0", "a1p1", "a3p0", "a3p1"]
    assert len(xquad_texts(path, articles=None)) == 8 == len(load_texts(path))
    with pytest.raises(ValueError, match="out of range"):
        xquad_texts(path, articles=[4])


def test_xquad_held_out_paragraphs_from_local_data(monkeypatch, tmp_path):
    monkeypatch.setenv("MWORK_DATA", str(TEST_DATA))
    assert data_dir() == TEST_DATA and data_dir(tmp_path) == tmp_path  # a folder given first
    zh = xquad_texts("zh", source="local")
    raw = json.loads((TEST_DATA / "xquad" / "xquad.zh.json").read_text(encoding="utf-8"))["data"]
    assert zh == [p["context"] for a in raw[24:48] for p in a["paragraphs"]] and zh[0] == raw[24]["paragraphs"][0]["context"]
    assert not set(zh) & set(xquad_texts("zh", articles=range(24), source="local"))
    with pytest.raises(FileNotFoundError, match="source='hub'"):
        xquad_texts("xx", source="local")
    monkeypatch.delenv("MWORK_DATA")
    monkeypatch.chdir(tmp_path)
    assert data_dir() is None  # no other folder is guessed: the hub then
    with pytest.raises(FileNotFoundError, match="no data folder: set MWORK_DATA"):
        xquad_texts("zh", source="local")


def run_cli(capsys, *args) -> tuple[int, str]:
    """Exit code, and stdout (stderr when it failed)."""
    code = main(["ppl", *args])
    out = capsys.readouterr()
    return code, out.out if code == 0 else out.err


def test_cli_prints_json_last(tmp_path, capsys, shared_tiny):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    model, _ = shared_tiny("tiny-random-llama")
    ns = NeuronSet.from_indices(model, {"ffn": {0: [1, 2, 3], 2: [7]}, "q": {1: [4]}}, meta={"language": "xx"})
    path = ns.save(tmp_path / "xx")
    common = ["--model", "tiny-random-llama", "--texts", str(texts), "--max-length", "16"]

    code, out = run_cli(capsys, *common)
    base = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and base["tokens"] > 0 and base["ppl"] > 1 and base["n_texts"] == len(TEXTS)

    code, out = run_cli(capsys, *common, "--neurons", str(path), "--max-texts", "2")
    off = json.loads(out.strip().splitlines()[-1])
    assert off["deactivated"] == 5 and off["n_texts"] == 2 and off["tokens"] < base["tokens"]

    code, out = run_cli(capsys, *common, "--random-like", str(path), "--seed", "3", "--kinds", "ffn")
    rnd = json.loads(out.strip().splitlines()[-1])
    assert rnd["deactivated"] == 4 and rnd["deactivated_per_kind"]["ffn"] == 4 and rnd["seed"] == 3
    assert rnd["ppl"] != base["ppl"]

    code, out = run_cli(capsys, *common, "--layers", "0-1")
    assert code == 2 and "--neurons" in out.strip().splitlines()[-1]
    code, out = run_cli(capsys, "--model", "tiny-random-llama", "--texts", str(tmp_path / "nope.txt"))
    assert code == 2 and "no text file" in out


def test_bfloat16_model_scores_in_float32():
    """bf16 weights, float32 log-softmax: the perplexity stays close to the float32 model's."""
    full, tok = mwork.load_model("tiny-random-qwen3", dtype=torch.float32)
    half, _ = mwork.load_model("tiny-random-qwen3", dtype=torch.bfloat16)
    want = perplexity(full, tok, TEXTS, progress=False)
    got = perplexity(half, tok, TEXTS, progress=False)
    assert got["tokens"] == want["tokens"] and isinstance(got["ppl"], float)
    assert got["ppl"] == pytest.approx(want["ppl"], rel=0.05)
