"""Inputs of the second hostile round, as a user meets them on the command line: each ends in one
clear line (exit code 2, or a warning and a finished run), never a traceback.

* offline ``hf:`` data sets (the variables, or a hub that does not answer): ``mwork.texts._hf``;
* ``--make-local-tasks`` on a short SQuAD file or unanswerable questions, a model folder whose
  config.json is not JSON;
* Ctrl-C: ``mwork COMMAND: interrupted; rerun the same command to resume``, exit 130, and the
  resumed outputs equal an uninterrupted run's, byte for byte;
* a document far longer than the others: how many windows the corpus makes, and a warning;
* one language exported twice, ``$`` in the text of a plot, a ``FILE[A:B]`` range that selects
  nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mwork.cli import main
from mwork.neurons.neuronset import NeuronSet

EN = ["The quick brown fox jumps over the lazy dog.", "Language models read and write many languages.",
      "Quick numbers: 1, 2, 3, 10, 42, 100.", "Hello world, again and again."]
FR = ["Le renard brun saute par-dessus le chien paresseux.", "Les modèles de langue lisent le français.",
      "Bonjour le monde.", "Encore un document en français."]
XQUAD_EN = Path(__file__).parent / "data" / "xquad" / "xquad.en.json"
INTERRUPTED = "interrupted; rerun the same command to resume"


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("MWORK_CACHE", str(tmp_path / "cache"))


def write(path, docs):
    path.write_text("\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def one_line(err: str, command: str) -> str:
    """The single error line (no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"mwork {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ---- 9. an offline hf: data set ---------------------------------------------------------------


def test_offline_hf_corpus_of_lape_detection(tmp_path, capsys):
    fr = write(tmp_path / "fr.txt", FR)
    rc = main(["detect", "--method", "lape", "--model", "tiny-random-llama", "--corpus", "en=hf:nonexistent/ds",
               "--corpus", f"fr={fr}", "--out-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    line = one_line(capsys.readouterr().err, "detect")
    assert line == ("mwork detect: error: offline: no cached copy of the data set nonexistent/ds and "
                    "HF_DATASETS_OFFLINE is set; pass a local copy instead: a text or JSONL file, or hf:FOLDER with "
                    "the data files (parquet, JSON, CSV)")


def test_offline_hf_dataset_option_of_plnd_detection(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE")  # HF_HUB_OFFLINE alone says it too
    rc = main(["detect", "--model", "tiny-random-llama", "--hf-dataset", "nonexistent/ds", "--lang", "en",
               "--out", str(tmp_path / "en"), "--quiet"])
    assert rc == 2
    assert "no cached copy of the data set nonexistent/ds and HF_HUB_OFFLINE is set" in one_line(
        capsys.readouterr().err, "detect")


def test_a_hub_that_does_not_answer_is_offline_at_once(tmp_path, capsys, monkeypatch):
    """No offline variable, but no connection: one quick probe (mwork.hub, shared with models), then
    datasets in offline mode: a cached copy or the same line, not a minute of retries."""
    import mwork.hub

    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(mwork.hub, "offline_env", lambda datasets=False: False)
    monkeypatch.setattr(mwork.hub, "hub_reachable", lambda timeout=3.0: False)
    fr = write(tmp_path / "fr.txt", FR)
    rc = main(["stats", "--router", "--model", "tiny-random-qwen2_moe", "--corpus", "en=hf:nonexistent/ds",
               "--corpus", f"fr={fr}", "--out", str(tmp_path / "r"), "--quiet"])
    assert rc == 2
    assert ("mwork stats: error: offline: no cached copy of the data set nonexistent/ds and the Hugging Face hub "
            "cannot be reached") in one_line(capsys.readouterr().err, "stats")


def test_a_connection_lost_while_streaming(tmp_path, capsys, monkeypatch):
    import datasets
    from huggingface_hub.utils import httpx

    import mwork.hub

    def rows(*args, **kwargs):
        yield {"text": "one"}
        yield {"text": "two"}
        raise httpx.ConnectError("connection reset")

    monkeypatch.setattr(mwork.hub, "offline_reason", lambda datasets=False: None)  # "online"
    monkeypatch.setattr(datasets, "load_dataset", rows)
    fr = write(tmp_path / "fr.txt", FR)
    rc = main(["detect", "--method", "lape", "--model", "tiny-random-llama", "--corpus", "en=hf:some/ds",
               "--corpus", f"fr={fr}", "--out-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    assert "hub data set some/ds: the connection failed after 2 rows (ConnectError); rerun when online" in one_line(
        capsys.readouterr().err, "detect")


# ---- 10. local lm-eval tasks from a short or unanswerable SQuAD file; a broken config.json -------


def xquad(tmp_path, name, edit):
    data = json.loads(XQUAD_EN.read_text(encoding="utf-8"))
    edit(data)
    folder = tmp_path / name
    (folder / "xquad").mkdir(parents=True)
    (folder / "xquad" / "xquad.en.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def test_local_tasks_from_a_file_with_too_few_articles(tmp_path, capsys):
    def cut(data):
        data["data"] = data["data"][:10]

    folder = xquad(tmp_path, "short", cut)
    rc = main(["eval", "--make-local-tasks", str(tmp_path / "tasks"), "--data", str(folder)])
    assert rc == 2
    assert one_line(capsys.readouterr().err, "eval") == (
        f"mwork eval: error: {folder}/xquad/xquad.en.json has articles 0-9; the local tasks need articles 24-47 (the "
        "held-out XQuAD ones; 0-23 are for detection): missing 24-47. Use the full XQuAD file")


def test_unanswerable_questions_are_skipped_and_counted(tmp_path, capsys):
    """SQuAD 2.0's unanswerable questions (empty answers) have no gold: skipped with a warning;
    every other item is the one the full file gives (items are picked by position)."""
    full = xquad(tmp_path, "full", lambda data: None)

    def unanswerable(data):
        for qa in data["data"][30]["paragraphs"][0]["qas"][:2]:
            qa["answers"] = []

    holed = xquad(tmp_path, "holed", unanswerable)
    assert main(["eval", "--make-local-tasks", str(tmp_path / "a"), "--data", str(full)]) == 0
    capsys.readouterr()
    assert main(["eval", "--make-local-tasks", str(tmp_path / "b"), "--data", str(holed)]) == 0
    err = capsys.readouterr().err
    assert (f"mwork eval: warning: {holed}/xquad/xquad.en.json: skipped 2 question(s) with no answer (unanswerable, "
            "as in SQuAD 2.0): a multiple-choice item needs a gold answer") in err
    read = lambda d: [json.loads(x) for x in (d / "data" / "mwork_xquad_mc_en.jsonl").read_text().splitlines()]  # noqa: E731
    a, b = read(tmp_path / "a"), read(tmp_path / "b")
    dropped = {qa["id"] for qa in json.loads((holed / "xquad" / "xquad.en.json").read_text())["data"][30]
               ["paragraphs"][0]["qas"][:2]}
    assert [r for r in a if r["id"] not in dropped and r["article"] != 30] == \
        [r for r in b if r["article"] != 30]
    assert not dropped & {r["id"] for r in b}


def test_a_model_folder_whose_config_is_not_json(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama",\n', encoding="utf-8")
    texts = write(tmp_path / "en.txt", EN)
    assert main(["ppl", "--model", str(folder), "--texts", texts, "--device", "cpu"]) == 2
    assert one_line(capsys.readouterr().err, "ppl") == (
        f"mwork ppl: error: {folder}/config.json is not valid JSON (Expecting property name enclosed in double "
        "quotes at line 2, column 1): the model folder is damaged or half-written; save it again with save_pretrained")
    (folder / "config.json").write_text("[1, 2]", encoding="utf-8")
    assert main(["ppl", "--model", str(folder), "--texts", texts, "--device", "cpu"]) == 2
    assert "config.json holds a JSON list, not an object of model settings" in one_line(capsys.readouterr().err, "ppl")


# ---- 11. Ctrl-C ----------------------------------------------------------------------------------


def interrupt_after(n, real):
    calls = {"n": 0}

    def dies(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return dies


@pytest.fixture
def steer_files(tmp_path, shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    gen = torch.Generator().manual_seed(0)
    ns = NeuronSet.empty_for(model, {"language": "fr"})
    for k in ns.kinds:
        ns.masks[k] = torch.rand(ns.masks[k].shape, generator=gen) < 0.08
    return {"neurons": str(ns.save(tmp_path / "fr")), "prompts": write(tmp_path / "prompts.txt", EN[:3]),
            "corpus": write(tmp_path / "fr.txt", FR)}


def steer(files, out):
    return main(["steer", "--model", "tiny-random-llama", "--neurons", files["neurons"], "--target", "fr",
                 "--prompts", files["prompts"], "--source", "en", "--strengths", "0,1,2", "--mode", "set",
                 "--corpus", files["corpus"], "--seeds", "0", "--out", str(out), "--max-new-tokens", "4",
                 "--device", "cpu", "--no-progress"])


def test_ctrl_c_in_steer_then_resume_gives_the_same_bytes(steer_files, tmp_path, capsys, monkeypatch):
    from mwork.experiments.steering import sweep

    assert steer(steer_files, tmp_path / "whole") == 0
    real = sweep.generate_measured
    monkeypatch.setattr(sweep, "generate_measured", interrupt_after(3, real))
    assert steer(steer_files, tmp_path / "cut") == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"mwork steer: {INTERRUPTED}" and "Traceback" not in err
    monkeypatch.setattr(sweep, "generate_measured", real)
    assert steer(steer_files, tmp_path / "cut") == 0
    for name in ("steer.csv", "unsteered.csv", "generations.jsonl", "generations.md", "steer.png"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_ctrl_c_in_experiment_methods_then_resume_gives_the_same_bytes(tmp_path, capsys, monkeypatch):
    from mwork.tasks import runtime

    specs = []
    heldout = {"en": ["Another English text for the test.", "The cat sleeps on the sofa."],
               "fr": ["Un autre texte en français pour tester.", "Le chat dort sur le canapé."]}
    for what, docs in (("corpus", {"en": EN, "fr": FR}), ("heldout", heldout)):
        for lang, texts in docs.items():
            specs += [f"--{what}", f"{lang}={write(tmp_path / f'{what}.{lang}.txt', texts)}"]

    def run(out):
        return main(["experiment", "methods", "--model", "tiny-random-llama", "--methods", "lape,ap", "--sizes", "2%",
                     "--seeds", "0", "--out", str(out), "--max-length", "16", "--eval-max-length", "16",
                     "--cost-docs", "1", "--cost-repeats", "1", "--quiet", *specs])

    assert run(tmp_path / "whole") == 0
    real = runtime.Evaluator.__call__
    monkeypatch.setattr(runtime.Evaluator, "__call__", interrupt_after(5, real))
    capsys.readouterr()
    assert run(tmp_path / "cut") == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"mwork experiment: {INTERRUPTED}" and "Traceback" not in err
    assert not (tmp_path / "cut" / "selectivity.csv").exists()
    monkeypatch.setattr(runtime.Evaluator, "__call__", real)
    assert run(tmp_path / "cut") == 0
    for name in ("selectivity.csv", "summary.csv", "matrix.csv", "stability.csv", "agreement.csv"):
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    cut = "## Cost"  # timings
    assert (tmp_path / "cut" / "report.md").read_text().split(cut)[0] == \
        (tmp_path / "whole" / "report.md").read_text().split(cut)[0]


def test_ctrl_c_in_any_command(tmp_path, capsys, monkeypatch):
    import mwork.neurons.convert

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mwork.neurons.convert, "export_files", interrupted)
    assert main(["convert", "--to", "lape", "--out", str(tmp_path / "x.pth"), str(tmp_path / "en.safetensors")]) == 130
    assert capsys.readouterr().err == f"mwork convert: {INTERRUPTED}\n"


# ---- 12. a document far longer than the others ---------------------------------------------------


@pytest.fixture
def long_corpus(tmp_path, monkeypatch):
    import mwork.neurons.windows as windows

    monkeypatch.setattr(windows, "LONG_TOKENS", 200)  # the rule, at the size of a tiny test
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)
    return write(tmp_path / "en.txt", EN + [long]), write(tmp_path / "fr.txt", FR)


def test_lape_says_how_many_windows_and_warns_about_a_long_document(tmp_path, long_corpus, capsys):
    en, fr = long_corpus
    base = ["detect", "--method", "lape", "--model", "tiny-random-llama", "--corpus", f"en={en}", "--corpus",
            f"fr={fr}", "--max-length", "32"]
    assert main(base + ["--out-dir", str(tmp_path / "a"), "--quiet"]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("mwork detect: warning: statistics en: ")]
    assert len(warning) == 1, err
    assert "document 4 (" in warning[0] and "far longer than the others (median" in warning[0]
    assert "split long documents (one per line) or pass --truncate" in warning[0]
    assert "statistics fr" not in err and "windows of at most" not in err  # --quiet: the warning only
    assert main(base + ["--out-dir", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "[mwork] statistics fr: 4 documents, " in err and " windows of at most 32 tokens" in err
    assert main(base + ["--out-dir", str(tmp_path / "c"), "--quiet", "--truncate"]) == 0
    assert "far longer" not in capsys.readouterr().err  # one window a document: nothing to warn about


def test_plnd_warns_about_a_long_document_of_its_block(tmp_path, long_corpus, capsys):
    en, _ = long_corpus
    assert main(["detect", "--model", "tiny-random-llama", "--corpus", en, "--lang", "en", "--kinds", "ffn",
                 "--max-length", "32", "--out", str(tmp_path / "en"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "mwork detect: warning: documents 0-4: document 4 (" in err and "far longer than the others" in err


# ---- 13. a language exported twice; $ in plots; empty ranges -------------------------------------


def test_exporting_two_sets_of_one_language_is_refused(tmp_path, capsys, shared_tiny):
    model, _ = shared_tiny("tiny-random-llama")
    a = NeuronSet.empty_for(model, {"language": "en", "name": "en"}).save(tmp_path / "a")
    b = NeuronSet.empty_for(model, {"language": "en", "name": "en"}).save(tmp_path / "b")
    out = tmp_path / "x.pth"
    assert main(["convert", "--to", "lape", "--out", str(out), str(a), str(b)]) == 2
    assert one_line(capsys.readouterr().err, "convert") == (
        f"mwork convert: error: more than one set of the same language (en: {a}, {b}): a LAPE file holds one entry "
        "per language and could not be imported again; export each language once")
    assert not out.exists()


def test_dollar_signs_reach_the_lens_plot_as_written(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"text": "Hello there my friend", "lang": "$\\foo$"}) + "\n"
                       + json.dumps({"text": "Bonjour mon ami", "lang": "fr"}) + "\n", encoding="utf-8")
    out = tmp_path / "lens"
    assert main(["lens", "--model", "tiny-random-llama", "--out", str(out), "--prompts", str(prompts),
                 "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert (out / "lens.png").stat().st_size > 0


def test_dollar_signs_in_every_plotting_helper(tmp_path):
    """Each plot's text as written: mathtext would fail on ``$\\foo$`` (checked: the unwrapped one raises)."""
    from mwork.experiments.methods.report import plot_agreement
    from mwork.lens.plot import plot_shares
    from mwork.neurons.router_stats import RouterStats, write_router_stats

    odd = "$\\foo$"
    shares = {odd: [{"layer": i, "english_share": 0.1 * i, "non_english_share": 0.5, "unknown_share": 0.2}
                    for i in range(3)]}
    with pytest.raises(ValueError):
        plot_shares.__wrapped__(shares, tmp_path / "raw.png")
    assert plot_shares(shares, tmp_path / "lens.png", title=odd).stat().st_size > 0
    gen = torch.Generator().manual_seed(0)
    selections = torch.randint(1, 9, (2, 3, 4), generator=gen)
    stats = RouterStats([odd, "fr"], selections, selections.double(), selections.sum((1, 2)) // 2, top_k=2)
    assert write_router_stats(stats, tmp_path / "router")["plot"].stat().st_size > 0
    agreement = {"info": {"sizes": {odd: 3}}, "agreement": [
        {"method_a": odd, "method_b": "ap", "size": odd, "layer": layer, "jaccard": 0.5} for layer in range(3)]}
    plot_agreement(tmp_path / "agreement.png", agreement)
    assert (tmp_path / "agreement.png").stat().st_size > 0


@pytest.mark.parametrize("span, why", [("5:2", "is empty (START:STOP, stop excluded: need START < STOP)"),
                                       ("20:30", "starts past the end")])
def test_a_range_that_selects_nothing_is_named(tmp_path, capsys, span, why):
    en, fr = write(tmp_path / "en.txt", EN), write(tmp_path / "fr.txt", FR)
    rc = main(["detect", "--method", "lape", "--model", "tiny-random-llama", "--corpus", f"en={en}[{span}]",
               "--corpus", f"fr={fr}", "--out-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    assert one_line(capsys.readouterr().err, "detect") == (
        f"mwork detect: error: {en}[{span}]: the range {why}; {en} has 4 documents (0-3)")


def test_a_range_past_the_end_reads_what_there_is_and_says_so(tmp_path, capsys):
    en, fr = write(tmp_path / "en.txt", EN), write(tmp_path / "fr.txt", FR)
    assert main(["detect", "--method", "lape", "--model", "tiny-random-llama", "--corpus", f"en={en}[2:10]",
                 "--corpus", f"fr={fr}", "--out-dir", str(tmp_path / "o"), "--quiet"]) == 0
    assert f"mwork detect: warning: {en}[2:10]: {en} has only 4 documents; reading documents 2-3" in \
        capsys.readouterr().err


def test_an_article_range_that_selects_nothing_is_named(tmp_path, capsys):
    squad = tmp_path / "en.json"
    shutil.copy(XQUAD_EN, squad)
    fr = write(tmp_path / "fr.txt", FR)
    rc = main(["detect", "--method", "lape", "--model", "tiny-random-llama", "--corpus", f"en={squad}[50:60]",
               "--corpus", f"fr={fr}", "--out-dir", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    assert one_line(capsys.readouterr().err, "detect") == (
        f"mwork detect: error: {squad}[50:60]: the article range [50:60] starts past the end; {squad} has 48 "
        "articles (0-47)")
