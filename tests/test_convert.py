"""Interchange (mwork.neurons.convert, ``mwork convert``): LAPE neuron files and the PLND
reference code's neuron dictionaries, to and from NeuronSets, checked against the model."""

from __future__ import annotations

import datetime
import json

import pytest
import torch

from mwork.cli import main as cli_main
from mwork.neurons.convert import (
    export_lape, export_reference, import_lape, import_reference, parse_reference_line, reference_text, side_file,
)
from mwork.neurons.neuronset import NeuronSet


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.shared("tiny-random-llama")  # 3 layers, FFN 96, 4 query heads x 16, 2 KV heads


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models.shared("tiny-random-gpt2")  # 3 layers, FFN 96, no GQA


def random_set(model, seed, lang, kinds=("ffn",), p=0.1):
    gen = torch.Generator().manual_seed(seed)
    ns = NeuronSet.empty_for(model, {"language": lang, "name": lang, "model_id": "tiny"})
    for k in kinds:
        ns.masks[k] = torch.rand(ns.masks[k].shape, generator=gen) < p
    return ns


def test_lape_round_trip_is_bit_identical(llama, tmp_path):
    model, _ = llama
    sets = [random_set(model, s, lang) for s, lang in enumerate(("en", "zh", "fr"))]
    sets[2].masks["ffn"][1] = False  # an empty layer
    first = export_lape(sets, tmp_path / "a.pth")
    raw = torch.load(first, weights_only=True)
    assert len(raw) == 3 and len(raw[0]) == 3 and raw[2][1].dtype == torch.int64 and raw[2][1].numel() == 0
    assert raw[1][2].tolist() == sets[1].indices("ffn", 2).tolist()
    back = import_lape(first, model, ["en", "zh", "fr"])
    assert list(back) == ["en", "zh", "fr"]
    for ns, orig in zip(back.values(), sets):
        assert torch.equal(ns.masks["ffn"], orig.masks["ffn"]) and ns.count("q") == 0
        assert ns.meta["method"] == "lape" and ns.meta["imported_from"]["format"] == "lape"
    again = export_lape(list(back.values()), tmp_path / "b.pth")
    assert again.read_bytes() == first.read_bytes()
    record = json.loads(side_file(first).read_text())
    assert record["languages"] == ["en", "zh", "fr"] and record["fingerprint"]["num_layers"] == 3


def test_an_authors_file_round_trips(llama, tmp_path):
    model, _ = llama
    # as identify.py writes it: per language, per layer, torch.tensor(sorted list).long(), saved to a path
    data = [[torch.tensor([3, 17, 40]).long(), torch.tensor([]).long(), torch.tensor([95]).long()],
            [torch.tensor([0]).long(), torch.tensor([5, 6]).long(), torch.tensor([]).long()]]
    path = tmp_path / "llama-7b"
    torch.save(data, path)
    sets = import_lape(path, model, ["en", "zh"])
    assert sets["en"].indices("ffn", 0).tolist() == [3, 17, 40] and sets["zh"].count() == 3
    out = export_lape(list(sets.values()), tmp_path / "again.pth")
    again = torch.load(out, weights_only=True)
    for a, b in zip(data, again):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and torch.equal(x, y)


def test_lape_files_for_another_model_are_refused(llama, gpt2, tmp_path):
    model, _ = llama
    other, _ = gpt2
    path = export_lape([random_set(model, 0, "en"), random_set(model, 1, "fr")], tmp_path / "x.pth")
    with pytest.raises(ValueError, match="holds the neurons of 2 languages, but 3 languages were named"):
        import_lape(path, model, ["en", "fr", "zh"])
    with pytest.raises(ValueError, match="exported with the languages en,fr"):
        import_lape(path, model, ["fr", "en"])
    with pytest.raises(ValueError, match="exported for a model of another shape"):
        import_lape(path, other, ["en", "fr"])
    side_file(path).unlink()  # without the record: the indices and layers are still checked
    torch.save([[torch.tensor([1])] * 4], tmp_path / "four.pth")
    with pytest.raises(ValueError, match="made for a model with 4 layers; this model has 3"):
        import_lape(tmp_path / "four.pth", model, ["en"])
    torch.save([[torch.tensor([1]), torch.tensor([96]), torch.tensor([2])]], tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="lists FFN neuron 96, but this model's FFN layers have 96 neurons"):
        import_lape(tmp_path / "wide.pth", model, ["en"])


def test_lape_files_are_never_unpickled(llama, tmp_path):
    model, _ = llama
    path = tmp_path / "evil.pth"
    torch.save([[datetime.date(2024, 1, 1)]], path)  # an object only unpickling could rebuild
    with pytest.raises(ValueError, match="weights_only=True refused it"):
        import_lape(path, model, ["en"])
    torch.save({"en": torch.tensor([1])}, tmp_path / "dict.pth")
    with pytest.raises(ValueError, match="expected a list"):
        import_lape(tmp_path / "dict.pth", model, ["en"])


def test_lape_export_refuses_attention_neurons_unless_asked(llama, tmp_path):
    model, _ = llama
    ns = random_set(model, 0, "fr", kinds=("ffn", "q"))
    with pytest.raises(ValueError, match="FFN neurons only"):
        export_lape([ns], tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    export_lape([ns], tmp_path / "x.pth", ffn_only=True)
    assert json.loads(side_file(tmp_path / "x.pth").read_text())["dropped_attention_neurons"] == {"fr": {"q": ns.count("q")}}


def test_reference_round_trip_and_gqa_mapping(llama, tmp_path):
    model, _ = llama
    ns = random_set(model, 4, "fr", kinds=("ffn", "q", "k", "v"), p=0.2)
    path = export_reference(ns, tmp_path / "french.txt")
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and lines[0] == lines[1]  # FFN up and down: the same unit
    back = import_reference(path, model, "fr")
    assert back == ns and back.meta["imported_from"]["ffn_up_down"] == "identical"
    # K/V in the reference's query-head space: query head h, dim d -> h * 16 + d; KV channel (h // 2) * 16 + d
    k = parse_reference_line(lines[3], "k")
    for layer in range(3):
        want = sorted(h * 16 + d for c in ns.indices("k", layer).tolist() for h in (2 * (c // 16), 2 * (c // 16) + 1)
                      for d in [c % 16])
        assert sorted(k[layer]) == want


def test_reference_files_are_parsed_without_eval(llama, tmp_path):
    model, _ = llama
    text = ("{0: {np.int64(5), 7}, 1: set(), 2: {95}}\n{0: {5}, 2: {94}}\n{1: {63}}\n{0: {17}}\n{2: set()}\n")
    path = tmp_path / "ref.txt"
    path.write_text(text)
    ns = import_reference(path, model, "zh")
    assert ns.indices("ffn", 0).tolist() == [5, 7] and ns.indices("ffn", 2).tolist() == [94, 95]
    assert "3 neurons in one of the up/down lines only" in ns.meta["imported_from"]["ffn_up_down"]
    assert ns.indices("q", 1).tolist() == [63]
    assert ns.indices("k", 0).tolist() == [1]  # query head 1, dim 1 -> KV head 0, dim 1
    assert ns.count("v") == 0
    bad = tmp_path / "bad.txt"
    for line, message in (("__import__('os').system('echo hacked')", "without evaluating code"),
                          ("{0: {1 + 2}}", "without evaluating code"), ("{0: {1}", "not a Python literal")):
        bad.write_text("\n".join([line] + ["{0: {1}}"] * 4) + "\n")
        with pytest.raises(ValueError, match=message):
            import_reference(bad, model, "zh")
    bad.write_text("{31: {1}}\n" * 5)
    with pytest.raises(ValueError, match="has layer 31; this model has layers 0..2"):
        import_reference(bad, model, "zh")
    bad.write_text("{0: {1}}\n" * 4)
    with pytest.raises(ValueError, match="has 4 non-empty lines"):
        import_reference(bad, model, "zh")
    assert reference_text(ns).splitlines()[4] == "{0: set(), 1: set(), 2: set()}"


def test_cli_convert_round_trip(llama, gpt2, tmp_path, capsys):
    model, _ = llama
    paths = [random_set(model, s, lang).save(tmp_path / f"{lang}.safetensors") for s, lang in enumerate(("en", "fr"))]
    pth = tmp_path / "x.pth"
    assert cli_main(["convert", "--to", "lape", "--out", str(pth), *map(str, paths)]) == 0
    out = tmp_path / "back"
    assert cli_main(["convert", "--from", "lape", str(pth), "--model", "tiny-random-llama", "--langs", "en,fr",
                     "--out-dir", str(out)]) == 0
    for p in paths:
        assert NeuronSet.load(out / p.name) == NeuronSet.load(p)
    assert cli_main(["convert", "--to", "lape", "--out", str(tmp_path / "y.pth"), str(out / "en.safetensors"),
                     str(out / "fr.safetensors")]) == 0
    assert (tmp_path / "y.pth").read_bytes() == pth.read_bytes()
    capsys.readouterr()
    assert cli_main(["convert", "--from", "lape", str(pth), "--model", "tiny-random-gpt2", "--langs", "en,fr",
                     "--out-dir", str(tmp_path / "g")]) == 2
    assert "another shape" in capsys.readouterr().err
    assert cli_main(["convert", "--from", "lape", str(pth), "--model", "tiny-random-llama", "--out-dir",
                     str(tmp_path / "g")]) == 2
    assert "--langs" in capsys.readouterr().err
    ref = tmp_path / "fr.txt"
    assert cli_main(["convert", "--to", "reference", "--out", str(ref), str(paths[1])]) == 0
    assert cli_main(["convert", "--from", "reference", str(ref), "--model", "tiny-random-llama", "--langs", "fr",
                     "--out-dir", str(tmp_path / "r")]) == 0
    assert NeuronSet.load(tmp_path / "r" / "fr.safetensors") == NeuronSet.load(paths[1])
