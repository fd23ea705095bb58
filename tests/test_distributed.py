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


def test_resume_after_one_rank_dies(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        model, tok = mwork.load_model("tiny-random-llama", device="cpu")
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
