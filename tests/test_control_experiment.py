"""``mwork experiment control`` (issue #22): the contract command's files, dev and test items
disjoint and the choice made on dev, a lever's outputs equal to steering by hand, a killed run
resumed to the same files, bad input refused before any model is loaded, and the report's section
(escaped). Tiny random model, two items per pair, three tokens per output."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

import mwork.experiments.control.runner as runner_module
from mwork.cli import main
from mwork.control import choose_settings, harmonic_score
from mwork.experiments.control import ControlConfig
from mwork.experiments.control import report as control_writer
from mwork.experiments.control import schema
from mwork.experiments.control.levers import Plan, settings
from mwork.experiments.control.prompts import instruction, instruction_variants
from mwork.experiments.control.report import pareto_front
from mwork.neurons.neuronset import NeuronSet
from tests.conftest import TEST_DATA

M = "tiny-random-llama"
CONTRACT = ("lever", "source", "target", "split", "layers", "strength", "forcing", "meaning", "fluency", "score")
LEVERS = ("neurons", "vectors", "random", "prompt")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_models):
    """D1: neuron sets of es and zh (random masks: the mechanics, not a finding); D2: DiffMean
    vectors of en, es, zh from `mwork vectors` on the built-in corpora, at tiny sizes."""
    root = tmp_path_factory.mktemp("control")
    model, _ = tiny_models.shared(M)
    gen = torch.Generator().manual_seed(0)
    (root / "D1").mkdir()
    for lang in ("es", "zh"):
        ns = NeuronSet.empty_for(model, {"language": lang})
        for kind in ns.kinds:
            ns.masks[kind] = torch.rand(ns.masks[kind].shape, generator=gen) < 0.05
        ns.save(root / "D1" / lang)
    assert main(["vectors", "--model", M, "--corpus", "en=builtin:en", "--corpus", "es=builtin:es", "--corpus",
                 "zh=builtin:zh", "--max-docs", "2", "--max-length", "16", "--out", str(root / "D2"), "--device",
                 "cpu", "--quiet"]) == 0
    return root


def command(inputs, out, *extra):
    return ["experiment", "control", "--model", M, "--levers", ",".join(LEVERS), "--neurons-dir",
            str(inputs / "D1"), "--vectors-dir", str(inputs / "D2"), "--sources", "en", "--targets", "es,zh",
            "--limit", "2", "--out", str(out), "--data", str(TEST_DATA), "--max-new-tokens", "3", "--strengths", "1",
            "--modes", "set", "--vector-modes", "add", "--instructions", "en", "--stats-docs", "2",
            "--stats-max-length", "16", "--batch-size", "4", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture(scope="module")
def contract(inputs):
    out = inputs / "OUT"
    assert main(command(inputs, out)) == 0
    return out


def read_csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_the_contract_command_writes_control_csv_and_generations(contract):
    rows = read_csv(contract / "control.csv")
    assert set(CONTRACT) <= set(rows[0]) and list(rows[0]) == list(schema.CONTROL.columns)
    assert {r["lever"] for r in rows} == {"unsteered", *LEVERS}
    assert {(r["source"], r["target"]) for r in rows} == {("en", "es"), ("en", "zh")}
    assert {r["split"] for r in rows} == {"dev", "test"}
    # one row per lever, setting, pair and split (one item set): random has a neuron and a vector variant
    keys = [tuple(r[k] for k in schema.ROW_KEY) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2 * (1 + 1 + 1 + 2 + 1)
    for r in rows:
        f, m = float(r["forcing"]), float(r["meaning"])
        assert 0 <= f <= 1 and 0 <= m <= 1
        assert float(r["score"]) == pytest.approx(harmonic_score(f, m), abs=1e-5)  # the harmonic mean, by hand
        assert r["n"] == "1" and r["item_set"] == "xquad-text"
        if r["lever"] in ("neurons", "vectors", "random"):
            assert (r["layers"], r["strength"]) == ("all", "1") and int(r["units"]) > 0
        else:
            assert r["layers"] == r["strength"] == "" and r["units"] == "0"
    generations = read_jsonl(contract / "generations.jsonl")
    assert len(generations) == len(rows)  # one item per row here
    g = generations[0]
    assert set(schema.GENERATIONS.required) <= set(g) and g["prompt"].endswith("In other words:")
    prompts = {g["prompt"].split("\n\n")[0] for g in generations if g["lever"] == "prompt"}
    assert prompts == {"Respond in Spanish.", "Respond in Chinese."}
    chosen = read_csv(contract / "chosen.csv")
    assert list(chosen[0]) == list(schema.CHOSEN.columns)
    assert len(chosen) == 2 * 5 and {r["item_set"] for r in chosen} == {"xquad-text"}
    summary = json.loads((contract / "summary.json").read_text(encoding="utf-8"))
    assert summary["pairs"] == [["en", "es"], ["en", "zh"]] and summary["layers"] == {"all": "all"}
    for name in (schema.HEATMAP, schema.PARETO):
        assert (contract / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dev_and_test_items_are_disjoint_and_settings_are_chosen_on_dev(contract):
    generations = read_jsonl(contract / "generations.jsonl")
    for pair in (("en", "es"), ("en", "zh")):
        mine = [g for g in generations if (g["source"], g["target"]) == pair]
        dev = {g["id"] for g in mine if g["split"] == "dev"}
        test = {g["id"] for g in mine if g["split"] == "test"}
        assert dev and test and not dev & test
    rows = read_csv(contract / "control.csv")
    chosen = read_csv(contract / "chosen.csv")
    choices = choose_settings(rows, setting=schema.SETTING)
    for c, r in zip(choices, chosen):
        assert [r[k] for k in ("lever", "source", "target", *schema.SETTING)] == \
               [c[k] for k in ("lever", "source", "target", *schema.SETTING)]
        assert float(r["dev_score"]) == pytest.approx(c["dev_score"], abs=1e-5)
        test_row = next(x for x in rows if x["split"] == "test" and all(x[k] == r[k] for k in
                                                                         ("lever", "source", "target",
                                                                          *schema.SETTING)))
        assert r["score"] == test_row["score"]


def test_a_lever_generates_what_steering_by_hand_generates(contract, inputs):
    """The vectors lever at strength 1 on every layer is ``mwork.steer(model, vectors, "add", 1)``."""
    import mwork
    from mwork.models.loading import load_model
    from mwork.tasks.generation import generate

    model, tok = load_model(M, device="cpu")
    mine = [g for g in read_jsonl(contract / "generations.jsonl") if g["lever"] == "vectors" and g["target"] == "es"]
    with mwork.steer(model, mwork.load_units(inputs / "D2" / "es.safetensors"), "add", 1.0):
        outputs = generate(model, tok, [g["prompt"] for g in mine], max_new_tokens=3, stop=("\n",), progress=False)
    assert outputs == [g["output"] for g in mine]
    assert any(g["output"] != g["unsteered_output"] for g in mine)  # the vector does change the outputs


def test_a_killed_run_resumes_to_the_same_files(contract, inputs, monkeypatch):
    out = inputs / "killed"
    real = runner_module.measure_cell
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("killed inside a cell")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "measure_cell", dying)
    with pytest.raises(RuntimeError, match="killed"):
        main(command(inputs, out))
    assert len((out / "cells.jsonl").read_text().splitlines()) == 3 and not (out / "control.csv").exists()
    monkeypatch.setattr(runner_module, "measure_cell", real)
    calls["n"] = 0
    assert main(command(inputs, out)) == 0
    for name in ("control.csv", "chosen.csv", "generations.jsonl", "cells.jsonl", "summary.json"):
        if name == "summary.json":  # it names the output folder's statistics only through the inputs
            assert json.loads((out / name).read_text()) == json.loads((contract / name).read_text())
        else:
            assert (out / name).read_bytes() == (contract / name).read_bytes(), name
    # a third run measures nothing
    monkeypatch.setattr(runner_module, "measure_cell", lambda *a, **k: pytest.fail("a finished cell was remeasured"))
    assert main(command(inputs, out)) == 0


def test_stacked_settings_give_the_files_of_each_setting_alone(contract, inputs, monkeypatch):
    """The contract run stacks each pair's 6 cells (--stack 8, --batch-size 4: batches mix settings
    and the prompt lever's longer prompts); --stack 1 generates each setting alone, --stack 4 in
    stacks of 4 and 2; every cell is generated once."""
    real = runner_module.generate_stacked
    stacks = []

    def counted(model, tokenizer, cells, **kwargs):
        stacks.append(len(cells))
        return real(model, tokenizer, cells, **kwargs)

    monkeypatch.setattr(runner_module, "generate_stacked", counted)
    for stack, sizes in (("1", [1] * 12), ("4", [4, 2, 4, 2])):
        stacks.clear()
        out = inputs / f"stack{stack}"
        assert main(command(inputs, out, "--stack", stack)) == 0
        assert stacks == sizes
        for name in ("control.csv", "generations.jsonl", "cells.jsonl"):
            assert (out / name).read_bytes() == (contract / name).read_bytes(), (stack, name)


@pytest.mark.parametrize("extra, names", [
    (("--levers", "neurons,teleport"), ("--levers", "teleport")),
    (("--targets", "es,de", "--levers", "vectors"), ("vectors", "de")),
    (("--targets", "es,de", "--levers", "neurons"), ("neurons", "de")),
    (("--targets", "en"), ("no language pair",)),
    (("--targets", "fr"), ("fr", "xquad-text")),
    (("--sources", "th", "--items", "xquad-qa,xquad-text"), ("th",)),
    (("--strengths", "0,1"), ("--strengths", "0")),
    (("--vector-strengths", "0.5,0.5"), ("--vector-strengths",)),
    (("--layers", "all,mid"), ("--layers", "mid")),
    (("--layers", "all,G"), ("--understanding",)),
    (("--vector-modes", "swap", "--levers", "vectors", "--sources", "ru", "--targets", "es"), ("ru",)),
    (("--stats-corpus", "de=builtin:de"), ("--stats-corpus", "de")),
    (("--limit", "1"), ("--limit",)),
    (("--dev-fraction", "1"), ("--dev-fraction",)),
    (("--vectors-dir", "/nonexistent/vectors"), ("--vectors-dir",)),
])
def test_bad_input_fails_before_the_model_loads(inputs, monkeypatch, capsys, extra, names):
    import mwork.jobs

    monkeypatch.setattr(mwork.jobs, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(command(inputs, inputs / "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mwork experiment: error:") and err.count("\n") == 1
    assert all(n in err for n in names), err


def test_layers_beyond_the_model_and_a_missing_chat_template_are_refused(inputs, capsys):
    assert main(command(inputs, inputs / "bad-layers", "--layers", "0-99")) == 2
    assert "99" in capsys.readouterr().err
    assert main(command(inputs, inputs / "bad-chat", "--chat")) == 2
    assert "chat template" in capsys.readouterr().err


def test_pairs_leave_out_source_equal_to_target_and_levers_follow_the_inputs():
    config = ControlConfig(sources=("en", "zh"), targets=("en", "es", "zh"), out="x", vectors_dir="v")
    assert config.pairs() == [("en", "es"), ("en", "zh"), ("zh", "en"), ("zh", "es")]
    assert config.chosen_levers() == ("vectors", "random", "prompt", "prompt+vector")
    default = ControlConfig(out="x")
    assert default.languages() == (("en", "zh", "ru"), ("en", "es", "de", "ru", "zh"))  # XQuAD has no fr
    assert default.chosen_levers() == ("prompt",) and default.layer_specs() == ("all",)
    regions = ControlConfig(out="x", understanding=2, generation=2)
    assert regions.layer_specs() == ("all", "understanding", "task-solving", "generation")
    assert ControlConfig(out="x", layers=("U", "3+5-6"), understanding=1, generation=1).layers == \
        ("understanding", "3+5-6")


def test_prompt_instructions_and_lever_settings():
    assert instruction("source", "zh", "es") == "请用西班牙语回答。"
    assert instruction("en", "zh", "es") == "Respond in Spanish."
    assert instruction("source", "el", "es") is None  # no Greek sentence in the table: English only
    assert instruction_variants(("source", "en"), "en", "es") == ["en"]
    assert instruction_variants(("source", "en"), "ru", "de") == ["source", "en"]
    plan = Plan(("set", "add"), ("add", "swap"), ("source", "en"), has_neurons=True, has_vectors=False)
    strengths = {"neurons": (1.0, 2.0), "vectors": (0.25,)}
    found = settings("random", plan, "ru", "es", ("all", "6-8"), ("all",), strengths)
    assert {s.variant for s in found} == {"neurons-set", "neurons-add"} and len(found) == 2 * 2 * 2
    both = settings("random", replace(plan, has_vectors=True), "ru", "es", ("all",), ("all",), strengths)
    assert {(s.variant, s.strength) for s in both} == {("neurons-set", 1.0), ("neurons-set", 2.0), ("neurons-add", 1.0),
                                                       ("neurons-add", 2.0), ("vectors-add", 0.25),
                                                       ("vectors-swap", 0.25)}
    assert [(s.variant, s.strength) for s in settings("prompt+vector", plan, "ru", "es", ("all",), ("all",),
                                                        strengths)] == \
        [("source+add", 0.25), ("source+swap", 0.25), ("en+add", 0.25), ("en+swap", 0.25)]
    assert pareto_front([(0.2, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.5, 0.5)]) == \
        [(0.2, 0.9), (0.5, 0.5), (0.9, 0.1)]


def test_the_report_section_reads_the_schema_and_escapes_the_outputs(contract, tmp_path):
    from mwork.report import render_report
    from mwork.report.kinds import control as kind

    assert kind.CONTROL is schema.CONTROL is control_writer.CONTROL and kind.CHOSEN is control_writer.CHOSEN
    folder = tmp_path / "control"
    shutil.copytree(contract, folder)
    payload = '<script>alert(1)</script><img src=x onerror=alert(1)>'
    records = read_jsonl(folder / "generations.jsonl")
    for r in records:
        r["output"] = payload + r["output"]
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    html = render_report(folder).read_text(encoding="utf-8")
    assert "Language control that keeps the meaning" in html and "could not be rendered" not in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert not math.isnan(float(read_csv(folder / "chosen.csv")[0]["score"]))


def test_the_python_api_is_the_command(shared_tiny, tmp_path):
    """``ControlConfig(...).run(model, tokenizer)`` on a loaded model: its result's rows are the file's."""
    model, tok = shared_tiny(M)
    config = ControlConfig(levers="prompt", sources=("en",), targets=("zh",), limit=2, data=str(TEST_DATA),
                           max_new_tokens=2, out=str(tmp_path / "api"), progress=False)
    result = config.run(model, tok)
    assert set(result.files) >= {"control.csv", "chosen.csv", "generations.jsonl"}
    rows = read_csv(tmp_path / "api" / "control.csv")
    assert [(r["lever"], r["split"]) for r in rows] == [(r["lever"], r["split"]) for r in result.data["rows"]]
    assert {r["lever"] for r in rows} == {"unsteered", "prompt"} and {r["variant"] for r in rows} == {"", "en"}


def test_chat_prompts_go_through_the_template_once_with_one_bos(shared_tiny, tmp_path):
    import copy
    import types

    from mwork.experiments.control.prompts import chat_text

    template = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>"
                "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    model, tok = shared_tiny(M)
    tok = copy.deepcopy(tok)
    tok.chat_template = template
    assert tok("x").input_ids[:1] != [tok.bos_token_id]  # this tokenizer adds no BOS: the template's stays
    assert chat_text(tok, "Hi") == "<bos><user>Hi</user><assistant>"

    class AddsBos:  # a tokenizer that adds its BOS itself: the template's is dropped, so the model sees one
        bos_token, bos_token_id, chat_template = "<s>", 7, template

        def __call__(self, text):
            return types.SimpleNamespace(input_ids=[7, 1, 2])

        def apply_chat_template(self, turns, tokenize, add_generation_prompt):
            return "<s>" + "".join(f"<{t['role']}>{t['content']}</{t['role']}>" for t in turns) + "<assistant>"

    assert chat_text(AddsBos(), "Hi") == "<user>Hi</user><assistant>"
    config = ControlConfig(levers="prompt", sources=("en",), targets=("zh",), limit=2, data=str(TEST_DATA),
                           max_new_tokens=2, chat=True, out=str(tmp_path / "chat"), progress=False)
    config.run(model, tok)
    prompts = {g["lever"]: g["prompt"] for g in read_jsonl(tmp_path / "chat" / "generations.jsonl")}
    assert prompts["prompt"].startswith("<bos><user>Respond in Chinese.\n\n")
    assert prompts["unsteered"].startswith("<bos><user>") and prompts["unsteered"].endswith("</user><assistant>")


def test_text_prompts_show_one_other_sentence_restated_and_every_item_competes_in_a_pool():
    from mwork.experiments.control.inputs import pair_items
    from mwork.experiments.control.prompts import TEXT_CUES, base_prompt

    def pairs(limit=4, **kw):
        config = ControlConfig(levers="prompt", sources=("en",), targets=("zh",), items=("mgsm-text",), limit=limit,
                               data=str(TEST_DATA), out="unused", **kw)
        return pair_items(config, config.pairs())[("en", "zh")]

    shown, alone = pairs(), pairs(text_shots=0)
    assert [it.id for it in shown.items] == [it.id for it in alone.items] and shown.splits == alone.splits
    example_id = shown.items[0].meta["example"]
    assert {it.meta["example"] for it in shown.items} == {example_id}
    assert example_id not in {it.id for it in shown.items}  # neither a dev nor a test item
    example = shown.items[0].fields["example"]
    for it, bare in zip(shown.items, alone.items):
        cue = TEXT_CUES["en"]
        assert base_prompt(bare).text == f"{bare.fields['text']}\n{cue}" and "example" not in bare.fields
        assert base_prompt(it).text == f"{example}\n{cue} {example}\n\n{it.fields['text']}\n{cue}"
    # the pool: the dev and test items, the example, then the data's other items
    pool = shown.pools["mgsm-text"]
    assert pool.ids[:5] == (*(it.id for it in shown.items), example_id) and len(set(pool.ids)) == len(pool.ids)
    assert example_id not in alone.pools["mgsm-text"].ids[:4]
    with pytest.raises(ValueError, match="no item left for the prompts' example"):
        pairs(limit=200)  # every problem of the subset is a dev or a test item
    assert len(pairs(limit=200, text_shots=0).items) == 44
    with pytest.raises(ValueError, match="--text-shots"):
        ControlConfig(levers="prompt", sources=("en",), targets=("zh",), text_shots=2, out="unused")


def test_a_judge_rates_each_output_from_its_three_answers(shared_tiny, tmp_path):
    """The judge's relevance is (p1 + 2 p2) / 2 of its log-likelihoods of the three ratings,
    normalised (a direct computation here); an empty output is 0; with --judge the rows carry
    judge, judge_unsteered and meaning_judge, and --meaning-from judge makes it the meaning."""
    from mwork.control import load_items
    from mwork.experiments.control.judge import rating_prompt, relevance
    from mwork.tasks.generation import loglikelihood

    model, tok = shared_tiny(M)
    items = load_items("xquad-text", "en", "zh", data=str(TEST_DATA))[:2]
    outputs = [items[0].fields["text"], ""]
    got = relevance(model, tok, items, outputs, batch_size=2)
    prompt = rating_prompt(items[0], outputs[0], tok)
    assert prompt.startswith("Rate whether") and outputs[0].strip() in prompt  # no chat template: plain
    logps = [lp for lp, _ in loglikelihood(model, tok, [(prompt, f" {r}") for r in "012"], progress=False)]
    p = [math.exp(v) for v in logps]
    assert got[0] == pytest.approx((p[1] + 2 * p[2]) / (2 * sum(p)), rel=1e-5) and 0 < got[0] < 1
    assert got[1] == 0.0

    config = ControlConfig(levers="prompt", sources=("en",), targets=("zh",), limit=2, data=str(TEST_DATA),
                           max_new_tokens=2, judge=M, out=str(tmp_path / "judged"), progress=False)
    config.run(model, tok)
    rows = read_csv(tmp_path / "judged" / "control.csv")
    assert all(r["judge"] != "" and r["meaning_judge"] != "" and r["measure"] == "match" for r in rows)
    generations = read_jsonl(tmp_path / "judged" / "generations.jsonl")
    assert all(0.0 <= g["judge"] <= 1.0 for g in generations)
    primary = replace(config, meaning_from="judge", out=str(tmp_path / "primary"))
    (tmp_path / "primary").mkdir()
    shutil.copy(tmp_path / "judged" / "cells.jsonl", tmp_path / "primary")  # the meaning axis is chosen from cells
    primary.run(model, tok)
    assert (tmp_path / "primary" / "cells.jsonl").read_bytes() == (tmp_path / "judged" / "cells.jsonl").read_bytes()
    rows = read_csv(tmp_path / "primary" / "control.csv")
    assert all(r["measure"] == "judge" and r["meaning"] == r["meaning_judge"] for r in rows)
    with pytest.raises(ValueError, match="--judge MODEL"):
        replace(config, judge=None, meaning_from="judge")


def test_neuron_edits_may_sweep_their_own_layer_ranges():
    config = ControlConfig(levers="neurons,vectors,random", neurons_dir="D1", vectors_dir="D2", layers="6,9",
                           neuron_layers="all", strengths="1", out="unused")
    assert config.layer_specs_of() == {"neurons": ("all",), "features": ("all",), "vectors": ("6", "9")}
    assert config.layer_specs() == ("6", "9", "all")  # every range the run resolves
    plan = Plan(("set",), ("add",), ("en",), has_neurons=True, has_vectors=True)
    got = {(s.lever, s.variant, s.layers) for name in ("neurons", "vectors", "random")
           for s in settings(name, plan, "en", "es", config.layer_specs_of(), ("all",), config.strengths_of())}
    assert got == {("neurons", "set", "all"), ("vectors", "add", "6"), ("vectors", "add", "9"),
                   ("random", "neurons-set", "all"), ("random", "vectors-add", "6"), ("random", "vectors-add", "9")}
    assert replace(config, neuron_layers=None).layer_specs_of()["neurons"] == ("6", "9")
    with pytest.raises(ValueError, match="--neuron-layers names a region"):
        replace(config, neuron_layers="generation")


def test_dictionary_features_are_a_lever_with_their_random_baseline(inputs, shared_tiny, tmp_path):
    """--features-dir (mwork detect --units sae:DIR's sets): the features lever steers a language's
    features toward their mean on the language (measured here where a set carries none), the
    random lever as many other features of the same dictionary per layer; the lever's outputs are
    mwork.steer's with the measured set."""
    import mwork
    from mwork.tasks.generation import generate
    from mwork.units.dictionary import Codebook, Dictionary

    model, tok = shared_tiny(M)
    d = model.config.hidden_size
    gen = torch.Generator().manual_seed(3)
    books = {layer: Codebook(torch.randn(d, 32, generator=gen), torch.zeros(32), torch.randn(32, d, generator=gen),
                             torch.zeros(d), activation="topk", k=8) for layer in (0, 1)}
    folder = tmp_path / "D3"
    folder.mkdir()
    Dictionary(books, layers=[0, 0, 1], features=[1, 5, 7], meta={"language": "es"}).save(folder / "es")
    Dictionary(books, layers=[1, 1], features=[2, 3], meta={"language": "zh"},
               stats={"mean": torch.tensor([3.0, -2.0])}).save(folder / "zh")
    config = ControlConfig(levers="features,random", features_dir=str(folder), sources=("en",), targets=("es", "zh"),
                           limit=2, data=str(TEST_DATA), max_new_tokens=3, strengths=(4.0,), modes=("set",),
                           stats_docs=2, stats_max_length=16, out=str(tmp_path / "OUT"), progress=False)
    config.run(model, tok)
    rows = read_csv(tmp_path / "OUT" / "control.csv")
    assert {(r["lever"], r["variant"]) for r in rows} == {("unsteered", ""), ("features", "set"),
                                                         ("random", "features-set")}
    assert {r["units"] for r in rows if r["lever"] == "features" and r["target"] == "es"} == {"3"}
    measured = list((tmp_path / "OUT" / "statistics").glob("es-*-features-set.safetensors"))
    assert len(measured) == 1  # es carried no mean: measured once on its texts; zh's own was used
    es = mwork.load_units(measured[0])
    assert es.features.tolist() == [1, 5, 7] and es.stats["mean"].isfinite().all()
    assert not list((tmp_path / "OUT" / "statistics").glob("zh-*-features-set.safetensors"))
    mine = [g for g in read_jsonl(tmp_path / "OUT" / "generations.jsonl") if g["lever"] == "features"
            and g["target"] == "es"]
    with mwork.steer(model, es, "set", 4.0):
        outputs = generate(model, tok, [g["prompt"] for g in mine], max_new_tokens=3, stop=("\n",), progress=False)
    assert outputs == [g["output"] for g in mine]
    own = Dictionary.load(folder / "es.safetensors")
    drawn = own.random_like(5, exclude=own)
    assert drawn.layers.tolist() == [0, 0, 1] and not set(drawn.features[:2].tolist()) & {1, 5}
    assert drawn.features[2].item() != 7
    assert own.random_like(5, exclude=own).features.tolist() == drawn.features.tolist()  # seeded
    lacking = tmp_path / "D4"
    lacking.mkdir()
    shutil.copy(folder / "es.safetensors", lacking)
    with pytest.raises(FileNotFoundError, match="no language features for zh"):
        replace(config, features_dir=str(lacking)).check()
    with pytest.raises(ValueError, match="not dictionary features"):
        replace(config, features_dir=str(inputs / "D1"), out=str(tmp_path / "OUT2")).run(model, tok)
