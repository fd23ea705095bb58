"""Detection over a corpus: rules, windows, empty/failing documents, determinism, resume, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mwork
from mwork.cli import main as cli_main
from mwork.fingerprints import fingerprint_texts as fingerprint_documents
from mwork.neurons import detect as det
from mwork.texts import TextSource as Corpus
from mwork.neurons.detect import DocumentRule, detect
from mwork.neurons.importance import importance
from mwork.neurons.neuronset import NeuronSet

DOCS = [
    "Le renard brun saute par-dessus le chien paresseux.",
    "Les modèles de langue lisent le français et beaucoup d'autres langues.",
    "Bonjour le monde.",
    "El rápido zorro marrón salta sobre el perro perezoso. Los modelos leen muchas lenguas.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "敏捷的棕色狐狸跳过了懒狗。语言模型可以阅读和书写多种语言。",
]


@pytest.fixture(scope="module")
def llama64(tiny_models):
    return tiny_models.shared("tiny-random-llama", torch.float64)


def _same(a: NeuronSet, b: NeuronSet) -> bool:
    return a == b and a.extra.keys() == b.extra.keys() and all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-gemma3", "tiny-random-gpt2", "tiny-random-bloom"])
def test_detect_end_to_end(alias, shared_tiny):
    model, tok = shared_tiny(alias)
    docs = DOCS[:5]
    ns = detect(model, tok, docs, language="xx", batch_size=3, progress=False)
    counts = mwork.get_adapter(model).neuron_counts()
    n = len(docs)
    assert ns.meta["n_docs"] == n and ns.meta["empty_documents"] == [] and ns.meta["failed_documents"] == []
    assert ns.meta["corpus_sha256"] == fingerprint_documents(docs)
    assert ns.meta["document_rule"] == {"rule": "top_fraction", "top_fraction": det.DEFAULT_TOP_FRACTION}
    for kind in ("ffn", "q", "k", "v"):
        dc = ns.extra[f"doc_count.{kind}"]
        assert dc.shape == (3, counts[kind])
        # top fraction per layer and kind: every document marks exactly ceil(F * n) neurons per layer
        k = math.ceil(det.DEFAULT_TOP_FRACTION * counts[kind])
        assert dc.sum(dim=1).tolist() == [n * k] * 3
        assert torch.equal(ns.masks[kind], dc == n)  # important in all documents
    assert ns.count() < ns.total_neurons()


def test_min_doc_fraction_and_rules(llama64):
    model, tok = llama64
    kw = dict(language="fr", kinds=["ffn", "v"], progress=False)  # the rules do not depend on the kind
    full = detect(model, tok, DOCS[:5], **kw)
    half = detect(model, tok, DOCS[:5], min_doc_fraction=0.5, **kw)
    need = math.ceil(0.5 * 5)
    assert half.meta["across_documents"]["min_doc_count"] == need
    for kind in full.kinds:
        assert torch.equal(half.extra[f"doc_count.{kind}"], full.extra[f"doc_count.{kind}"])
        assert torch.equal(half.masks[kind], full.extra[f"doc_count.{kind}"] >= need)
    assert (full - half).count() == 0 and half.count() > full.count()
    topk = detect(model, tok, DOCS[:2], top_k={"ffn": 5, "v": 200}, **kw)
    assert topk.extra["doc_count.ffn"].sum(dim=1).tolist() == [10] * 3
    assert topk.extra["doc_count.v"].all()  # top-k capped at the layer size: every neuron
    eps = detect(model, tok, DOCS[:2], epsilon=1e30, **kw)
    assert eps.count() == 0 and eps.meta["document_rule"] == {"rule": "epsilon", "epsilon": 1e30}
    with pytest.raises(ValueError, match="at most one"):
        detect(model, tok, DOCS, top_k=3, epsilon=1.0, **kw)
    with pytest.raises(ValueError, match="fraction"):
        DocumentRule("top_fraction", 1.5)


def test_rule_ties_go_to_lower_index():
    scores = torch.tensor([[[1.0, 3.0, 3.0, 3.0, 0.0]]])
    assert DocumentRule("top_k", 2).select(scores, "ffn").tolist() == [[[False, True, True, False, False]]]
    assert DocumentRule("top_fraction", 0.4).select(scores, "ffn").tolist() == [[[False, True, True, False, False]]]
    assert DocumentRule("epsilon", 1.0).select(scores, "ffn").tolist() == [[[False, True, True, True, False]]]


@pytest.mark.parametrize("alias", ["tiny-random-llama", "tiny-random-gemma3"])
def test_deterministic_and_batch_size_independent(alias, shared_tiny):
    # gemma3 (sliding window 8) gives NaN for padded batches in float64 eager attention:
    # detection then scores those windows alone, with the same result
    model, tok = shared_tiny(alias, torch.float64)
    docs = DOCS[2:6]
    a = detect(model, tok, docs, language="fr", batch_size=4, buffer_docs=3, progress=False)
    b = detect(model, tok, docs, language="fr", batch_size=4, buffer_docs=3, progress=False)
    c = detect(model, tok, docs, language="fr", batch_size=1, progress=False)
    assert _same(a, b) and a.meta == b.meta
    assert _same(a, c)  # other batching: other padding; float64 rounding never flips a neuron here


def test_long_documents_are_windowed(llama64):
    """A long document is scored in windows combined as sqrt(sum of squares): check against
    scoring each window by hand, with the epsilon rule at the median score."""
    model, tok = llama64
    text = " ".join(DOCS[:4])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    max_length = 16
    assert len(ids) > 3 * max_length
    seen = []

    def spy(model, batch, kinds):
        seen.append(batch["attention_mask"].sum(dim=1).tolist())
        return importance(model, batch, kinds=kinds)

    windows = [ids[s:s + max_length] for s in range(0, len(ids), max_length)]
    sq = None
    for w in windows:
        s = importance(model, {"input_ids": torch.tensor([w]), "attention_mask": torch.ones(1, len(w), dtype=torch.long)})
        sq = {k: v[0].double() ** 2 for k, v in s.items()} if sq is None else {k: sq[k] + s[k][0].double() ** 2 for k in sq}
    combined = {k: v.sqrt() for k, v in sq.items()}
    eps = float(combined["ffn"].median())
    ns = detect(model, tok, [text], language="fr", kinds=["ffn"], epsilon=eps, max_length=max_length,
                batch_size=1, scorer=spy, progress=False)
    assert sorted(n for batch in seen for n in batch) == sorted(len(w) for w in windows)
    assert torch.equal(ns.masks["ffn"], combined["ffn"] > eps)
    assert 0 < ns.count() < ns.masks["ffn"].numel()
    assert ns.meta["max_length"] == max_length and "window" in ns.meta["window_rule"]
    seen.clear()
    cut = detect(model, tok, [text], language="fr", kinds=["ffn"], max_length=max_length, truncate=True,
                 scorer=spy, progress=False)
    assert seen == [[max_length]] and cut.meta["truncate"] and "first max_length" in cut.meta["window_rule"]


def test_empty_and_failing_documents_are_reported(llama64, capsys):
    model, tok = llama64
    poison = "§§ poison"
    poison_ids = set(tok(poison, add_special_tokens=False)["input_ids"]) - set(
        i for d in DOCS for i in tok(d, add_special_tokens=False)["input_ids"])
    assert poison_ids

    def scorer(model, batch, kinds):
        if any(int(i) in poison_ids for i in batch["input_ids"][batch["attention_mask"].bool()]):
            raise RuntimeError("poisoned batch")
        return importance(model, batch, kinds=kinds)

    corpus = [DOCS[0], "", DOCS[1], "   ", poison, DOCS[2], DOCS[3]]
    ns = detect(model, tok, corpus, language="fr", batch_size=4, scorer=scorer, progress=False)
    assert ns.meta["empty_documents"] == [1, 3]
    assert [f["index"] for f in ns.meta["failed_documents"]] == [4]
    assert "RuntimeError: poisoned batch" in ns.meta["failed_documents"][0]["error"]
    assert ns.meta["n_docs"] == 4 and ns.meta["n_docs_read"] == 7
    assert "4 successfully scored" in ns.meta["across_documents"]["counted_over"]
    err = capsys.readouterr().err
    assert "document 1 is empty" in err and "document 4 failed" in err
    # the good documents count exactly as if they were alone
    alone = detect(model, tok, [DOCS[0], DOCS[1], DOCS[2], DOCS[3]], language="fr", batch_size=1, progress=False)
    assert _same(ns, alone)
    with pytest.raises(ValueError, match="no document could be scored"):
        detect(model, tok, ["", " "], language="fr", progress=False)


class Killed(BaseException):
    """Stands for a kill: not an Exception, so detection does not treat it as a failed document."""


def test_resume_after_kill_is_bit_identical(llama64, tmp_path, monkeypatch):
    model, tok = llama64
    docs = DOCS[:6]
    kw = dict(language="fr", kinds=["ffn", "q"], batch_size=2, buffer_docs=2, checkpoint_every=2, progress=False)
    ref = tmp_path / "ref.safetensors"
    detect(model, tok, docs, out=ref, **kw)
    calls = {"n": 0, "kill_at": 3}

    def dying(model, batch, kinds=("ffn", "q", "k", "v")):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise Killed
        return importance(model, batch, kinds=kinds)

    monkeypatch.setattr(mwork.neurons.importance, "importance", dying)
    out = tmp_path / "run.safetensors"
    ckpt = det.checkpoint_path_for(out)
    with pytest.raises(Killed):  # killed while scoring the third block (of 3), after two checkpoints
        detect(model, tok, docs, out=out, **kw)
    assert ckpt.exists() and not out.exists()
    # a checkpoint made with other settings, or for other documents, is refused with a clear error
    with pytest.raises(ValueError, match="other settings.*batch_size"):
        detect(model, tok, docs, out=out, **{**kw, "batch_size": 3})
    with pytest.raises(ValueError, match="differ"):
        detect(model, tok, docs[::-1], out=out, **kw)
    calls.update(n=0, kill_at=-1)
    detect(model, tok, docs, out=out, **kw)  # rerun with the same arguments
    assert calls["n"] == 1  # only the block after the last checkpoint was scored
    assert not ckpt.exists()
    assert out.read_bytes() == ref.read_bytes()
    assert out.with_suffix(".json").read_bytes() == ref.with_suffix(".json").read_bytes()
    # --no-resume starts over
    calls.update(n=0, kill_at=2)
    with pytest.raises(Killed):
        detect(model, tok, docs, out=out, **kw)
    calls.update(n=0, kill_at=-1)
    detect(model, tok, docs, out=out, resume=False, **kw)
    assert calls["n"] == 3 and out.read_bytes() == ref.read_bytes()


def test_corpus_formats(tmp_path, monkeypatch):
    text = tmp_path / "docs.txt"
    text.write_bytes("\ufeffone\r\n\ntwo\rstill two\nthree".encode())
    assert list(Corpus(text)) == ["one", "", "two\rstill two", "three"]
    assert list(Corpus(text, max_docs=2)) == ["one", ""]
    jl = tmp_path / "docs.jsonl"
    jl.write_text('{"body": "a"}\n\n{"body": null}\n{"body": "b"}\n')
    assert list(Corpus(jl, text_field="body")) == ["a", "", "", "b"]
    with pytest.raises(ValueError, match="no text field 'text'.*body"):
        list(Corpus(jl))
    squad = tmp_path / "x.json"
    squad.write_text(json.dumps({"data": [{"paragraphs": [{"context": f"a{i}{j}"} for j in range(2)]} for i in range(3)]}))
    assert list(Corpus(squad, articles=(1, 3))) == ["a10", "a11", "a20", "a21"]
    with pytest.raises(FileNotFoundError):
        Corpus(tmp_path / "missing.txt")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"content": "x"}\n{"content": "y"}\n')
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert list(Corpus(hf_dataset=str(folder), text_field="content")) == ["x", "y"]


def test_cli_detect_contract(tmp_path, capsys):
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS[:3] + ["", "Encore un document."]) + "\n")
    out = tmp_path / "fr.safetensors"
    rc = cli_main(["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus), "--out", str(out),
                   "--max-docs", "4", "--min-doc-fraction", "0.5", "--quiet"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("fr: ") and "\n" not in line
    ns = NeuronSet.load(out)
    assert ns.count() > 0 and 0 < ns.fraction() < 1
    assert ns.indices("ffn", 0).dtype == torch.long
    assert ns.meta["n_docs"] == 3 and ns.meta["empty_documents"] == [3] and ns.meta["n_docs_read"] == 4
    assert ns.meta["corpus"]["max_docs"] == 4 and ns.meta["model_id"] == "tiny-random-llama"
    rc = cli_main(["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(tmp_path / "no.txt"),
                   "--out", str(out)])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_detect_job_is_what_the_cli_does(tmp_path, capsys, shared_tiny):
    """``DetectJob(...).run()`` (the model given or loaded) writes the files ``mwork detect`` writes;
    ``write()`` names them, ``write(other)`` saves the set again; bad input fails before any model."""
    from mwork.neurons.detect_config import DetectConfig, DetectOptions
    from mwork.neurons.detect_job import DetectJob

    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS[:4]) + "\n")
    assert cli_main(["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus), "--out",
                     str(tmp_path / "cli" / "fr"), "--max-docs", "3", "--kinds", "ffn,v", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    job = DetectJob(model="tiny-random-llama", lang="fr", corpus=(str(corpus),), out=str(tmp_path / "api" / "fr"),
                    max_docs=3, settings={"kinds": ("ffn", "v")}, progress=False)
    result = job.run(*shared_tiny("tiny-random-llama"))
    files = result.write()
    assert files == {"set": tmp_path / "api" / "fr.safetensors", "json": tmp_path / "api" / "fr.json"}
    for name in ("fr.safetensors", "fr.json"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert result.lines()[0].split(" -> ")[0] == printed.split(" -> ")[0]
    again = result.write(tmp_path / "copy" / "fr")
    assert NeuronSet.load(again["set"]) == result.neurons
    # the settings as a config (its language replaced by lang) give the same set
    same = DetectJob(model="tiny-random-llama", lang="fr", corpus=(str(corpus),), out=str(tmp_path / "cfg" / "fr"),
                     max_docs=3, settings=DetectConfig(language="xx", kinds=("ffn", "v")), progress=False)
    assert same.run(*shared_tiny("tiny-random-llama")).neurons == result.neurons
    for bad, message in (({"out": None}, "needs --out"), ({"lang": None}, "needs --lang"),
                         ({"settings": {"top_rate": 0.1}}, "--lape-top-rate does not apply to --method plnd"),
                         ({"corpus": (str(tmp_path / "no.txt"),)}, "does not exist"),
                         ({"out_dir": str(tmp_path)}, "--out-dir is for the methods")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            dataclasses.replace(job, **bad).check()
    with pytest.raises(TypeError, match="unknown detection setting"):
        dataclasses.replace(job, settings={"top_frac": 0.1}).check()
    # how a run goes, as one object or keywords
    model, tok = shared_tiny("tiny-random-llama")
    a = detect(model, tok, DOCS[:2], language="fr", kinds=["ffn"], options=DetectOptions(progress=False))
    assert a == detect(model, tok, DOCS[:2], language="fr", kinds=["ffn"], progress=False)


def test_cli_detect_with_a_device_map_gives_the_same_set(tmp_path):
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS[:3]) + "\n")
    outs = [tmp_path / "plain.safetensors", tmp_path / "mapped.safetensors"]
    for out, extra in zip(outs, ([], ["--device-map", '{"": "cpu"}'])):
        assert cli_main(["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus),
                         "--out", str(out), "--quiet", *extra]) == 0
    plain, mapped = (NeuronSet.load(o) for o in outs)
    assert plain.count() > 0 and all(torch.equal(plain.masks[k], mapped.masks[k]) for k in plain.masks)


def test_cli_detect_resumes_after_sigkill(tmp_path):
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS * 2) + "\n")

    def args(out: Path) -> list[str]:
        return ["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus), "--out", str(out),
                "--checkpoint-every", "4", "--buffer-docs", "4", "--batch-size", "4", "--kinds", "ffn,v", "--quiet"]

    out = tmp_path / "fr.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "mwork.cli", *args(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = det.checkpoint_path_for(out)
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not out.exists(), "the run should have been killed after its first checkpoint"
    assert cli_main(args(out)) == 0
    assert not ckpt.exists()
    fresh = tmp_path / "fresh.safetensors"
    assert cli_main(args(fresh)) == 0
    assert out.read_bytes() == fresh.read_bytes()
    assert out.with_suffix(".json").read_bytes() == fresh.with_suffix(".json").read_bytes()


def test_reference_compat_is_labelled(llama64, capsys):
    model, tok = llama64
    ns = detect(model, tok, DOCS[:2], language="fr", reference_compat=True, progress=False)
    assert ns.meta["reference_compat"] and "REFERENCE-COMPAT" in ns.meta["label"]
    assert ns.meta["document_rule"] == {"rule": "top_k", "top_k": det.REFERENCE_TOP_K}
    assert "reference" in ns.meta["scores"]
    # the tiny model's layers are smaller than 12000 / 2000: the cap selects every neuron
    assert all(ns.extra[f"doc_count.{k}"].eq(2).all() for k in ns.kinds)
    assert "at least the layer size" in capsys.readouterr().err
    default = detect(model, tok, DOCS[:2], language="fr", kinds=["ffn"], progress=False)
    assert not default.meta["reference_compat"] and "label" not in default.meta


def test_approximate_qk_method(tmp_path):
    model, tok = mwork.load_model("tiny-random-qwen3", dtype=torch.float64)

    def approx(m, batch, kinds):
        return importance(m, batch, kinds=kinds, method="approx")

    ns = detect(model, tok, DOCS, language="fr", qk_method="approx", progress=False)
    want = detect(model, tok, DOCS, language="fr", scorer=approx, progress=False)
    exact = detect(model, tok, DOCS, language="fr", progress=False)
    assert all(torch.equal(ns.masks[k], want.masks[k]) for k in ns.masks)
    assert "first-order" in ns.meta["scores"] and "first-order" not in exact.meta["scores"]
    assert torch.equal(ns.masks["ffn"], exact.masks["ffn"])  # only Q/K scores differ
    with pytest.raises(ValueError, match="qk_method"):
        detect(model, tok, DOCS, language="fr", qk_method="fast", progress=False)
    with pytest.raises(ValueError, match="reference-compat"):
        detect(model, tok, DOCS, language="fr", qk_method="approx", reference_compat=True, progress=False)
