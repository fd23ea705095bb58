"""lm-evaluation-harness under mwork: the local tasks, the ``mwork`` backend against lm-eval's plain
HFLM (no neurons off) and against mwork's own runtime (neurons off), the BOS of rolling
log-likelihoods, ``mwork eval`` and ``lm_eval --model mwork``. Offline: the tasks are local."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mwork
from mwork.neurons.neuronset import NeuronSet
from tests.conftest import TEST_DATA as DATA

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 6, "Le renard brun saute par-dessus le chien.", "猫が好き。"]
PAIRS = [("The capital of France is", " Paris"), ("Le chat", " noir et blanc"), ("2 + 2 =", " 4"),
         ("Question: who?\nAnswer:", " Marie Curie")]


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models.shared("tiny-random-llama")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    from mwork.tasks.lm_eval_local import make_local_tasks

    out = tmp_path_factory.mktemp("lm_eval_tasks")
    make_local_tasks(out, DATA, langs=["en", "zh", "de"], limit=6)
    return out


def _set(model):
    return NeuronSet.from_indices(model, {"ffn": {0: [1, 5, 9], 2: [0, 3]}, "q": {1: [2, 7]}, "v": {0: [4]}},
                                  {"language": "xx"})


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _bos_tokenizer(tok):
    """A copy of the tiny tokenizer that adds a BOS itself, as Gemma's and Llama's do."""
    from tokenizers import processors

    tok = copy.deepcopy(tok)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.bos_token_id)])
    return tok


# ---- local tasks -----------------------------------------------------------------------------

def test_local_tasks_are_parallel_multiple_choice(tmp_path):
    from mwork.tasks.lm_eval_local import make_local_tasks

    names = make_local_tasks(tmp_path, DATA, langs=["en", "zh"])
    assert names == ["mwork_xquad_mc_en", "mwork_mgsm_direct_en", "mwork_xquad_mc_zh", "mwork_mgsm_direct_zh"]
    rows = {lang: [json.loads(x) for x in (tmp_path / "data" / f"mwork_xquad_mc_{lang}.jsonl").read_text().splitlines()]
            for lang in ("en", "zh")}
    squad = json.loads((DATA / "xquad" / "xquad.en.json").read_text())["data"]
    gold = {qa["id"]: qa["answers"][0]["text"] for art in squad for p in art["paragraphs"] for qa in p["qas"]}
    held_out = [qa for art in squad[24:] for p in art["paragraphs"] for qa in p["qas"]]
    # an item needs three other distinct answers of its article: most questions make one
    assert len(rows["en"]) > 0.8 * len(held_out) and {r["article"] for r in rows["en"]} == set(range(24, 48))
    for r in rows["en"]:
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and r["choices"][r["label"]] == gold[r["id"]]
    zh = {r["id"]: r for r in rows["zh"]}
    same = [r for r in rows["en"] if r["id"] in zh]
    assert len(same) > 0.9 * len(rows["en"])
    assert sum(zh[r["id"]]["label"] == r["label"] for r in same) == len(same)  # the gold's slot is parallel
    with pytest.raises(FileNotFoundError, match="no XQuAD or MGSM file for xx"):
        make_local_tasks(tmp_path / "x", DATA, langs=["xx"])
    from mwork.tasks.lm_eval_local import answer_sentence, xquad_mc_rows

    assert answer_sentence("One. Two is 2! Three.", 5, 3) == "Two is 2!"
    assert answer_sentence("第一句。第二句有答案。第三句。", 6, 2) == "第二句有答案。"
    short = xquad_mc_rows(DATA / "xquad" / "xquad.zh.json", [24], sentences=True)
    full = {r["id"]: r for r in xquad_mc_rows(DATA / "xquad" / "xquad.zh.json", [24])}
    assert short and len(short) == len(full)
    for r in short:  # the same items, the passage cut to the sentence that holds the gold
        f = full[r["id"]]
        assert (r["choices"], r["label"]) == (f["choices"], f["label"])
        assert r["choices"][r["label"]] in r["context"] and r["context"] in f["context"]
    mgsm = [json.loads(x) for x in (tmp_path / "data" / "mwork_mgsm_direct_zh.jsonl").read_text().splitlines()]
    tsv = (DATA / "mgsm" / "mgsm_zh.tsv").read_text(encoding="utf-8").splitlines()
    assert len(mgsm) == len(tsv) and mgsm[0]["answer_number"] == 18


def test_make_local_tasks_command_takes_the_data_from_data_or_the_environment(tmp_path, capsys, monkeypatch):
    from mwork.cli import main

    monkeypatch.delenv("MWORK_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no folder is guessed, from here or beside the checkout
    assert main(["eval", "--make-local-tasks", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "pass --data FOLDER" in err and "or set MWORK_DATA" in err and not (tmp_path / "t").exists()
    assert main(["eval", "--make-local-tasks", str(tmp_path / "t"), "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "no data folder at" in err and "(--data FOLDER or $MWORK_DATA)" in err
    assert main(["eval", "--data", str(DATA)]) == 2  # a set-up option without its action
    assert "--data: only used with --make-local-tasks" in capsys.readouterr().err
    assert main(["eval", "--make-local-tasks", str(tmp_path / "t"), "--data", str(DATA), "--langs", "de",
                 "--local-limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"] == ["mwork_xquad_mc_de",
                                                                                     "mwork_mgsm_direct_de"]
    monkeypatch.setenv("MWORK_DATA", str(DATA))
    assert main(["eval", "--make-local-tasks", str(tmp_path / "u"), "--langs", "zh", "--local-limit", "2"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"] == ["mwork_xquad_mc_zh",
                                                                                     "mwork_mgsm_direct_zh"]
    assert len((tmp_path / "u" / "data" / "mwork_xquad_mc_zh.jsonl").read_text(encoding="utf-8").splitlines()) == 2


# ---- the backend against HFLM and against mwork ------------------------------------------------

def test_backend_equals_plain_hflm_without_neurons(tiny):
    from lm_eval.models.huggingface import HFLM

    from mwork.tasks.lm_eval_backend import MworkLM

    model, tok = tiny
    ours, plain = MworkLM(model, tokenizer=tok, batch_size=2), HFLM(pretrained=model, tokenizer=tok, batch_size=2)
    assert ours.loglikelihood(_requests("loglikelihood", PAIRS)) == plain.loglikelihood(_requests("loglikelihood", PAIRS))
    rolling = _requests("loglikelihood_rolling", [(t,) for t in TEXTS])
    assert ours.loglikelihood_rolling(rolling) == plain.loglikelihood_rolling(rolling)  # no BOS added: as HFLM
    gen = _requests("generate_until", [(c, {"until": ["\n"], "max_gen_toks": 6, "do_sample": False}) for c, _ in PAIRS])
    assert ours.generate_until(gen) == plain.generate_until(gen)


def test_backend_with_neurons_off_equals_mwork(tiny):
    from mwork.tasks.generation import loglikelihood
    from mwork.tasks.lm_eval_backend import MworkLM

    model, tok = tiny
    ns = _set(model)
    lm = MworkLM(model, tokenizer=tok, neurons=ns, batch_size=1)
    ours = [ll for ll, _ in lm.loglikelihood(_requests("loglikelihood", PAIRS))]
    with mwork.deactivate(model, ns):
        theirs = [ll for ll, _ in loglikelihood(model, tok, PAIRS, batch_size=1, progress=False)]
    plain = [ll for ll, _ in MworkLM(model, tokenizer=tok, batch_size=1).loglikelihood(_requests("loglikelihood", PAIRS))]
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)
    assert all(abs(a - b) > 1e-6 for a, b in zip(ours, plain))  # the set changes every answer
    # exactly a weight-zeroed copy under plain lm-eval
    from lm_eval.models.huggingface import HFLM

    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        adapter = mwork.get_adapter(zeroed)
        for layer, idx in ((0, [1, 5, 9]), (2, [0, 3])):
            adapter.mlp_down(layer).weight[:, idx] = 0
        q = adapter.neuron_site("q", 1)
        q.module.weight[q.features(torch.tensor([2, 7]))] = 0
        v = adapter.neuron_site("v", 0)
        v.module.weight[v.features(torch.tensor([4]))] = 0
    exact = [ll for ll, _ in HFLM(pretrained=zeroed, tokenizer=tok, batch_size=1).loglikelihood(
        _requests("loglikelihood", PAIRS))]
    assert ours == exact


def test_random_like_and_restriction(tiny):
    from mwork.tasks.lm_eval_backend import MworkLM
    from mwork.tasks.switch_off import neurons_to_switch_off

    model, tok = tiny
    ns = _set(model)
    lm = MworkLM(model, tokenizer=tok, random_like=ns, seed=3, kinds="ffn+q")
    expected = ns.restrict(None, ["ffn", "q"]).random_like(3, exclude=ns)
    assert lm.off == expected and lm.intervention["seed"] == 3 and lm.intervention["deactivated"] == 7
    with pytest.raises(ValueError, match="not both"):
        neurons_to_switch_off(model, ns, ns)
    with pytest.raises(ValueError, match="restrict a neuron set"):
        neurons_to_switch_off(model, layers="0-1")


def test_one_bos_in_rolling_loglikelihood(tiny):
    """A tokenizer that adds its own BOS: plain HFLM scores after two BOS, mwork's backend after one,
    exactly mwork's perplexity (whose prefix is the same BOS), with neurons off too."""
    from lm_eval.models.huggingface import HFLM

    from mwork.tasks.lm_eval_backend import MworkLM
    from mwork.tasks.perplexity import perplexity

    model, tok = tiny
    bos = _bos_tokenizer(tok)
    assert bos("a").input_ids[0] == bos.bos_token_id
    ns = _set(model)
    reqs = _requests("loglikelihood_rolling", [(t,) for t in TEXTS])
    lm = MworkLM(model, tokenizer=bos, neurons=ns, batch_size=1)
    ours = lm.loglikelihood_rolling(reqs)
    with mwork.deactivate(model, ns):
        ppl = perplexity(model, bos, TEXTS, batch_size=1, max_length=lm.max_length, per_text=True, progress=False)
        double = HFLM(pretrained=model, tokenizer=bos, batch_size=1).loglikelihood_rolling(reqs)
    assert ours == pytest.approx([-t["nll_sum"] for t in ppl["per_text"]], rel=1e-6)
    assert all(abs(a - b) > 1e-4 for a, b in zip(ours, double))
    # the backend's other requests keep the tokenizer's single BOS
    assert lm.tok_encode("hello")[0] == bos.bos_token_id


# ---- mwork eval and lm_eval --model mwork -----------------------------------------------------

def _samples(folder):
    files = sorted(Path(folder).rglob("samples_*.jsonl"))
    return {json.loads(line)["doc_id"]: json.loads(line)["resps"] for f in files for line in f.read_text().splitlines()}


def test_mwork_eval_equals_plain_lm_eval(tiny, tasks_dir, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from mwork.cli import main
    from mwork.tasks.lm_eval_run import task_manager

    model, tok = tiny
    ns_path = _set(model).save(tmp_path / "xx.safetensors")
    out = tmp_path / "plain"
    assert main(["eval", "--model", "tiny-random-llama", "--tasks", "mwork_xquad_mc_de", "--include-path",
                 str(tasks_dir), "--limit", "3", "--batch-size", "2", "--bootstrap-iters", "0", "--device", "cpu",
                 "--out", str(out)]) == 0
    results = next(out.rglob("results_*.json"))
    assert "mwork_xquad_mc_de" in json.loads(results.read_text())["results"]
    reference = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=2),
                                        tasks=["mwork_xquad_mc_de"], task_manager=task_manager(tasks_dir), limit=3,
                                        bootstrap_iters=0, log_samples=True)
    # lm-eval's samples file writes each (log-likelihood, is_greedy) as strings: repr, so equal strings = equal floats
    assert _samples(out) == {s["doc_id"]: [[[str(ll), str(greedy)] for ll, greedy in r] for r in s["resps"]]
                             for s in reference["samples"]["mwork_xquad_mc_de"]}
    # random neurons like a set: exit 0, results and samples written, the intervention recorded
    off = tmp_path / "random"
    assert main(["eval", "--model", "tiny-random-llama", "--tasks", "mwork_mgsm_direct_zh", "--include-path",
                 str(tasks_dir), "--random-like", str(ns_path), "--seed", "1", "--limit", "2", "--bootstrap-iters", "0",
                 "--device", "cpu", "--out", str(off)]) == 0
    record = json.loads((off / "mwork_eval.json").read_text())
    assert record["intervention"]["deactivated"] == 8 and record["intervention"]["seed"] == 1
    assert any(f.startswith("tiny-random-llama/samples_mwork_mgsm_direct_zh") for f in record["files"])
    assert main(["eval", "--model", "tiny-random-llama", "--tasks", "no_such_task", "--include-path", str(tasks_dir),
                 "--out", str(tmp_path / "bad")]) == 2


def _lm_eval_args(tasks_dir, out, ns_path):
    return ["--model", "mwork", "--model_args", f"pretrained=tiny-random-llama,neurons={ns_path}",
            "--tasks", "mwork_xquad_mc_en", "--include_path", str(tasks_dir), "--limit", "2", "--device", "cpu",
            "--output_path", str(out)]


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def test_lm_eval_finds_the_backend_through_the_plugin_hook(tiny, tasks_dir, tmp_path):
    from mwork.tasks.lm_eval_plugin import install_lm_eval_plugin

    site = tmp_path / "site"
    site.mkdir()
    install_lm_eval_plugin(site)
    ns_path = _set(tiny[0]).save(tmp_path / "xx.safetensors")
    code = ("import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['lm_eval'] + sys.argv[2:]; "
            "from lm_eval.__main__ import cli_evaluate; cli_evaluate()")
    run = subprocess.run([sys.executable, "-c", code, str(site), *_lm_eval_args(tasks_dir, tmp_path / "out", ns_path)],
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"]["mwork_xquad_mc_en"]["acc,none"] is not None
    assert results["config"]["mwork_intervention"]["deactivated"] == 8


def test_installed_lm_eval_command(tiny, tasks_dir, tmp_path):
    """The ``lm_eval`` command of this environment (scripts/setup.sh installs the plugin)."""
    from mwork.tasks.lm_eval_plugin import PTH_NAME, default_site_dir

    if not (default_site_dir() / PTH_NAME).is_file():
        pytest.skip("mwork's lm-eval plugin is not installed here: run scripts/setup.sh or mwork eval --install-lm-eval-plugin")
    ns_path = _set(tiny[0]).save(tmp_path / "xx.safetensors")
    command = Path(sys.executable).with_name("lm_eval")
    run = subprocess.run([str(command), *_lm_eval_args(tasks_dir, tmp_path / "out", ns_path)], capture_output=True,
                         text=True, env=_env(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["mwork_xquad_mc_en"]


@pytest.mark.slow
def test_gemma_rolling_loglikelihood_equals_mwork_perplexity():
    """Gemma's tokenizer adds a BOS: with the backend, lm-eval's rolling log-likelihood is mwork's
    perplexity to float rounding (lm-eval sums float32 log-probabilities, mwork float64: 4e-7
    relative at most here), and plain HFLM's differs (second BOS)."""
    from lm_eval.models.huggingface import HFLM

    from mwork.tasks.lm_eval_backend import MworkLM
    from mwork.tasks.perplexity import perplexity

    model, tok = mwork.load_model("gemma-3-270m", device="cpu")
    reqs = _requests("loglikelihood_rolling", [(t,) for t in TEXTS])
    lm = MworkLM(model, tokenizer=tok, batch_size=1, max_length=128)
    ours = lm.loglikelihood_rolling(reqs)
    ppl = perplexity(model, tok, TEXTS, batch_size=1, max_length=128, per_text=True, progress=False)
    assert ours == pytest.approx([-t["nll_sum"] for t in ppl["per_text"]], rel=1e-6)
    double = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=128).loglikelihood_rolling(reqs)
    assert all(abs(a - b) > 1e-3 for a, b in zip(ours, double))
