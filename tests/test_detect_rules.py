"""Detection's rules, config and defects of issue 17: zero scores, unscorable documents,
duplicate kinds, per-kind values, non-selective rules, checkpoints, the cached Q/K kernel."""

from __future__ import annotations

import hashlib
import json
import math
import warnings

import pytest
import torch

from mwork.cli import main as cli_main
from mwork.config import fingerprint
from mwork.neurons import qk_kernel
from mwork.neurons import rules
from mwork.neurons.detect import DetectConfig, checkpoint_path_for, detect, detection_settings
from mwork.neurons.importance import importance
from mwork.neurons.neuronset import NeuronSet
from mwork.neurons.rules import DocumentRule
from mwork.texts import TextSource

DOCS = [
    "Le renard brun saute par-dessus le chien paresseux.",
    "Les modèles de langue lisent le français et beaucoup d'autres langues.",
    "Bonjour le monde, comment allez-vous aujourd'hui ?",
    "Le chat dort sur le canapé pendant que la pluie tombe.",
    "Nous avons mangé une soupe chaude et du pain frais.",
    "La bibliothèque ouvre ses portes à neuf heures du matin.",
]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama", torch.float64)


def _same(a: NeuronSet, b: NeuronSet) -> bool:
    return a == b and a.extra.keys() == b.extra.keys() and all(torch.equal(a.extra[k], b.extra[k]) for k in a.extra)


# ---- the pure rules ------------------------------------------------------------------------


def _direct_select(name: str, value: float, row: list[float]) -> list[bool]:
    """One layer's selection, written out: the positive scores only, by the rule, ties to the lower index."""
    n = len(row)
    if name == "epsilon":
        return [s > value and s > 0 for s in row]
    k = min(int(value), n) if name == "top_k" else min(n, math.ceil(value * n - 1e-9))
    ranked = sorted(range(n), key=lambda i: (-row[i], i))[:k]
    return [i in ranked and row[i] > 0 for i in range(n)]


@pytest.mark.parametrize("name,value", [("top_k", 3), ("top_k", 10), ("top_fraction", 0.5), ("top_fraction", 1.0),
                                        ("epsilon", 0.5), ("epsilon", 0.0), ("epsilon", -1.0)])
def test_zero_scores_are_never_selected(name, value):
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(4, 3, 6, generator=g, dtype=torch.float64)
    scores[scores < 0.4] = 0.0  # many zeros, some ties at zero in every row
    scores[0] = 0.0  # a document that scores zero everywhere
    scores[1, 2, :] = torch.tensor([0.0, 0.7, 0.7, 0.0, 0.0, 0.7], dtype=torch.float64)  # ties among positives
    mask = DocumentRule(name, value).select(scores, "q")
    want = [[_direct_select(name, value, row) for row in doc] for doc in scores.tolist()]
    assert mask.tolist() == want
    assert not mask[0].any() and not mask[scores == 0].any()


def test_scorable_counts_and_kept_masks():
    scores = torch.tensor([[[0.0, 0.0, 0.0]], [[0.0, 2.0, 1.0]], [[3.0, 0.0, 1.0]]])
    counts, ok = rules.count_important(DocumentRule("top_k", 1), "ffn", scores)
    assert ok == [False, True, True] and counts.tolist() == [[1, 1, 0]] and counts.dtype == torch.int32
    assert rules.min_doc_count(1.0, 2) == 2 and rules.min_doc_count(0.5, 3) == 2 and rules.min_doc_count(0.1, 1) == 1
    assert rules.kept(counts, 2, 0.5).tolist() == [[True, True, False]]
    assert not rules.kept(counts, 0, 1.0).any()  # no document scored for this kind: nothing is kept
    masks = rules.kept_masks({"ffn": counts, "q": counts}, {"ffn": 2, "q": 1}, 1.0)
    assert masks["ffn"].tolist() == [[False, False, False]] and masks["q"].tolist() == [[True, True, False]]


def test_rule_values_are_checked():
    with pytest.raises(ValueError, match="unknown kind.*'qq'"):
        DocumentRule("top_fraction", {"ffn": 0.1, "qq": 0.3})
    with pytest.raises(ValueError, match="needs numbers"):
        DocumentRule("epsilon", "0.1")
    assert DocumentRule("epsilon", -1).selects_everything("ffn", 10)
    assert DocumentRule("top_k", 10).selects_everything("ffn", 10)
    assert not DocumentRule("top_k", 9).selects_everything("q", 10)


# ---- the config ----------------------------------------------------------------------------


def test_config_and_keywords_give_the_same_set(llama):
    model, tok = llama
    config = DetectConfig(language="fr", kinds=("ffn", "v"), top_k={"ffn": 9, "v": 4}, batch_size=2, buffer_docs=3)
    a = detect(model, tok, DOCS, config, progress=False)
    b = detect(model, tok, DOCS, language="fr", kinds=["ffn", "v"], top_k={"ffn": 9, "v": 4}, batch_size=2,
               buffer_docs=3, progress=False)
    c = detect(model, tok, DOCS, DetectConfig(language="de", kinds=("ffn", "v"), top_k={"ffn": 9, "v": 4}),
               language="fr", batch_size=2, buffer_docs=3, progress=False)  # keywords replace the config's
    assert _same(a, b) and a.meta == b.meta and _same(a, c) and a.meta == c.meta
    # one record: every recorded setting is in the metadata, and is what the checkpoint is keyed by
    recorded = fingerprint(config)
    assert "checkpoint_every" not in recorded and "rule" not in recorded
    assert all(a.meta[k] == v for k, v in recorded.items())
    settings = detection_settings(model, tok, config)
    assert all(a.meta[k] == v for k, v in settings.items())
    with pytest.raises(TypeError, match="unknown detection setting.*top_frac"):
        detect(model, tok, DOCS, language="fr", top_frac=0.1, progress=False)
    with pytest.raises(TypeError, match="language"):
        detect(model, tok, DOCS, progress=False)


def test_duplicate_kinds_are_refused(llama, tmp_path, capsys):
    model, tok = llama
    with pytest.raises(ValueError, match="kinds lists ffn more than once"):
        detect(model, tok, DOCS, language="fr", kinds=("ffn", "ffn"), progress=False)
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    rc = cli_main(["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus),
                   "--out", str(tmp_path / "x"), "--kinds", "ffn,ffn", "--quiet"])
    assert rc == 2 and "kinds lists ffn more than once" in capsys.readouterr().err
    assert not list(tmp_path.glob("x*"))


def test_per_kind_values_must_name_requested_kinds(llama, tmp_path, capsys):
    model, tok = llama
    with pytest.raises(ValueError, match="unknown kind"):
        detect(model, tok, DOCS, language="fr", top_fraction={"ffn": 0.1, "qq": 0.3}, progress=False)
    with pytest.raises(ValueError, match="value for q, which is not among the kinds"):
        detect(model, tok, DOCS, language="fr", kinds=["ffn"], top_fraction={"ffn": 0.1, "q": 0.3}, progress=False)
    with pytest.raises(ValueError, match="no value for kind 'q'"):
        detect(model, tok, DOCS, language="fr", top_k={"ffn": 3}, progress=False)
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    base = ["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus), "--out",
            str(tmp_path / "x"), "--quiet"]
    with pytest.raises(SystemExit) as exit_:
        cli_main(base + ["--top-fraction", "ffn=0.1,qq=0.3"])
    assert exit_.value.code == 2 and "qq=0.3" in capsys.readouterr().err
    assert cli_main(base + ["--kinds", "ffn", "--top-k", "ffn=3,v=2"]) == 2
    assert "value for v, which is not among the kinds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(base + ["--top-k", "3", "--epsilon", "1"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert cli_main(base + ["--rule", "top-k"]) == 2 and "needs its value" in capsys.readouterr().err
    assert not list(tmp_path.glob("x*"))


def test_help_is_generated_from_the_config(capsys):
    with pytest.raises(SystemExit):
        cli_main(["detect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "%%" not in out and "top 20% per layer" in out
    for flag in ("--lang", "--kinds", "--max-length", "--truncate", "--batch-size", "--buffer-docs", "--epsilon",
                 "--top-fraction", "--top-k", "--min-doc-fraction", "--checkpoint-every", "--reference-compat",
                 "--qk-method", "--rule", "--resume", "--no-resume", "--device-map", "--quiet"):
        assert flag in out
    assert "(default: 512)" in out and "(default: ffn,q,k,v)" in out


# ---- zero scores and documents too short to score a kind -----------------------------------


def test_one_token_document_does_not_shrink_the_q_set(llama, capsys):
    """tiny-random-llama adds no BOS: "a" is one token and every Q/K score is zero in it. It is
    reported, left out of Q/K's documents, and the Q/K sets are those of the other documents."""
    model, tok = llama
    assert len(tok("a")["input_ids"]) == 1
    one = importance(model, {"input_ids": torch.tensor([tok("a")["input_ids"]]), "attention_mask": torch.ones(1, 1)})
    assert not one["q"].any() and not one["k"].any() and one["ffn"].gt(0).all() and one["v"].gt(0).all()
    with_a = detect(model, tok, DOCS[:3] + ["a"] + DOCS[3:], language="fr", progress=False)
    without = detect(model, tok, DOCS, language="fr", progress=False)
    assert "document 3 scores zero for every q neuron" in capsys.readouterr().err
    meta = with_a.meta
    assert meta["unscorable_documents"] == {"ffn": [], "q": [3], "k": [3], "v": []}
    assert meta["n_docs"] == 7 and meta["across_documents"]["n_docs_per_kind"] == {"ffn": 7, "q": 6, "k": 6, "v": 6 + 1}
    assert meta["across_documents"]["min_doc_count_per_kind"] == {"ffn": 7, "q": 6, "k": 6, "v": 7}
    for kind in ("q", "k"):
        assert torch.equal(with_a.masks[kind], without.masks[kind]) and with_a.count(kind) > 0
        assert torch.equal(with_a.extra[f"doc_count.{kind}"], without.extra[f"doc_count.{kind}"])
    for kind in ("ffn", "v"):  # "a" is a real document for FFN and V: kept only if important there too
        dc = with_a.extra[f"doc_count.{kind}"]
        assert torch.equal(with_a.masks[kind], dc == 7)
        assert (with_a.masks[kind] & ~without.masks[kind]).sum() == 0
    # the unscorable document marks no neuron: doc_count.q sums to 6 documents of ceil(0.2 * 64) per layer
    assert with_a.extra["doc_count.q"].sum(dim=1).tolist() == [6 * math.ceil(0.2 * 64)] * 3


def test_only_unscorable_documents(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="no document could be scored for q, k"):
        detect(model, tok, ["a", "b"], language="fr", kinds=["q", "k"], progress=False)
    ns = detect(model, tok, ["a", "b"], language="fr", kinds=["ffn", "q"], progress=False)
    assert ns.count("q") == 0 and ns.count("ffn") > 0
    assert ns.meta["across_documents"]["min_doc_count_per_kind"]["q"] is None
    # one-token windows cannot score Q/K at all: refused before any document is read
    with pytest.raises(ValueError, match="one-token windows"):
        detect(model, tok, iter(()), language="fr", max_length=1, progress=False)
    assert detect(model, tok, DOCS[:2], language="fr", kinds=["ffn"], max_length=1, progress=False).count() > 0


def test_non_positive_epsilon_warns(llama, tmp_path, capsys):
    model, tok = llama
    ns = detect(model, tok, DOCS[:3], language="fr", kinds=["ffn", "v"], epsilon=-1.0, progress=False)
    assert "epsilon -1.0 is not positive for ffn, v" in capsys.readouterr().err
    assert all(ns.extra[f"doc_count.{k}"].eq(3).all() for k in ns.kinds)  # every positive score: every neuron here
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS[:2]) + "\n")
    rc = cli_main(["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus),
                   "--out", str(tmp_path / "eps"), "--epsilon", "-1", "--kinds", "ffn", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0 and "is not positive" in captured.err and captured.out.startswith("fr: ")


def test_cli_detect_matches_the_api(llama, tmp_path, capsys, shared_tiny):
    corpus = tmp_path / "fr.txt"
    corpus.write_text("\n".join(DOCS[:2] + ["a"] + DOCS[2:4]) + "\n")
    out = tmp_path / "cli"
    assert cli_main(["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus),
                     "--out", str(out), "--kinds", "ffn,q", "--top-k", "ffn=7,q=4", "--min-doc-fraction", "0.75", "--batch-size", "2",
                     "--quiet"]) == 0
    line = capsys.readouterr().out
    assert "important in 4/5 documents, q in 3/4" in line
    model, tok = shared_tiny("tiny-random-llama")
    api = detect(model, tok, TextSource(path=corpus), language="fr", kinds=("ffn", "q"),
                 top_k={"ffn": 7, "q": 4}, min_doc_fraction=0.75, batch_size=2, model_id="tiny-random-llama",
                 progress=False)
    cli = NeuronSet.load(out)
    assert _same(cli, api) and cli.meta == json.loads(json.dumps(api.meta))


# ---- checkpoints ----------------------------------------------------------------------------


def test_garbage_checkpoint_is_named(llama, tmp_path):
    model, tok = llama
    out = tmp_path / "fr.safetensors"
    ckpt = checkpoint_path_for(out)
    ckpt.write_bytes(b"\x00garbage, not a safetensors file")
    with pytest.raises(ValueError, match=f"{ckpt.name} is not a readable mwork detection checkpoint.*--no-resume"):
        detect(model, tok, DOCS[:2], language="fr", kinds=["ffn"], out=out, progress=False)
    ns = detect(model, tok, DOCS[:2], language="fr", kinds=["ffn"], out=out, resume=False, progress=False)
    assert ns.count() > 0 and not ckpt.exists()


def test_resume_keeps_unscorable_documents(llama, tmp_path, monkeypatch):
    model, tok = llama
    docs = DOCS[:2] + ["a"] + DOCS[2:5]
    kw = dict(language="fr", kinds=["ffn", "q"], batch_size=2, buffer_docs=2, checkpoint_every=2, progress=False)

    class Killed(BaseException):
        pass

    calls = {"n": 0, "kill_at": -1}

    def dying(model, batch, kinds):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            raise Killed
        return importance(model, batch, kinds=kinds)

    ref = detect(model, tok, docs, scorer=dying, **kw)
    out = tmp_path / "run.safetensors"
    calls.update(n=0, kill_at=3)  # blocks [0, 1], [a, 2] checkpointed; killed in the third
    with pytest.raises(Killed):
        detect(model, tok, docs, out=out, scorer=dying, **kw)
    assert checkpoint_path_for(out).exists()
    calls.update(n=0, kill_at=-1)
    resumed = detect(model, tok, docs, out=out, scorer=dying, **kw)
    assert calls["n"] == 1 and _same(ref, resumed) and ref.meta == resumed.meta
    assert resumed.meta["unscorable_documents"] == ref.meta["unscorable_documents"] == {"ffn": [], "q": [2]}


# ---- the cached Q/K kernel ------------------------------------------------------------------


def _fresh_kernel(monkeypatch) -> None:
    monkeypatch.setattr(qk_kernel, "_lib", None)
    monkeypatch.setattr(qk_kernel, "_lib_error", None)


def test_cached_kernel_is_checked_before_use(tmp_path, monkeypatch):
    if qk_kernel.native_library() is None:
        pytest.skip(f"no native kernel here: {qk_kernel.native_error()}")
    monkeypatch.setenv("MWORK_CACHE", str(tmp_path))
    _fresh_kernel(monkeypatch)
    lib = qk_kernel.native_library()
    assert lib is not None
    (so,) = (tmp_path / "kernels").glob("qk_kernel_*.so")
    record = so.with_name(so.name + ".sha256")
    assert record.read_text().strip() == hashlib.sha256(so.read_bytes()).hexdigest()

    # replaced in the cache folder (a new file: the loaded one stays mapped): not loaded, said, rebuilt
    so.unlink()
    so.write_bytes(b"\x7fELF not the kernel mwork built")
    _fresh_kernel(monkeypatch)
    with pytest.warns(UserWarning, match="does not match the sha256 recorded"):
        assert qk_kernel.native_library() is not None
    assert record.read_text().strip() == hashlib.sha256(so.read_bytes()).hexdigest()
    assert so.read_bytes() != b"\x7fELF not the kernel mwork built"

    # no record (an older cache): rebuilt without a word
    record.unlink()
    _fresh_kernel(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert qk_kernel.native_library() is not None
    assert record.read_text().strip() == hashlib.sha256(so.read_bytes()).hexdigest()
