"""Data-parallel detection: 2 processes on CPU (gloo) give exactly the single-process NeuronSet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mwork
from mwork import distributed
from mwork.cli import main as cli_main
from mwork.models.adapters import get_adapter
from mwork.neurons import detect as det
from mwork.neurons.importance import importance
from mwork.neurons.neuronset import NeuronSet

DOCS = [
    "Le renard brun saute par-dessus le chien paresseux.",
    "Les modèles de langue lisent le français et beaucoup d'autres langues.",
    "",
    "Bonjour le monde.",
    "El rápido zorro marrón salta sobre el perro perezoso. Los modelos leen muchas lenguas.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。语言模型可以阅读和书写多种语言。",
    "Encore un document, un peu plus long que les autres, pour que les fenêtres diffèrent.",
    "   ",
    "Fin.",
    "Un dernier document en français.",
]
KW = dict(language="fr", kinds=["ffn", "v"], batch_size=2, buffer_docs=2, checkpoint_every=2, min_doc_fraction=0.5,
          progress=False)


def _assert_same_files(one: Path, two: Path, world: int) -> None:
    a, b = NeuronSet.load(one), NeuronSet.load(two)
    assert a.kinds == b.kinds and a.count() > 0
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.kinds)
    assert a.extra.keys() == b.extra.keys() and all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)
    ma, mb = json.loads(one.with_suffix(".json").read_text()), json.loads(two.with_suffix(".json").read_text())
    assert mb.pop("data_parallel")["world_size"] == world
    assert ma == mb  # same indices, counts, empty/failed lists, corpus hash, settings


def test_helpers_without_a_group():
    assert not distributed.is_active() and distributed.rank() == 0 and distributed.world_size() == 1
    assert all(distributed.owns(i) for i in range(5))
    t = {"a": torch.arange(3)}
    assert torch.equal(distributed.all_reduce_sum(t)["a"], t["a"]) and distributed.gather_lists([2, 1]) == [2, 1]
    base = Path("x.checkpoint.safetensors")
    assert det.rank_checkpoint_path(base, 0, 1) == base
    assert det.rank_checkpoint_path(base, 1, 2) == Path("x.rank1of2.checkpoint.safetensors")


# torchrun and mwork are installed beside this interpreter (the venv's bin), on PATH or not
BIN = str(Path(sys.executable).parent)


def test_torchrun_detect_equals_single_process(tmp_path, capsys):
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS) + "\n")

    def args(out: Path) -> list[str]:
        return ["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus), "--out", str(out),
                "--buffer-docs", "2", "--batch-size", "2", "--min-doc-fraction", "0.5", "--quiet"]

    one = tmp_path / "one.safetensors"
    assert cli_main(args(one)) == 0
    two = tmp_path / "two.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run([str(Path(BIN) / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", "mwork", *args(two)],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("fr: ") == 1 and "2 processes" in proc.stdout  # rank 0 alone prints
    _assert_same_files(one, two, 2)
    ns = NeuronSet.load(two)
    # document 2 is empty in rank 1's block 1, document 9 in rank 0's block 4: gathered and sorted
    assert ns.meta["empty_documents"] == [2, 9] and ns.meta["n_docs"] == 10 and ns.meta["n_docs_read"] == 12
    assert not list(tmp_path.glob("*checkpoint*"))


class Killed(BaseException):
    """Not an Exception: detection does not catch it, as with a real crash."""


_RUN: dict = {"rank": 0, "die_after": None, "work": None, "calls": 0}


def _scorer(model, batch, kinds=("ffn", "q", "k", "v")):
    """importance(), counting its calls; rank 1 dies after ``die_after`` calls."""
    _RUN["calls"] += 1
    if _RUN["work"] is not None:
        Path(_RUN["work"], f"calls{_RUN['rank']}").write_text(str(_RUN["calls"]))
    if _RUN["rank"] == 1 and _RUN["die_after"] is not None and _RUN["calls"] > _RUN["die_after"]:
        raise Killed("rank 1 dies")
    return importance(model, batch, kinds=kinds)


def _worker(rank: int, world: int, init_file: str, work: str, die_after: int | None) -> None:
    torch.set_num_threads(1)
    _RUN.update(rank=rank, die_after=die_after, work=work, calls=0)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, tok = mwork.load_model("tiny-random-llama", device="cpu")
        det.detect(model, tok, DOCS, **KW, out=Path(work) / "two.safetensors", scorer=_scorer)
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, name: str, die_after: int | None) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / name), str(tmp_path), die_after), nprocs=2, join=True)


def test_resume_after_one_rank_dies(tmp_path, shared_tiny):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        model, tok = shared_tiny("tiny-random-llama")
        one = tmp_path / "one.safetensors"
        det.detect(model, tok, DOCS, **KW, out=one, scorer=_scorer)
    finally:
        torch.set_num_threads(threads)

    # 6 blocks of 2 documents: rank 1 owns blocks 1, 3, 5 (one batch each) and dies in block 5
    with pytest.raises(Exception, match="rank 1 dies|process 1 terminated"):
        _spawn(tmp_path, "init1", die_after=2)
    two = tmp_path / "two.safetensors"
    ckpt1 = det.rank_checkpoint_path(det.checkpoint_path_for(two), 1, 2)
    assert ckpt1.exists() and not two.exists()
    for f in tmp_path.glob("calls*"):
        f.unlink()

    _spawn(tmp_path, "init2", die_after=None)
    assert (tmp_path / "calls1").read_text() == "1"  # rank 1 scored only block 5 again
    calls0 = tmp_path / "calls0"  # rank 0 resumed from its own checkpoint (all 3 blocks if it had none)
    assert not calls0.exists() or int(calls0.read_text()) <= 3
    _assert_same_files(one, two, 2)
    assert not list(tmp_path.glob("*checkpoint*"))


# one-token documents ("a", "b": tiny-random-llama adds no BOS) score zero for every Q/K channel
SHORT_DOCS = DOCS[:3] + ["a"] + DOCS[3:4] + ["b"] + DOCS[4:6]  # "a" in rank 1's block 1, "b" in rank 0's block 2
SHORT_KW = dict(language="fr", kinds=["ffn", "q"], batch_size=2, buffer_docs=2, min_doc_fraction=0.5, progress=False)


def _short_worker(rank: int, world: int, init_file: str, work: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, tok = mwork.load_model("tiny-random-llama", device="cpu")
        det.detect(model, tok, SHORT_DOCS, **SHORT_KW, out=Path(work) / "two.safetensors")
    finally:
        dist.destroy_process_group()


def test_unscorable_documents_are_gathered_over_ranks(tmp_path, shared_tiny):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = shared_tiny("tiny-random-llama")
        det.detect(model, tok, SHORT_DOCS, **SHORT_KW, out=tmp_path / "one.safetensors")
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_short_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    _assert_same_files(tmp_path / "one.safetensors", tmp_path / "two.safetensors", 2)
    ns = NeuronSet.load(tmp_path / "two.safetensors")
    assert ns.meta["unscorable_documents"] == {"ffn": [], "q": [3, 5]}  # gathered from both ranks
    assert ns.meta["n_docs"] == 7 and ns.meta["across_documents"]["n_docs_per_kind"] == {"ffn": 7, "q": 5}


# ---- data-parallel evaluation -----------------------------------------------------------------

TEXTS = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read many languages.", "",
           "A longer English text, so that it needs more than one window of the short length used here."],
    "fr": ["Le renard brun saute par-dessus le chien.", "Les modèles de langue lisent le français.",
           "Un texte français un peu plus long, pour avoir plusieurs fenêtres de longueur différente."],
    "zh": ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读多种语言。", "中文。"],
}


def test_shard_gather_and_local_without_a_group():
    assert distributed.shard(3) == [0, 1, 2]
    assert distributed.gather_in_order(3, {2: "c", 0: "a", 1: "b"}) == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="no rank computed items \\[1\\]"):
        distributed.gather_in_order(2, {0: 1.0})
    with distributed.local(), distributed.local():
        assert not distributed.is_active() and distributed.rank() == 0
    with distributed.group():  # no WORLD_SIZE: nothing to join
        assert not distributed.is_active()


def _evaluations(model, tok) -> dict:
    """Every sharded evaluation path, with batches whose composition (padding) matters."""
    from mwork.tasks.generation import generate, loglikelihood
    from mwork.tasks.perplexity import perplexity

    texts = [t for ts in TEXTS.values() for t in ts]
    return {
        "ppl": perplexity(model, tok, texts, batch_size=2, max_length=16, per_text=True, progress=False),
        "generate": generate(model, tok, [t for t in texts if t], max_new_tokens=4, stop=["."], batch_size=3,
                             progress=False),
        "loglik": loglikelihood(model, tok, [(t, " yes") for t in texts if t] + [("Question:", " no")],
                                batch_size=2, progress=False),
    }


def _eval_worker(rank: int, world: int, init_file: str, work: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, tok = mwork.load_model("tiny-random-qwen2", device="cpu")
        torch.save(_evaluations(model, tok), Path(work) / f"eval{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharded_evaluations_equal_single_process(tmp_path, shared_tiny):
    """perplexity, greedy generation and log-likelihood: every rank returns the single
    process's values, bit for bit (the per-item values are gathered, not partial sums)."""
    model, tok = shared_tiny("tiny-random-qwen2")
    one = _evaluations(model, tok)
    assert one["ppl"]["n_windows"] > len(one["ppl"]["per_text"])  # some texts need several windows
    mp.spawn(_eval_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        two = torch.load(tmp_path / f"eval{rank}.pt", weights_only=False)
        assert two == one


def _ppl_args(texts: Path) -> list[str]:
    return ["ppl", "--model", "tiny-random-llama", "--texts", str(texts), "--max-length", "12", "--batch-size", "2",
            "--device", "cpu"]


@pytest.mark.slow  # two torchrun launches: about 40 s on 2 cores
def test_torchrun_ppl_and_deactivation_equal_single_process(tmp_path, capsys):
    """``mwork ppl`` and ``mwork experiment deactivation --task ppl`` under torchrun (2 gloo
    processes) print / write exactly what one process does; only rank 0 prints and writes."""
    texts = tmp_path / "texts"
    texts.mkdir()
    for lang, ts in TEXTS.items():
        (texts / f"{lang}.txt").write_text("\n".join(ts) + "\n", encoding="utf-8")
    model, _ = mwork.load_model("tiny-random-gpt2", device="cpu")
    picks = {"en": [1, 2], "fr": [5, 6, 7], "zh": [10, 11]}
    neurons = tmp_path / "sets"
    for lang, idx in picks.items():
        NeuronSet.from_indices(model, {"ffn": {0: idx, 1: idx}, "q": {1: idx}}, {"language": lang}).save(neurons / lang)

    def grid_args(out: Path) -> list[str]:
        return ["experiment", "deactivation", "--model", "tiny-random-gpt2", "--neurons", str(neurons), "--task", "ppl",
                "--langs", "en,fr,zh", "--out", str(out), "--understanding", "1", "--generation", "1", "--seeds",
                "0,1", "--texts-dir", str(texts), "--max-length", "12", "--batch-size", "2", "--device", "cpu"]

    capsys.readouterr()
    assert cli_main(_ppl_args(texts / "en.txt")) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli_main(grid_args(tmp_path / "one")) == 0
    capsys.readouterr()

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}

    def torchrun(args: list[str]) -> str:  # one group per torchrun: two commands cannot share one launch
        proc = subprocess.run([str(Path(BIN) / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python",
                               "mwork", *args], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    lines = [line for line in torchrun(_ppl_args(texts / "en.txt")).splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone prints the JSON
    two = json.loads(lines[0])
    assert two.pop("processes") == 2
    one.pop("seconds"), two.pop("seconds")
    assert two == one

    stdout = torchrun(grid_args(tmp_path / "two"))
    assert stdout.count("# Deactivation") == 1  # rank 0 alone prints the table

    a, b = tmp_path / "one", tmp_path / "two"
    assert (a / "cells.jsonl").read_text() == (b / "cells.jsonl").read_text()  # same cells, same order
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    ra["info"].pop("elapsed_s"), rb["info"].pop("elapsed_s")
    assert ra == rb
    for name in ("table.csv", "table.md", "headline.csv", "settings.json"):
        assert (a / name).read_text() == (b / name).read_text(), name


# ---- models larger than one device (device_map) -----------------------------------------------


def test_parse_device_map(tmp_path):
    from mwork.models.loading import parse_device_map

    assert parse_device_map(None) is None and parse_device_map("auto") == "auto"
    assert parse_device_map('{"": "cpu"}') == {"": "cpu"}
    f = tmp_path / "map.json"
    f.write_text('{"model.layers.0": 0}')
    assert parse_device_map(str(f)) == {"model.layers.0": 0}
    with pytest.raises(ValueError, match="--device-map must be one of"):
        parse_device_map("everywhere")
    with pytest.raises(ValueError, match="either device or device_map"):
        mwork.load_model("tiny-random-llama", device="cpu", device_map="auto")


def test_device_map_ppl_equals_plain(tmp_path, capsys):
    texts = tmp_path / "en.txt"
    texts.write_text("\n".join(TEXTS["en"]) + "\n", encoding="utf-8")
    args = ["ppl", "--model", "tiny-random-llama", "--texts", str(texts), "--max-length", "12"]
    capsys.readouterr()
    assert cli_main([*args, "--device", "cpu"]) == 0
    plain = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert cli_main([*args, "--device-map", '{"": "cpu"}']) == 0
    mapped = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert mapped["ppl"] == plain["ppl"] and mapped["tokens"] == plain["tokens"]
    model, _ = mwork.load_model("tiny-random-llama", device_map={"": "cpu"})
    assert model.hf_device_map == {"": "cpu"}


def _offloaded(tmp_path: Path, alias: str, layer: int):
    """``alias`` with decoder layer ``layer`` offloaded to disk by accelerate: its weights sit on
    the meta device and are brought to the CPU (the execution device) only while it runs."""
    from accelerate import dispatch_model

    model, tok = mwork.load_model(alias, device="cpu")
    adapter = get_adapter(model)
    prefix = next(n for n, m in model.named_modules() if m is adapter.layers)
    device_map = {}
    for name in model.state_dict():  # every tensor's module: the layers by number, the rest as is
        i = name[len(prefix) + 1:].split(".")[0] if name.startswith(prefix + ".") else None
        key = f"{prefix}.{i}" if i is not None else name.rsplit(".", 1)[0]
        device_map[key] = "disk" if i == str(layer) else "cpu"
    return dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path / "offload")), tok


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-gemma3"])
def test_hooks_live_on_the_device_their_module_computes_on(tmp_path, alias, shared_tiny):
    """With an offloaded layer (weights on the meta device) every deactivation index sits on the
    module's execution device, never on the meta device nor wherever the model's first weight
    is; the deactivated outputs equal those of the plain model."""
    from mwork.hooks import module_device as _module_device

    plain, tok = shared_tiny(alias)
    mapped, _ = _offloaded(tmp_path, alias, layer=1)
    assert get_adapter(mapped).mlp_down(1).weight.device.type == "meta"  # really offloaded
    ns = NeuronSet.from_indices(plain, {"ffn": {0: [1, 2], 1: [3, 4]}, "q": {1: [0, 5]}, "v": {1: [2]}}, {})
    batch = tok(["Le renard brun saute.", "Bonjour le monde, encore."], return_tensors="pt", padding=True)
    with torch.no_grad(), mwork.deactivate(mapped, ns) as ctx:
        for site in ctx._sites:
            weight = next(iter(site.module.parameters()))
            want = torch.device("cpu") if weight.device.type == "meta" else weight.device
            assert site.index.device == want == _module_device(site.module)
        got = mapped(**batch).logits
    with torch.no_grad(), mwork.deactivate(plain, ns):
        want = plain(**batch).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
