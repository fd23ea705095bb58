"""Language vectors (DiffMean): against a brute-force mean over hidden states captured one document
at a time; the job's files read back with ``mwork.load_units`` and steer; bad input refused before
any model is loaded; the CLI is the config."""

from __future__ import annotations

import pytest
import torch

import mwork
from mwork.cli import main
from mwork.neurons.windows import Windowing
from mwork.vectors import VectorsConfig, language_vectors

DOCS = {
    "en": ["The cat sleeps on the warm mat.", "Rivers run to the sea.", "A short one."],
    "fr": ["Le chat dort sur le tapis chaud.", "Les rivieres vont a la mer."],
    "de": ["Die Katze schlaeft auf der Matte.", "Fluesse fliessen ins Meer.", "Ein kurzer Satz hier."],
}


def _brute_means(model, tok, docs, layers):
    """Per layer, the sum and count of layer.out over each document's text tokens, run alone."""
    win = Windowing.for_tokenizer(tok, 64, False)
    total = torch.zeros(len(layers), model.config.hidden_size, dtype=torch.float64)
    n = 0
    for text in docs:
        ids = list(win.prefix) + tok(text, add_special_tokens=False)["input_ids"] + list(win.suffix)
        with mwork.capture(model, "layer.out", layers=layers) as cap, torch.no_grad():
            model(input_ids=torch.tensor([ids]))
        keep = slice(len(win.prefix), len(ids) - len(win.suffix))
        for j, layer in enumerate(layers):
            total[j] += cap["layer.out", layer][0, keep].double().sum(0)
        n += keep.stop - keep.start
    return total, n


def test_diffmean_equals_a_brute_force_mean(shared_tiny):
    model, tok = shared_tiny("tiny-random-llama")
    layers = [0, 1]
    vectors, counts = language_vectors(model, tok, DOCS, layers=layers, max_length=64, batch_size=2, progress=False)
    sums = {lang: _brute_means(model, tok, docs, layers) for lang, docs in DOCS.items()}
    assert counts == {lang: n for lang, (_, n) in sums.items()}
    for lang in DOCS:
        mine = sums[lang][0] / sums[lang][1]
        rest = sum(sums[o][0] for o in DOCS if o != lang) / sum(sums[o][1] for o in DOCS if o != lang)
        want = mine - rest
        got = vectors[lang]
        assert got.layers.tolist() == layers and got.names == [lang, lang]
        torch.testing.assert_close(got.write.double(), want, rtol=1e-4, atol=1e-5)
        r = got.read.double()
        torch.testing.assert_close((r * got.write.double()).sum(-1), torch.ones(2, dtype=torch.float64), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(got.stats["mean"], (mine * r).sum(-1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got.stats["mean_other"], (rest * r).sum(-1), rtol=1e-4, atol=1e-5)
        # the language's coordinate lies one unit above the others': v = mine - rest, read = v / |v|^2
        torch.testing.assert_close(got.stats["mean"] - got.stats["mean_other"], torch.ones(2, dtype=torch.float64),
                                   rtol=1e-4, atol=1e-4)


def test_the_job_writes_sets_that_load_and_steer(shared_tiny, tmp_path):
    model, tok = shared_tiny("tiny-random-llama")
    for lang, docs in DOCS.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(docs) + "\n")
    config = VectorsConfig(corpus=tuple(f"{lang}={tmp_path / lang}.txt" for lang in DOCS), layers="1",
                           max_length=64, progress=False)
    result = config.run(model, tok)
    files = result.write(tmp_path / "out")
    assert {"en", "fr", "de", "csv", "json", "png"} <= set(files)
    fr = mwork.load_units(tmp_path / "out" / "fr.safetensors", model)
    assert isinstance(fr, mwork.Directions) and fr.layers.tolist() == [1]
    torch.testing.assert_close(fr.write, result.vectors["fr"].write)
    header = (tmp_path / "out" / "vectors.csv").read_text().splitlines()[0]
    assert header == "language,layer,norm,mean,mean_other,cos_en,cos_fr,cos_de"
    batch = tok(["Hello there"], return_tensors="pt")
    with torch.no_grad():
        clean = model(**batch).logits
        with mwork.steer(model, fr, "add", 2.0, off=mwork.load_units(tmp_path / "out" / "en.safetensors")):
            steered = model(**batch).logits
    assert not torch.equal(clean, steered)


def test_bad_input_is_refused_before_the_model_loads(monkeypatch, tmp_path):
    monkeypatch.setattr(VectorsConfig, "load", lambda self: pytest.fail("the model was loaded"))
    (tmp_path / "en.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="at least 2 languages"):
        VectorsConfig(corpus=(f"en={tmp_path}/en.txt",)).run()
    with pytest.raises(ValueError, match="twice"):
        VectorsConfig(corpus=(f"en={tmp_path}/en.txt", f"en={tmp_path}/en.txt")).run()
    with pytest.raises(ValueError, match="layer spec"):
        VectorsConfig(corpus=(f"en={tmp_path}/en.txt", f"fr={tmp_path}/en.txt"), layers="x").run()
    with pytest.raises(ValueError):
        VectorsConfig(corpus=(f"../en={tmp_path}/en.txt", f"fr={tmp_path}/en.txt")).run()


def test_the_command_is_the_config(tmp_path, capsys):
    for lang, docs in DOCS.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(docs) + "\n")
    code = main(["vectors", "--model", "tiny-random-llama", "--corpus", f"en={tmp_path}/en.txt", "--corpus",
                 f"de={tmp_path}/de.txt", "--layers", "0-1", "--max-length", "64", "--no-progress",
                 "--out", str(tmp_path / "v")])
    assert code == 0
    assert "vectors.csv" in capsys.readouterr().out
    de = mwork.load_units(tmp_path / "v" / "de")
    assert de.count() == 2 and de.meta["others"] == ["en"]
