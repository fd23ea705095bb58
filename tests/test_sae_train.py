"""``mwork sae train`` on the tiny random llama: training lowers the reconstruction loss (TopK
and JumpReLU), a resumed training writes the same files as an uninterrupted one, the command
writes a folder ``mwork.load_units`` reads, splicing an identity dictionary changes no loss, and
bad settings are refused before the model loads."""

from __future__ import annotations

import pytest
import torch

import mwork
from mwork.cli import main
from mwork.sae import SaeTrainConfig, TrainSettings, reconstruction_quality, splice_losses, train_codebook
from mwork.sae.activations import capture_rows
from mwork.sae.config import train_dictionaries
from mwork.corpus_pass import PassOptions
from mwork.units import Codebook, Dictionary

M = "tiny-random-llama"
EN = ["The river runs past the old mill and the children play near the water every day.",
      "A quiet morning in the village: bread from the baker, news from the square, rain later."]
FR = ["La rivière passe près du vieux moulin et les enfants jouent au bord de l'eau chaque jour.",
      "Un matin tranquille au village : du pain chez le boulanger, des nouvelles, de la pluie."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sae-corpus")
    specs = []
    for lang, lines in (("en", EN), ("fr", FR)):
        path = folder / f"{lang}.txt"
        path.write_text("\n".join(f"{line} ({i})" for i in range(12) for line in lines) + "\n", encoding="utf-8")
        specs.append(f"{lang}={path}")
    return tuple(specs)


def _config(corpus, out, **changes) -> SaeTrainConfig:
    base = dict(model=M, layers="1", width=32, k=4, steps=12, tokens_per_step=64, tokens=600, eval_tokens=200,
                corpus=corpus, max_length=24, heldout_every=3, checkpoint_every=4, progress=False, out=str(out))
    return SaeTrainConfig(**{**base, **changes})


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_training_lowers_the_reconstruction_loss(shared_tiny, corpus, activation):
    model, tok = shared_tiny(M)
    rows, _ = capture_rows(model, tok, {"en": EN * 6, "fr": FR * 6}, site="layer.out", layers=[1], tokens=800,
                           options=PassOptions("windows", 24), progress=False)
    x = rows[1]
    settings = dict(activation=activation, width=32, k=4, tokens_per_step=128, lr=3e-3, seed=1,
                    l0_coefficient=1e-3)
    start = train_codebook(x, TrainSettings(steps=1, **settings), progress=False).book
    end = train_codebook(x, TrainSettings(steps=150, **settings), progress=False).book
    before, after = reconstruction_quality(start, x), reconstruction_quality(end, x)
    assert after["mse"] < 0.7 * before["mse"] and after["fve"] > before["fve"]
    assert end.activation == activation and after["l0"] <= 32


def test_a_resumed_training_writes_the_same_files(shared_tiny, corpus, tmp_path):
    model, tok = shared_tiny(M)
    whole = _config(corpus, tmp_path / "whole", activation="jumprelu", layers="0,1").run(model, tok)
    cut = _config(corpus, tmp_path / "cut", activation="jumprelu", layers="0,1")
    assert train_dictionaries(cut, model, tok, stop_at=6) is None
    assert any((tmp_path / "cut" / "checkpoints").iterdir())  # the interrupted run left its state
    resumed = cut.run(model, tok)
    for name in ("dictionary.safetensors", "dictionary.json", "quality.csv", "quality.json"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not (tmp_path / "cut" / "checkpoints").exists()
    assert [r["layer"] for r in resumed.data] == [0, 1] and whole.data == resumed.data

    # a checkpoint is keyed by content: another setting in the same folder does not resume from it
    assert train_dictionaries(_config(corpus, tmp_path / "other", seed=1), model, tok, stop_at=6) is None
    changed = _config(corpus, tmp_path / "other", seed=2).run(model, tok)
    fresh = _config(corpus, tmp_path / "fresh", seed=2).run(model, tok)
    assert changed.data == fresh.data
    assert (tmp_path / "other" / "dictionary.safetensors").read_bytes() == (
        tmp_path / "fresh" / "dictionary.safetensors").read_bytes()


def test_the_command_writes_a_folder_load_units_reads(corpus, tmp_path, capsys):
    out = tmp_path / "sae"
    args = ["sae", "train", "--model", M, "--layers", "1", "--width", "16", "--k", "2", "--steps", "3",
            "--tokens-per-step", "32", "--tokens", "300", "--eval-tokens", "100", "--max-length", "24",
            "--heldout-every", "3", "--quiet", "--out", str(out)]
    for spec in corpus:
        args += ["--corpus", spec]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "layer 1 layer.out: FVE" in printed and "recovered" in printed
    units = mwork.load_units(out)
    assert isinstance(units, Dictionary) and units.count() == 16 and sorted(units.books) == [1]
    header = (out / "quality.csv").read_text().splitlines()[0].split(",")
    assert {"fve", "l0", "dead", "loss_clean", "loss_spliced", "loss_zero", "loss_recovered"} <= set(header)
    assert main(["sae", "train", "--model", M, "--layers", "1", "--width", "8", "--k", "9", "--out", str(tmp_path / "x")]) == 2
    assert "k (9) must not exceed the width (8)" in capsys.readouterr().err


def test_an_identity_dictionary_spliced_in_changes_no_loss(shared_tiny):
    model, tok = shared_tiny(M)
    d = model.config.hidden_size
    # the identity: relu((x - b_dec) I) I + b_dec = x while x > b_dec everywhere
    eye = Codebook(torch.eye(d), torch.zeros(d), torch.eye(d), torch.full((d,), -50.0))
    windows = [tok(t)["input_ids"] for t in EN + FR]
    losses = splice_losses(model, tok, windows, "layer.out", {1: eye})[1]
    assert losses["loss_spliced"] == pytest.approx(losses["loss_clean"], abs=1e-5)
    assert losses["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert losses["loss_zero"] != pytest.approx(losses["loss_clean"], abs=1e-3)


@pytest.mark.parametrize("changes, message", [
    ({"activation": "gated"}, "activation must be one of"), ({"width": 0}, "width must be at least 1"),
    ({"layers": "x"}, "bad layer spec"), ({"site": "ffn.in"}, "site must be one of"),
    ({"heldout_every": 1}, "heldout_every must be at least 2"), ({"lr": float("nan")}, "lr must be a positive"),
    ({"k": 40}, r"k \(40\) must not exceed the width \(32\)"), ({"corpus": ("en=no/such/file.txt",)}, "no text file"),
])
def test_bad_settings_are_refused_before_the_model_loads(corpus, tmp_path, changes, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        rest = {k: v for k, v in changes.items() if k != "corpus"}
        _config(changes.get("corpus", corpus), tmp_path, model="no-such-model", **rest).run()
