"""``mwork confusion run`` (mwork.confusion.run): the benchmark's completions of a tiny model, per
lever, scored; resumable (a killed run ends with the files of an uninterrupted one); bad input
refused before the model loads. Tiny inputs: the zh monolingual subset (2 test sets), 0 shots
unless the test is about shots, a few new tokens."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch

import mwork.confusion.run as run_module
from mwork.cli import main
from mwork.confusion.data import LcbFolder
from mwork.confusion.generate import Sampling, generate_batch
from mwork.confusion.results import RUN_COLUMNS
from mwork.confusion.run import ConfusionRunConfig
from mwork.confusion.tables import RELEASED_COLUMNS, read_completions
from mwork.neurons.neuronset import NeuronSet
from mwork.units.directions import Directions

LCB = Path(__file__).resolve().parent / "data" / "lcb"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
FILES = ("completions.csv", "lcb.csv", "lcb.json", "samples.jsonl", "lcb.png", "cells.jsonl", "settings.json")


def config(out: Path, **kw) -> ConfusionRunConfig:
    settings = {"model": "tiny-random-llama", "lcb_dir": str(LCB), "tasks": ("monolingual",), "langs": ("zh",),
                "limit": 2, "max_new_tokens": 5, "batch_size": 2, "out": str(out), "progress": False, **kw}
    return ConfusionRunConfig(**settings)


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def llama(shared_tiny):
    return shared_tiny("tiny-random-llama")


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["confusion", "run", "--model", "tiny-random-llama", "--lcb-dir", str(LCB), "--tasks", "monolingual",
                 "--langs", "fr", "--limit", "1", "--shots", "1", "--max-new-tokens", "4", "--out", str(out),
                 "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed["overall"]) == {"none"} and printed["overall"]["none"]["monolingual"]["n"] == 3
    completions = rows_of(out / "completions.csv")
    assert tuple(completions[0])[:6] == RELEASED_COLUMNS
    assert [(r["id"], r["model"], r["task"], r["source"], r["language"], r["lever"]) for r in completions] == [
        ("0", "tiny-random-llama", "monolingual", "dolly_human_edited", "fr", "none"),
        ("1", "tiny-random-llama", "monolingual", "native_prompts", "fr", "none"),
        ("2", "tiny-random-llama", "monolingual", "okapi", "fr", "none")]
    assert all(0 < int(r["new_tokens"]) <= 4 and float(r["nll"]) > 0 for r in completions)
    assert (out / "completions.csv").read_bytes().count(b"\r\n") >= 4  # CRLF rows, as released
    lcb = rows_of(out / "lcb.csv")
    assert tuple(lcb[0]) == RUN_COLUMNS
    assert {(r["source"], r["language"], r["lever"]) for r in lcb} >= {("okapi", "fr", "none"), ("all", "all", "none")}
    # the file scores as the released ones do
    assert main(["confusion", "score", str(out / "completions.csv"), "--out", str(tmp_path / "scored")]) == 0
    rescored = {(r["source"], r["language"]): r["lpr"] for r in rows_of(tmp_path / "scored" / "lcb.csv")}
    assert rescored == {(r["source"], r["language"]): r["lpr"] for r in lcb}


def test_resume_after_a_kill_gives_the_same_files(tmp_path, llama, monkeypatch):
    model, tok = llama
    whole = config(tmp_path / "whole", levers=("none", "prompt")).run(model, tok)
    assert len(read_completions(whole.files["completions"])) == 8  # 2 levers x 2 test sets x 2 prompts

    calls = []

    def killed(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is stopped in its third cell
        return generate_batch(*args, **kwargs)

    monkeypatch.setattr(run_module, "generate_batch", killed)
    with pytest.raises(KeyboardInterrupt):
        config(tmp_path / "resumed", levers=("none", "prompt")).run(model, tok)
    monkeypatch.undo()
    cells = tmp_path / "resumed" / "cells.jsonl"
    assert len(cells.read_text(encoding="utf-8").splitlines()) == 2 and not (tmp_path / "resumed" / "lcb.csv").exists()
    with open(cells, "a", encoding="utf-8") as f:
        f.write('{"key": {"lever": "prompt", "task": "mono')  # killed while writing a cell
    again = config(tmp_path / "resumed", levers=("none", "prompt")).run(model, tok)
    for name in FILES:
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert again.data == whole.data
    # a finished run reruns nothing
    monkeypatch.setattr(run_module, "generate_batch", lambda *a, **k: pytest.fail("nothing left to generate"))
    config(tmp_path / "whole", levers=("none", "prompt")).run(model, tok)


def test_sampling_is_seeded_and_greedy_is_an_option(llama):
    model, tok = llama
    texts = ["Q: 你好\nA:", "Q: Bonjour, comment allez-vous ?\nA:"]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate_batch(model, tok, texts, Sampling(max_new_tokens=6), seed=1)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is left as it was
    assert a == generate_batch(model, tok, texts, Sampling(max_new_tokens=6), seed=1)
    assert a != generate_batch(model, tok, texts, Sampling(max_new_tokens=6), seed=2)
    greedy = generate_batch(model, tok, texts, Sampling(greedy=True, max_new_tokens=6), seed=1)
    assert greedy == generate_batch(model, tok, texts, Sampling(greedy=True, max_new_tokens=6), seed=2)
    # left padding: a row generates what it generates alone
    assert greedy[1] == generate_batch(model, tok, texts[1:], Sampling(greedy=True, max_new_tokens=6), seed=1)[0]
    with pytest.raises(ValueError, match="--top-p must be in"):
        Sampling(top_p=0)


def test_chat_models_are_asked_through_their_template(tmp_path, llama, monkeypatch):
    model, tok = llama
    seen = []

    def spy(model_, tok_, texts, sampling, **kwargs):
        seen.append((list(texts), kwargs["add_special_tokens"], kwargs["stop"]))
        return generate_batch(model_, tok_, texts, sampling, **kwargs)

    monkeypatch.setattr(run_module, "generate_batch", spy)
    with pytest.raises(ValueError, match="tiny-random-llama has no chat template; use the few-shot/plain format or a "
                                         "chat model"):
        config(tmp_path / "no", chat=True).run(model, tok)
    assert not seen  # refused before any generation
    tok.chat_template = TEMPLATE
    result = config(tmp_path / "chat", chat=True, limit=1, levers=("none", "prompt")).run(model, tok)
    prompts = LcbFolder(LCB).prompts("monolingual", "zh", 1)
    # one batch per lever: the language's prompts of both test sets together
    assert [t[0] for t in seen] == [[f"<|user|>{p.prompt}<|end|>\n<|assistant|>" for p in prompts],
                                    [f"<|user|>Reply in Chinese. {p.prompt}<|end|>\n<|assistant|>" for p in prompts]]
    assert seen[0][1:] == (False, ())  # the template writes its own special tokens; no "\nQ:" stop
    assert len(read_completions(result.files["completions"])) == 4


def test_a_batch_pools_a_language_s_test_sets_and_tasks(tmp_path, llama, monkeypatch):
    """The zh prompts of both tasks (5 test sets, 1 prompt each) go in batches of 4 with their own
    task's shots; the file keeps the released order; the batches are the same for every lever."""
    model, tok = llama
    seen = []

    def spy(model_, tok_, texts, sampling, **kwargs):
        seen.append((list(texts), kwargs["seed"]))
        return generate_batch(model_, tok_, texts, sampling, **kwargs)

    monkeypatch.setattr(run_module, "generate_batch", spy)
    result = config(tmp_path / "o", tasks=("monolingual", "crosslingual"), limit=1, batch_size=4, shots=1,
                    levers=("none", "prompt")).run(model, tok)
    folder = LcbFolder(LCB)
    prompts = folder.prompts("monolingual", "zh", 1) + folder.prompts("crosslingual", "zh", 1)
    shots = {task: folder.few_shot(task, "zh", 1) for task in ("monolingual", "crosslingual")}
    from mwork.confusion.prompts import few_shot_prompt

    texts = [few_shot_prompt(shots[p.task], p.prompt) for p in prompts]
    assert [t for t, _ in seen[:2]] == [texts[:4], texts[4:]]
    assert [len(t) for t, _ in seen[2:]] == [4, 1] and [s for _, s in seen[2:]] == [s for _, s in seen[:2]]
    rows = read_completions(result.files["completions"])
    assert [(r["task"], r["source"]) for r in rows[:5]] == [(p.task, p.source) for p in prompts]
    assert [r["lever"] for r in rows] == ["none"] * 5 + ["prompt"] * 5


def test_levers_steer_toward_the_expected_language(tmp_path, llama):
    model, tok = llama
    ns = NeuronSet.empty_for(model)
    gen = torch.Generator().manual_seed(0)
    means = {}
    for kind, mask in ns.masks.items():
        mask |= torch.rand(mask.shape, generator=gen) < 0.2
        means[kind] = torch.where(mask, 5 * torch.randn(mask.shape, generator=gen), torch.full(mask.shape, float("nan")))
    (tmp_path / "neurons").mkdir()
    ns.with_statistics({"mean": means}, {"language": "zh"}).save(tmp_path / "neurons" / "zh.safetensors")
    hidden = model.config.hidden_size
    (tmp_path / "vectors").mkdir()
    Directions(torch.randn(1, hidden, generator=gen), [1], names=["zh"],
               stats={"mean": torch.tensor([1.0])}).save(tmp_path / "vectors" / "zh.safetensors")
    levers = ("none", "neurons", "vectors", "random")
    result = config(tmp_path / "out", levers=levers, neurons_dir=str(tmp_path / "neurons"), greedy=True,
                    vectors_dir=str(tmp_path / "vectors"), vector_strength=40.0,
                    stats_corpus=("zh=builtin:zh",), stats_docs=2).run(model, tok)
    completions = read_completions(result.files["completions"])
    by_lever = {lever: [c["completion"] for c in completions if c["lever"] == lever] for lever in levers}
    assert all(len(v) == 4 for v in by_lever.values())
    assert len({tuple(v) for v in by_lever.values()}) == 4  # each lever changes the greedy completions
    assert {c["model"] for c in completions} == {"tiny-random-llama", "tiny-random-llama+neurons",
                                                "tiny-random-llama+vectors", "tiny-random-llama+random"}
    lcb = rows_of(result.files["lcb_csv"])
    tops = {r["lever"]: r for r in lcb if r["task"] == "monolingual" and r["source"] == "all" and r["language"] == "all"}
    assert set(tops) == set(levers) and all(tops[x]["n"] == "4" and tops[x]["distinct2"] for x in levers)
    assert set(result.extra["overall"]) == set(levers)


def test_bad_input_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys, llama):
    monkeypatch.setattr("mwork.jobs.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    base = ["confusion", "run", "--model", "tiny-random-llama", "--lcb-dir", str(LCB), "--out", str(tmp_path / "o"),
            "--langs", "zh"]
    cases = [
        (["--langs", "fr,xx"], "unknown language 'xx' in --langs"),
        (["--tasks", "mono"], "unknown task 'mono' in --tasks"),
        (["--langs", "de"], "no monolingual or crosslingual test set in de"),
        (["--levers", "none,magic"], "unknown lever 'magic' in --levers"),
        (["--levers", "neurons"], "the neurons lever needs --neurons-dir"),
        (["--levers", "vectors", "--vectors-dir", str(tmp_path)], "has no zh.safetensors"),
        (["--levers", "random", "--neurons-dir", str(tmp_path)], "has no zh.safetensors"),
        (["--chat", "--shots", "1"], "give --shots 0 with --chat"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--temperature", "0"], "--temperature must be positive"),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mwork confusion: error: ") and message in err[0], (extra, err)
    with pytest.raises(FileNotFoundError, match="is not a folder; give the Language Confusion Benchmark's folder"):
        config(tmp_path / "o", lcb_dir=str(tmp_path / "nowhere")).check()
    (tmp_path / "zh.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="random neurons in set mode need their mean activation on the language: give "
                                         "--stats-corpus LANG=SPEC for zh"):
        config(tmp_path / "o", levers=("random",), neurons_dir=str(tmp_path)).check()
    with pytest.raises(ValueError, match="random vectors carry no coordinate statistic"):
        config(tmp_path / "o", levers=("random",), vectors_dir=str(tmp_path), vector_mode="set").check()
    # a lever's set without the statistic its mode moves toward, or of the other kind
    sets = tmp_path / "sets"
    NeuronSet.empty_for(llama[0]).save(sets / "zh.safetensors")
    with pytest.raises(ValueError, match="zh.safetensors carries no 'mean' statistic, which --neuron-mode set moves"):
        config(tmp_path / "o", levers=("neurons",), neurons_dir=str(sets)).check()
    with pytest.raises(ValueError, match="holds neurons, not directions"):
        config(tmp_path / "o", levers=("vectors",), vectors_dir=str(sets)).check()
    # ... unless the language's texts are given to measure it on
    config(tmp_path / "o", levers=("neurons",), neurons_dir=str(sets), stats_corpus=("zh=builtin:zh",)).check()


def test_a_neuron_set_without_its_mean_has_it_measured_on_the_stats_corpus(tmp_path, llama):
    from mwork.confusion.levers import Levers
    from mwork.neurons.statistics import add_statistics
    from mwork.texts import read_texts

    model, tok = llama
    ns = NeuronSet.empty_for(model)
    ns.masks["ffn"][1, :4] = True
    ns.save(tmp_path / "zh.safetensors")
    options = config(tmp_path / "o", levers=("neurons",), neurons_dir=str(tmp_path), stats_corpus=("zh=builtin:zh",),
                     stats_docs=2)
    corpora = options.check_levers(("zh",))
    prepared = Levers(options, seed=0, stats_corpora=corpora, progress=False).get("neurons", "zh", model, tok)
    direct = add_statistics(model, tok, NeuronSet.load(tmp_path / "zh.safetensors"), read_texts("builtin:zh")[:2],
                            ("mean",), language="zh")
    got, want = prepared.units.neurons.statistic("mean", "ffn"), direct.statistic("mean", "ffn")
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)  # NaN where not in the set
    assert got[1, :4].isfinite().all()


def test_empty_completions_are_counted_and_said(tmp_path, llama, monkeypatch):
    model, tok = llama
    monkeypatch.setattr(run_module, "generate_batch",
                        lambda m, t, texts, s, **k: [{"ids": [], "text": ""} for _ in texts])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = config(tmp_path / "o", perplexity=False).run(model, tok)
    said = [str(w.message) for w in caught if "empty" in str(w.message)]
    assert said and "4 completions are empty (none completions 1, 2, 3, 4)" in said[0]
    top = [r for r in rows_of(result.files["lcb_csv"]) if r["source"] == "all" and r["language"] == "all"][0]
    assert (top["n"], top["scored"], top["lpr"], top["distinct2"], top["ppl"]) == ("4", "0", "", "", "")


def test_vector_modes_are_steer_settings():
    from mwork.confusion.levers import LeverOptions

    def settings(mode):
        return LeverOptions(vector_mode=mode, vector_strength=2.0, vector_layers="6").steer_settings("vectors")

    assert settings("add") == {"mode": "add", "strength": 2.0, "layers": "6", "positions": "all", "keep_norm": False}
    assert settings("add-norm") == {**settings("add"), "keep_norm": True}  # experiment control's add-norm
    assert settings("set")["mode"] == "set" and not settings("set")["keep_norm"]
    assert "keep_norm" not in LeverOptions().steer_settings("neurons")
