"""Language-specific set rules and statistics files, on hand-made NeuronSets."""

from __future__ import annotations

import csv

import pytest
import torch

from mwork.cli import main as cli_main
from mwork.neurons.neuronset import NeuronSet
from mwork.neurons.specific import language_specific
from mwork.neurons.overlap import write_stats

FP = {"family": "llama", "model_type": "llama", "num_layers": 2, "hidden_size": 8, "num_heads": 2, "num_kv_heads": 1,
      "head_dim": 4, "neurons_per_layer": {"ffn": 6, "q": 8, "k": 4, "v": 4}}


def make(lang: str, ffn: list[tuple[int, int]], q: list[tuple[int, int]] = (), model_id: str = "m") -> NeuronSet:
    masks = {k: torch.zeros(2, n, dtype=torch.bool) for k, n in FP["neurons_per_layer"].items()}
    for layer, i in ffn:
        masks["ffn"][layer, i] = True
    for layer, i in q:
        masks["q"][layer, i] = True
    return NeuronSet(masks, {"fingerprint": FP, "language": lang, "model_id": model_id},
                     {"doc_count.ffn": masks["ffn"].int() * 3})


@pytest.fixture
def three():
    en = make("en", [(0, 0), (0, 1), (1, 2)], [(0, 0)])
    fr = make("fr", [(0, 0), (0, 1), (0, 3), (1, 5)], [(0, 0), (1, 7)])
    de = make("de", [(0, 0), (0, 3), (1, 4)], [(0, 0)])
    return en, fr, de


def pairs(ns: NeuronSet, kind: str = "ffn") -> set[tuple[int, int]]:
    return {tuple(x) for x in ns.masks[kind].nonzero().tolist()}


def test_rule_shared(three):
    en, fr, de = three
    s_en, s_fr, s_de = language_specific([en, fr, de])  # default: minus what all three share
    assert pairs(s_en) == {(0, 1), (1, 2)} and pairs(s_fr) == {(0, 1), (0, 3), (1, 5)} and pairs(s_de) == {(0, 3), (1, 4)}
    assert pairs(s_fr, "q") == {(1, 7)} and pairs(s_en, "q") == set()
    assert s_fr.meta["specific"]["rule"] == "shared" and s_fr.meta["specific"]["languages"] == ["en", "fr", "de"]
    assert s_fr.meta["specific"]["base_count"] == fr.count() and s_fr.meta["specific"]["removed"] == 2
    assert s_fr.meta["language"] == "fr" and s_fr.meta["fingerprint"] == FP
    assert torch.equal(s_fr.extra["doc_count.ffn"], fr.extra["doc_count.ffn"])


def test_rule_english_and_others(three):
    en, fr, de = three
    s_en, s_fr, s_de = language_specific([en, fr, de], rule="english")
    assert s_en.count() == 0
    assert pairs(s_fr) == {(0, 3), (1, 5)} and pairs(s_de) == {(0, 3), (1, 4)}
    o_en, o_fr, o_de = language_specific([en, fr, de], rule="others")
    assert pairs(o_en) == {(1, 2)} and pairs(o_fr) == {(1, 5)} and pairs(o_de) == {(1, 4)}
    assert pairs(o_fr, "q") == {(1, 7)}
    with pytest.raises(ValueError, match="exactly one set with language 'en'"):
        language_specific([fr, de], rule="english")
    with pytest.raises(ValueError, match="unknown rule"):
        language_specific([fr, de], rule="mine")
    with pytest.raises(ValueError, match="at least two"):
        language_specific([fr])


def test_sets_of_other_models_are_refused(three):
    en, fr, _ = three
    with pytest.raises(ValueError, match="different models"):
        language_specific([en, make("fr", [(0, 0)], model_id="other")])
    other = NeuronSet({"ffn": torch.zeros(3, 6, dtype=torch.bool)}, {"fingerprint": dict(FP, num_layers=3)})
    with pytest.raises(ValueError, match="different shapes"):
        language_specific([en, other])


def test_stats_files(three, tmp_path):
    en, fr, de = three
    paths = write_stats([en, fr, de], tmp_path / "stats")
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0
    with open(paths["jaccard"]) as f:
        rows = list(csv.DictReader(f))
    # en = {f00, f01, f12, q00}, fr = {f00, f01, f03, f15, q00, q17}: 3 shared of 7
    assert rows[0]["set"] == "en" and float(rows[0]["fr"]) == pytest.approx(3 / 7) and float(rows[1]["fr"]) == 1.0
    with open(paths["summary"]) as f:
        summary = {(r["set"], r["kind"]): r for r in csv.DictReader(f)}
    total = 2 * (6 + 8 + 4 + 4)
    assert int(summary["fr", "all"]["count"]) == 6 and int(summary["fr", "all"]["total"]) == total
    assert float(summary["fr", "all"]["fraction"]) == pytest.approx(6 / total)
    assert float(summary["fr", "ffn"]["fraction"]) == pytest.approx(4 / 12)
    assert float(summary["fr", "ffn"]["fraction_of_model"]) == pytest.approx(4 / total)
    with open(paths["counts_per_layer"]) as f:
        layer = {(r["set"], r["kind"], r["layer"]): int(r["count"]) for r in csv.DictReader(f)}
    assert layer["fr", "ffn", "0"] == 3 and layer["fr", "ffn", "1"] == 1 and layer["de", "q", "1"] == 0
    with open(paths["jaccard_by_kind"]) as f:
        by_kind = {(r["a"], r["b"], r["kind"]): r for r in csv.DictReader(f)}
    assert int(by_kind["en", "de", "ffn"]["intersection"]) == 1 and int(by_kind["en", "de", "ffn"]["union"]) == 5
    assert paths["per_layer_png"].read_bytes()[:4] == b"\x89PNG"


def test_cli_specific_and_stats(three, tmp_path, capsys):
    inputs = []
    for ns in three:
        inputs.append(ns.save(tmp_path / "sets" / f"{ns.meta['language']}.safetensors"))
    out = tmp_path / "specific"
    assert cli_main(["specific", "--out-dir", str(out), *map(str, inputs)]) == 0
    for p, ns in zip(inputs, language_specific(list(three))):
        loaded = NeuronSet.load(out / p.name)
        assert loaded == ns and loaded.meta["specific"]["rule"] == "shared"
        assert (out / p.name).with_suffix(".json").exists()
    assert cli_main(["specific", "--out-dir", str(out), "--rule", "others", *map(str, inputs)]) == 0
    assert NeuronSet.load(out / "fr.safetensors").meta["specific"]["rule"] == "others"
    assert cli_main(["specific", "--out-dir", str(tmp_path / "sets"), *map(str, inputs)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert cli_main(["stats", *map(str, inputs), "--out", str(tmp_path / "st")]) == 0
    assert (tmp_path / "st" / "jaccard.png").exists() and (tmp_path / "st" / "summary.csv").exists()
    assert cli_main(["specific", "--out-dir", str(out), str(tmp_path / "missing.safetensors"), str(inputs[0])]) == 2


def test_save_language_specific_is_what_the_cli_does(three, tmp_path, capsys):
    from mwork.neurons.specific import save_language_specific
    from mwork.neurons.overlap import named_sets

    inputs = [ns.save(tmp_path / "sets" / f"{ns.meta['language']}.safetensors") for ns in three]
    api = save_language_specific(inputs, tmp_path / "api", rule="others")
    assert [p.name for p in api] == ["en.safetensors", "fr.safetensors", "de.safetensors"]
    assert cli_main(["specific", "--out-dir", str(tmp_path / "cli"), "--rule", "others", *map(str, inputs)]) == 0
    for p, want in zip(api, language_specific(list(three), rule="others")):
        got, cli = NeuronSet.load(p), NeuronSet.load(tmp_path / "cli" / p.name)
        assert got == want == cli and got.meta == cli.meta
    # NeuronSets in memory are saved under their language
    mem = save_language_specific(list(three), tmp_path / "mem")
    assert [p.name for p in mem] == ["en.safetensors", "fr.safetensors", "de.safetensors"]
    # refused before anything is written
    with pytest.raises(ValueError, match="overwrite the inputs"):
        save_language_specific(inputs, tmp_path / "sets")
    other = three[1].save(tmp_path / "other" / "en.safetensors")
    with pytest.raises(ValueError, match="names must differ"):
        save_language_specific([inputs[0], other], tmp_path / "clash")
    with pytest.raises(FileNotFoundError, match="no NeuronSet"):
        save_language_specific([inputs[0], tmp_path / "missing"], tmp_path / "missing_out")
    assert not (tmp_path / "clash").exists() and not (tmp_path / "missing_out").exists()
    sets, names = named_sets(inputs)
    assert names == ["en", "fr", "de"] and sets[1] == three[1]
    assert named_sets([inputs[0], other])[1] == ["en", "fr"]  # same file names: the languages instead
