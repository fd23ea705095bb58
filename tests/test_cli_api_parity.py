"""Every subcommand's work is callable from Python with the same result (issue 11: "the CLI adds
nothing the API cannot do"): each test runs one subcommand through ``mwork.cli.main`` and the
public API call with the same settings (the config dataclass built directly, and checked equal to
the one the CLI parses) into two folders, then compares the folders file by file:

* the same file names (the CLI's output lock ``.NAME.mwork-lock``, left beside an output *file*
  by ``mwork.files.output_lock``, holds no result and is not counted);
* identical bytes for every file but JSON, JSON Lines and safetensors (CSV, Markdown, PNG ...);
* safetensors: identical tensors (bit for bit, NaN included) and equal metadata;
* JSON / JSON Lines (and JSON-valued safetensors metadata): equal, where only the values of the
  fields a test names as ``volatile`` (dotted paths) are ignored; the field itself must be on both
  sides. They are all wall-clock durations, which no two runs of the same work share:
  lens: ``timing.load_seconds``, ``timing.lens_seconds``, ``timing.label_seconds`` (lens.json) and
  ``mwork_lens.seconds`` (lens_topk.safetensors' metadata); ppl: ``seconds`` (ppl.json and the
  printed line); experiment deactivation: ``info.elapsed_s`` (results.json); steer: ``elapsed_s``
  (summary.json); experiment methods: ``info.seconds`` (results.json; cost.csv's timings come from
  a fake clock, see the test). detect (plnd and lape) ignores nothing.

``mwork eval`` is left out: lm-eval names its files by the time of the run and takes ~10 s per
run on the tiny model; its shim is one line (``run_eval(from_args(EvalConfig, args))``).
"""

from __future__ import annotations

import json
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

import mwork
from mwork.cli import build_parser, main
from mwork.config import from_args
from mwork.neurons.neuronset import NeuronSet
from mwork.tasks.ppl_run import PplConfig

MODEL = "tiny-random-llama"
IGNORED = "<ignored: wall-clock time>"
DOCS = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read and write many languages.",
           "Quick numbers: 1, 2, 3, 10, 42, 100.", "Another line of English text."],
    "fr": ["Le renard brun saute par-dessus le chien paresseux.", "Les modèles de langue lisent le français.",
           "Des nombres: 1, 2, 3, 10, 42.", "Une autre ligne en français."],
    "zh": ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读和书写多种语言。", "快速的数字:一、二、三。", "另一行中文。"],
}
HELDOUT = {"en": ["A held-out English sentence.", "Something else entirely."],
           "fr": ["Une phrase française tenue à part.", "Autre chose, en français."]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Texts per language and language-specific sets of the tiny model, shared by both sides."""
    root = tmp_path_factory.mktemp("inputs")
    model, _ = mwork.load_model(MODEL, device="cpu")
    gen = torch.Generator().manual_seed(0)
    files: dict[str, Path] = {"sets": root / "sets", "texts": root / "texts", "heldout": root / "heldout"}
    files["texts"].mkdir()
    files["heldout"].mkdir()
    for lang, docs in DOCS.items():
        (files["texts"] / f"{lang}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        ns = NeuronSet.empty_for(model, {"language": lang})
        for k in ns.kinds:
            ns.masks[k] = torch.rand(ns.masks[k].shape, generator=gen) < 0.1
        ns.save(files["sets"] / lang)
    for lang, docs in HELDOUT.items():
        (files["heldout"] / f"{lang}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    files["prompts"] = root / "prompts.txt"
    files["prompts"].write_text("The quick brown fox\nLanguage models read\n", encoding="utf-8")
    return files


@pytest.fixture(autouse=True)
def api_side(tmp_path, monkeypatch):
    """Each side its own cache ($MWORK_CACHE), so neither reuses what the other computed: the CLI
    runs with the first; calling this fixture's value switches to the API's."""
    monkeypatch.setenv("MWORK_CACHE", str(tmp_path / "cache-cli"))
    return lambda: monkeypatch.setenv("MWORK_CACHE", str(tmp_path / "cache-api"))


def parsed(argv: list[str], cls: type, **overrides: Any) -> Any:
    """The config the CLI builds from ``argv`` (the pair must compare the same settings)."""
    return from_args(cls, build_parser().parse_args(argv), **overrides)


def _ignore(value: Any, volatile: frozenset[str], where: str = "") -> Any:
    """``value`` with the fields at the dotted paths ``volatile`` (``[]``: any list item) ignored."""
    if isinstance(value, dict):
        return {k: IGNORED if where + k in volatile else _ignore(v, volatile, f"{where}{k}.")
                for k, v in value.items()}
    if isinstance(value, list):
        return [_ignore(v, volatile, where[:-1] + "[].") for v in value]
    return value


def _json(text: str, volatile: frozenset[str] = frozenset()) -> Any:
    try:
        return _ignore(json.loads(text), volatile)
    except json.JSONDecodeError:
        return text


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaN included: statistics are NaN outside a set)."""
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)))


def _safetensors(path: Path, volatile: frozenset[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        return ({k: f.get_tensor(k) for k in f.keys()},
                _ignore({k: _json(v) for k, v in (f.metadata() or {}).items()}, volatile))


def _differences(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: only in {'cli' if k in a else 'api'}" for k in sorted(set(a) ^ set(b))]
        return out + [d for k in a if k in b for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: cli {a!r} != api {b!r}"]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.endswith(".mwork-lock"))


def assert_same_folders(cli: Path, api: Path, volatile: tuple[str, ...] = ()) -> list[str]:
    """The two folders hold the same files with the same contents, but for the values of the
    ``volatile`` JSON fields (dotted paths from the root of each JSON file or JSON Lines line, or
    of a safetensors file's metadata); returns the file names."""
    ignore = frozenset(volatile)
    names = _files(cli)
    assert names == _files(api)
    assert names, f"{cli} is empty"
    diffs: list[str] = []
    for name in names:
        a, b = cli / name, api / name
        if name.endswith(".json"):
            diffs += _differences(_json(a.read_text(encoding="utf-8"), ignore),
                                  _json(b.read_text(encoding="utf-8"), ignore), name)
        elif name.endswith(".jsonl"):
            la, lb = a.read_text(encoding="utf-8").splitlines(), b.read_text(encoding="utf-8").splitlines()
            diffs += _differences([_json(x, ignore) for x in la], [_json(x, ignore) for x in lb], name)
        elif name.endswith(".safetensors"):
            (ta, ma), (tb, mb) = _safetensors(a, ignore), _safetensors(b, ignore)
            diffs += [f"{name}: tensor {k}" for k in sorted(set(ta) | set(tb))
                      if k not in ta or k not in tb or not _same_tensor(ta[k], tb[k])]
            diffs += _differences(ma, mb, name + "(metadata)")
        elif a.read_bytes() != b.read_bytes():
            diffs.append(f"{name}: bytes differ")
    assert not diffs, "\n".join(diffs)
    return names


def test_the_comparison_can_fail(tmp_path):
    """assert_same_folders catches a changed value, a missing file and a volatile field on one side only."""
    for side, value in (("cli", 1), ("api", 2)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "a.json").write_text(json.dumps({"x": value, "seconds": value, "in": [{"seconds": 1}]}))
        (tmp_path / side / "b.csv").write_text("x\n1\n")
    with pytest.raises(AssertionError, match=r"a.json.x: cli 1 != api 2"):
        assert_same_folders(tmp_path / "cli", tmp_path / "api", ("seconds",))
    (tmp_path / "api" / "a.json").write_text(json.dumps({"x": 1, "in": [{"seconds": 1}]}))
    with pytest.raises(AssertionError, match=r"a.json.seconds: only in cli"):
        assert_same_folders(tmp_path / "cli", tmp_path / "api", ("seconds",))
    (tmp_path / "api" / "a.json").write_text(json.dumps({"x": 1, "seconds": 9, "in": [{"seconds": 2}]}))
    with pytest.raises(AssertionError, match=r"a.json.in\[0\].seconds: cli 1 != api 2"):  # another path: compared
        assert_same_folders(tmp_path / "cli", tmp_path / "api", ("seconds",))
    assert assert_same_folders(tmp_path / "cli", tmp_path / "api", ("seconds", "in[].seconds")) == ["a.json", "b.csv"]
    (tmp_path / "api" / "b.csv").write_text("x\n2\n")
    with pytest.raises(AssertionError, match="b.csv: bytes differ"):
        assert_same_folders(tmp_path / "cli", tmp_path / "api", ("seconds", "in[].seconds"))
    (tmp_path / "api" / "b.csv").unlink()
    with pytest.raises(AssertionError):
        assert_same_folders(tmp_path / "cli", tmp_path / "api", ("seconds",))


def test_lens(tmp_path, capsys, api_side):
    argv = ["lens", "--model", MODEL, "--out", str(tmp_path / "cli"), "--langs", "zh,fr", "--max-prompts", "2",
            "--max-new-tokens", "2", "--top-k", "3", "--latin-langs", "en,fr", "--device", "cpu"]
    assert main(argv) == 0
    api_side()
    config = mwork.LensConfig(model=MODEL, device="cpu", langs=("zh", "fr"), max_prompts=2, max_new_tokens=2,
                              top_k=3, latin_langs=("en", "fr"))
    assert parsed(argv, mwork.LensConfig) == config
    run = config.run()  # loads the model, timed (timing.load_seconds)
    run.write(tmp_path / "api")
    names = assert_same_folders(tmp_path / "cli", tmp_path / "api",
                                ("timing.load_seconds", "timing.lens_seconds", "timing.label_seconds",
                                 "mwork_lens.seconds"))
    assert set(names) == set(run.files) and run.english_table() in capsys.readouterr().out


def test_detect_plnd(tmp_path, inputs, api_side):
    corpus = str(inputs["texts"] / "fr.txt")
    argv = ["detect", "--model", MODEL, "--lang", "fr", "--corpus", corpus, "--out", str(tmp_path / "cli" / "fr"),
            "--max-length", "16", "--max-docs", "3", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    api_side()
    config = mwork.DetectConfig(language="fr", max_length=16)
    assert parsed(argv, mwork.DetectConfig, language="fr") == config
    model, tok = mwork.load_model(MODEL, device="cpu")
    ns = mwork.detect(model, tok, mwork.TextSource(path=corpus, max_docs=3), config, out=tmp_path / "api" / "fr",
                      model_id=MODEL, progress=False)
    assert assert_same_folders(tmp_path / "cli", tmp_path / "api") == ["fr.json", "fr.safetensors"]
    assert ns.count() > 0 and ns.meta["n_docs"] == 3


def test_detect_lape(tmp_path, inputs, api_side):
    from mwork.neurons.methods import LapeConfig

    specs = {lang: str(inputs["texts"] / f"{lang}.txt") for lang in ("en", "fr")}
    argv = ["detect", "--method", "lape", "--model", MODEL, "--out-dir", str(tmp_path / "cli"), "--quiet",
            "--lape-top-rate", "0.05", "--max-length", "16", "--max-docs", "3", "--device", "cpu",
            *[a for lang, f in specs.items() for a in ("--corpus", f"{lang}={f}")]]
    assert main(argv) == 0
    api_side()
    config = LapeConfig(top_rate=0.05, max_length=16)
    assert parsed(argv, LapeConfig) == config
    model, tok = mwork.load_model(MODEL, device="cpu")
    sets = mwork.detect_languages(model, tok, specs, "lape", config, out_dir=tmp_path / "api", progress=False,
                                  model_id=MODEL, corpus_options={"max_docs": 3})
    names = assert_same_folders(tmp_path / "cli", tmp_path / "api")
    assert names == ["en.json", "en.safetensors", "fr.json", "fr.safetensors"]
    assert sets["fr"].meta["corpus"]["spec"] == specs["fr"] and sets["fr"].meta["corpus"]["n_docs"] == 3


def test_ppl(tmp_path, inputs, capsys, api_side):
    texts, neurons = str(inputs["texts"] / "fr.txt"), str(inputs["sets"] / "fr.safetensors")
    argv = ["ppl", "--model", MODEL, "--texts", texts, "--neurons", neurons, "--kinds", "ffn", "--max-length", "16",
            "--device", "cpu", "--out", str(tmp_path / "cli" / "ppl.json")]
    assert main(argv) == 0
    api_side()
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (tmp_path / "api").mkdir()
    config = PplConfig(model=MODEL, texts=texts, neurons=neurons, kinds="ffn", max_length=16, device="cpu",
                       out=str(tmp_path / "api" / "ppl.json"))
    assert parsed(argv, PplConfig) == replace(config, out=str(tmp_path / "cli" / "ppl.json"))
    result = mwork.run_ppl(config)
    assert assert_same_folders(tmp_path / "cli", tmp_path / "api", ("seconds",)) == ["ppl.json"]
    assert _ignore(printed, frozenset({"seconds"})) == _ignore(result, frozenset({"seconds"}))


def test_experiment_deactivation(tmp_path, inputs, api_side):
    argv = ["experiment", "deactivation", "--model", MODEL, "--neurons", str(inputs["sets"]), "--task", "ppl",
            "--langs", "en,fr", "--out", str(tmp_path / "cli"), "--understanding", "1", "--generation", "1",
            "--seeds", "0", "--texts-dir", str(inputs["heldout"]), "--max-length", "16", "--device", "cpu"]
    assert main(argv) == 0
    api_side()
    config = mwork.DeactivationConfig(model=MODEL, neurons=str(inputs["sets"]), task="ppl", langs=("en", "fr"),
                                      out=str(tmp_path / "api"), understanding=1, generation=1, seeds=(0,),
                                      texts_dir=str(inputs["heldout"]), max_length=16, device="cpu")
    assert parsed(argv, mwork.DeactivationConfig) == replace(config, out=str(tmp_path / "cli"))
    result = mwork.run_deactivation(config)
    names = assert_same_folders(tmp_path / "cli", tmp_path / "api", ("info.elapsed_s",))
    assert {"table.csv", "table.md", "headline.csv", "results.json", "deactivation.png"} <= set(names) and result


def test_steer(tmp_path, inputs, api_side):
    argv = ["steer", "--model", MODEL, "--neurons", str(inputs["sets"] / "zh.safetensors"), "--target", "zh",
            "--prompts", str(inputs["prompts"]), "--source", "en", "--strengths", "0,1", "--seeds", "0",
            "--corpus", str(inputs["texts"] / "zh.txt"), "--max-new-tokens", "3", "--device", "cpu", "--no-progress",
            "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    api_side()
    config = mwork.SteerConfig(model=MODEL, neurons=str(inputs["sets"] / "zh.safetensors"), target="zh",
                               prompts=str(inputs["prompts"]), source="en", strengths=(0.0, 1.0), seeds=(0,),
                               corpus=str(inputs["texts"] / "zh.txt"), max_new_tokens=3, device="cpu", progress=False,
                               out=str(tmp_path / "api"))
    assert parsed(argv, mwork.SteerConfig) == replace(config, out=str(tmp_path / "cli"))
    result = mwork.run_steer(config)
    names = assert_same_folders(tmp_path / "cli", tmp_path / "api", ("elapsed_s",))
    assert {"steer.csv", "unsteered.csv", "generations.jsonl", "steer.png", "summary.json"} <= set(names)
    assert result["rows"]


def test_experiment_methods(tmp_path, inputs, monkeypatch, api_side):
    from mwork.experiments.methods import cost

    # cost.csv is wall-clock by nature: both sides read a clock that advances 1/1024 s per reading
    # (exact in binary), so every timing is the same and the cost files (and report.md's cost
    # table) compare exactly
    ticks = iter(range(10**9))
    monkeypatch.setattr(cost, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) / 1024))
    corpus = {lang: str(inputs["texts"] / f"{lang}.txt") for lang in ("en", "fr")}
    heldout = {lang: str(inputs["heldout"] / f"{lang}.txt") for lang in ("en", "fr")}
    specs = [a for lang in corpus for a in ("--corpus", f"{lang}={corpus[lang]}", "--heldout", f"{lang}={heldout[lang]}")]
    argv = ["experiment", "methods", "--model", MODEL, "--methods", "plnd,lape", "--sizes", "1%", "--seeds", "0",
            "--interventions", "zero", "--no-stability", "--cost-docs", "1", "--cost-repeats", "1",
            "--max-length", "16", "--eval-max-length", "16", "--quiet", "--device", "cpu",
            "--out", str(tmp_path / "cli"), *specs]
    assert main(argv) == 0
    api_side()
    config = mwork.MethodsConfig(model=MODEL, methods=("plnd", "lape"), sizes=("1%",), seeds=(0,),
                                 corpus=tuple(f"{lang}={path}" for lang, path in corpus.items()),
                                 heldout=tuple(f"{lang}={path}" for lang, path in heldout.items()),
                                 interventions=("zero",), stability=False, cost_docs=1, cost_repeats=1,
                                 max_length=16, eval_max_length=16, device="cpu", progress=False,
                                 out=str(tmp_path / "api"))
    args = build_parser().parse_args(argv)  # as the CLI does: the repeated options are corpus / heldout
    cli_config = from_args(mwork.MethodsConfig, args, corpus=tuple(args.corpus), heldout=tuple(args.heldout))
    assert cli_config == replace(config, out=str(tmp_path / "cli"))
    result = mwork.run_methods(config, progress=False)
    names = assert_same_folders(tmp_path / "cli", tmp_path / "api", ("info.seconds",))
    assert {"selectivity.csv", "summary.csv", "matrix.csv", "cost.csv", "report.md", "results.json"} <= set(names)
    assert result["selectivity"]
