"""Nothing silently wrong (issue 17): sets applied to other models, two runs into one output,
outputs that cannot be written, broken files and models, each met as a user meets it."""

from __future__ import annotations

import time

import pytest

import mwork
from mwork.cli import main
from mwork.files import output_lock
from mwork.neurons.neuronset import NeuronSet, other_models_allowed

DOCS = ["Le renard brun saute par-dessus le chien.", "Bonjour tout le monde, ceci est un test.",
        "Les modèles de langue lisent le français."]


def run(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err if code else captured.out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("robust")
    (folder / "fr.txt").write_text("\n".join(DOCS) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def llama_set(corpus, tiny_models):
    model, tok = tiny_models.shared("tiny-random-llama")
    ns = mwork.detect(model, tok, DOCS, language="fr", progress=False)
    path = ns.save(corpus / "sets" / "fr")
    return ns, path


@pytest.mark.parametrize("other", ["tiny-random-qwen2", "tiny-random-mistral"])
def test_a_set_of_another_family_is_refused_unless_asked(capsys, corpus, llama_set, other, shared_tiny):
    ns, path = llama_set
    model, _ = shared_tiny(other)
    with pytest.raises(ValueError, match="made for a llama model.*allow_other_model"):
        mwork.deactivate(model, path)
    with other_models_allowed():
        mwork.deactivate(model, path)
    ns.check_compatible(model, allow_other_model=True)
    common = ["--model", other, "--texts", str(corpus / "fr.txt"), "--neurons", str(path)]
    code, err = run(capsys, "ppl", *common)
    assert code == 2 and "--allow-other-model" in err
    code, out = run(capsys, "--allow-other-model", "ppl", *common)
    assert code == 0 and '"ppl"' in out


def test_a_set_of_the_same_family_but_another_model_is_refused(llama_set, shared_tiny):
    ns, _ = llama_set
    model, _ = shared_tiny("tiny-random-llama")
    ns.check_compatible(model)  # its own model: fine
    renamed = NeuronSet(ns.masks, dict(ns.meta, model_id="meta-llama/Llama-2-7b-hf"))
    with pytest.raises(ValueError, match="made for meta-llama/Llama-2-7b-hf.*tiny-random-llama"):
        renamed.check_compatible(model)


def test_a_second_run_into_the_same_output_is_refused_at_once(capsys, corpus, tmp_path):
    out = tmp_path / "sets" / "fr"
    with output_lock(out):
        start = time.time()
        code, err = run(capsys, "detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus",
                        str(corpus / "fr.txt"), "--out", str(out), "--quiet")
        assert code == 2 and "is being written by process" in err and time.time() - start < 10
    code, _ = run(capsys, "detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus",
                  str(corpus / "fr.txt"), "--out", str(out), "--quiet")
    assert code == 0 and (tmp_path / "sets" / "fr.safetensors").is_file()


def test_outputs_that_cannot_be_written_are_refused_before_any_work(capsys, corpus, tmp_path, monkeypatch):
    import mwork.neurons.detect as det

    monkeypatch.setattr(det, "_setup", lambda *a, **k: pytest.fail("the detection started"))
    (tmp_path / "afile").write_text("x")
    common = ["detect", "--model", "tiny-random-llama", "--lang", "fr", "--corpus", str(corpus / "fr.txt"), "--quiet"]
    code, err = run(capsys, *common, "--out", str(tmp_path / "afile" / "fr"))
    assert code == 2 and "is a file, not a folder" in err
    (tmp_path / "x.safetensors").mkdir()
    code, err = run(capsys, *common, "--out", str(tmp_path / "x"))
    assert code == 2 and "it is a folder" in err


def test_broken_sets_models_and_layers_get_a_sentence(capsys, corpus, llama_set, tmp_path, monkeypatch):
    _, path = llama_set
    texts = ["--texts", str(corpus / "fr.txt")]
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"\x00garbage, not a NeuronSet")
    code, err = run(capsys, "ppl", "--model", "tiny-random-llama", *texts, "--neurons", str(garbage))
    assert code == 2 and "bad.safetensors is not a readable NeuronSet" in err
    code, err = run(capsys, "ppl", "--model", "tiny-random-llama", *texts, "--neurons", str(path), "--layers", "99")
    assert code == 2 and "layers [99] out of range" in err
    code, err = run(capsys, "ppl", "--model", str(tmp_path), *texts)
    assert code == 2 and f"no config.json in {tmp_path}" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.time()
    code, err = run(capsys, "ppl", "--model", "nobody/no-such-model-here", *texts)
    assert code == 2 and "offline: no cached copy of nobody/no-such-model-here" in err and time.time() - start < 10


def test_a_neuron_set_is_written_atomically(tmp_path, llama_set, monkeypatch):
    ns, _ = llama_set
    path = ns.save(tmp_path / "fr")
    before = path.read_bytes()
    import safetensors.torch

    def torn(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(safetensors.torch, "save_file", torn)
    with pytest.raises(KeyboardInterrupt):
        NeuronSet(ns.masks, dict(ns.meta, note="newer")).save(tmp_path / "fr")
    assert path.read_bytes() == before
    assert NeuronSet.load(path) == ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fr.json", "fr.safetensors"]



def test_a_whitespace_only_text_is_empty_everywhere(shared_tiny):
    """One rule (mwork.texts.is_empty): detection, perplexity and training all call it empty."""
    from mwork.experiments.training import _encode

    model, tok = shared_tiny("tiny-random-llama")
    texts = [DOCS[0], "   \t ", DOCS[1]]
    ns = mwork.detect(model, tok, texts, language="fr", progress=False)
    assert ns.meta["empty_documents"] == [1]
    ppl = mwork.perplexity(model, tok, texts, progress=False)
    assert ppl["empty_texts"] == [1] and ppl == {**mwork.perplexity(model, tok, [DOCS[0], "", DOCS[1]], progress=False)}
    docs, skipped = _encode(tok, texts, max_length=64)
    assert skipped == [1] and len(docs) == 2
