"""The task runtime: one batching / distributed split for every query, TaskResult, perplexity as
a registered task, a task added from outside, evaluators and ``mwork ppl`` from Python."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pytest

from mwork.cli import main
from mwork.neurons.neuronset import NeuronSet
from mwork.tasks.common import Example, Task
from mwork.tasks.generation import loglikelihood
from mwork.tasks.perplexity import perplexity
from mwork.tasks.ppl_run import PplConfig, run_ppl
from mwork.tasks.registry import TASKS, evaluate_task, get_task, list_tasks, register_task
from mwork.tasks.results import TaskResult
from mwork.tasks.runtime import (LOGLIKELIHOOD, Generate, Loglikelihood, map_batches, perplexity_evaluator,
                                 right_padded, task_evaluator)

FIXTURES = Path(__file__).resolve().parent / "data"
TEXTS = ["The quick brown fox jumps over the lazy dog. Language models read and write many languages.",
         "Le renard brun saute.", "", "敏捷的棕色狐狸跳过了懒狗。", "1, 2, 3"]


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models.shared("tiny-random-llama")


def test_map_batches_sorts_batches_and_restores_order():
    lengths = [3, 9, 1, 9, 5]
    seen = []

    def run(rows):
        seen.append(list(rows))
        return [f"item{i}" for i in rows]

    out = map_batches(5, lambda i: -lengths[i], 2, run, desc="t", progress=False)
    assert out == [f"item{i}" for i in range(5)]
    assert seen == [[1, 3], [4, 0], [2]]  # longest first, stable among equals
    with pytest.raises(ValueError, match="batch_size"):
        map_batches(1, lambda i: 0, 0, run, desc="t")
    ids, mask = right_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_task_result_is_a_dataclass_and_plain_json():
    r = TaskResult.from_scores("t", "en", "accuracy", True, [1.0, 0.0, 1.0], [{"id": "a"}], exact_match=0.5)
    assert r.score == r["score"] == pytest.approx(2 / 3) and r.n == r["n"] == 3 and r["exact_match"] == 0.5
    assert list(r) == ["task", "lang", "metric", "higher_is_better", "score", "n", "exact_match", "records"]
    assert json.loads(json.dumps(r)) == r.to_dict() == r
    assert r.with_extra(few_shot=2)["few_shot"] == 2 and "few_shot" not in r
    with pytest.raises(TypeError, match="read-only"):
        r["score"] = 1.0
    with pytest.raises(ValueError, match="may not be named"):
        TaskResult.from_scores("t", "en", "m", True, [1.0], score=2.0)


def test_ppl_is_a_registered_task(tiny, tmp_path):
    model, tok = tiny
    assert list_tasks() == ["mgsm", "xcsqa", "xlsum", "xquad"] and "ppl" in list_tasks(benchmarks_only=False)
    task = get_task("perplexity")
    assert task is get_task("ppl") and task.asks == "rolling" and not task.higher_is_better
    direct = perplexity(model, tok, TEXTS, batch_size=2, max_length=12, per_text=True, progress=False)
    res = task.evaluate(model, tok, TEXTS, "en", batch_size=2, max_length=12, progress=False)
    assert res.score == direct["ppl"] and res.n == direct["tokens"] and res.metric == "perplexity"
    assert res["nll"] == direct["nll"] and res["empty_texts"] == [2]
    assert [{k: r[k] for k in ("nll_sum", "tokens")} for r in res.records] == direct["per_text"]
    folder = tmp_path / "held"
    folder.mkdir()
    (folder / "fr.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    via = evaluate_task("ppl", model, tok, "fr", folder, limit=4, batch_size=2, max_length=12, progress=False)
    assert via.score == perplexity(model, tok, TEXTS[:4], batch_size=2, max_length=12, progress=False)["ppl"]
    assert get_task("ppl").load("fr", folder / "fr.txt", limit=2)[1].fields["text"] == TEXTS[1]


class YesNo(Task):
    """A task from outside mwork: is the statement true? Scored by the likelier of ' yes' / ' no'."""

    name = "yesno-test"
    metric = "accuracy"
    hub_id = ""
    asks = LOGLIKELIHOOD

    def load(self, lang, source=None, *, limit=None):
        rows = [("Paris is in France.", 0), ("Two plus two is five.", 1)]
        return [Example(f"q{i}", lang, {"q": q}, t) for i, (q, t) in enumerate(rows)][:limit]

    def ask(self, tokenizer: Any, examples: Sequence[Example], lang: str) -> Loglikelihood:
        return Loglikelihood([(e.fields["q"], c) for e in examples for c in (" yes", " no")], info={"shots": 0})

    def score_answers(self, examples, query, answers, lang):
        picks = [0 if answers[2 * i][0] >= answers[2 * i + 1][0] else 1 for i in range(len(examples))]
        return self._result(lang, [float(p == e.target) for p, e in zip(picks, examples)],
                            [{"id": e.id, "pick": p} for e, p in zip(examples, picks)])


def test_a_task_registered_from_outside_runs_through_the_runtime(tiny):
    model, tok = tiny
    register_task(YesNo())
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_task(YesNo())
        res = evaluate_task("yesno-test", model, tok, "en", batch_size=3, progress=False)
        direct = loglikelihood(model, tok, YesNo().ask(tok, YesNo().load("en"), "en").pairs, progress=False)
        picks = [0 if direct[0][0] >= direct[1][0] else 1, 0 if direct[2][0] >= direct[3][0] else 1]
        assert [r["pick"] for r in res.records] == picks and res["shots"] == 0
        assert res.score == sum(p == t for p, t in zip(picks, (0, 1))) / 2

        class Liar(YesNo):
            name = "liar-test"

            def ask(self, tokenizer, examples, lang):
                return Generate(["x"], 1)

        with pytest.raises(TypeError, match="declares it asks 'loglikelihood'"):
            Liar().evaluate(model, tok, Liar().load("en"), "en", progress=False)
    finally:
        TASKS.pop("yesno-test", None)
    with pytest.raises(TypeError, match="mwork.tasks.common.Task"):
        register_task(object())  # type: ignore[arg-type]


def test_evaluators_fingerprint_their_examples(tiny):
    model, tok = tiny
    a = perplexity_evaluator(model, tok, {"en": TEXTS, "fr": TEXTS[:2]}, batch_size=2, max_length=12)
    b = perplexity_evaluator(model, tok, {"en": list(TEXTS), "fr": ["Le renard.", TEXTS[1]]}, batch_size=2,
                             max_length=12)
    assert a.inputs_digest("en") == b.inputs_digest("en") and a.inputs_digest("fr") != b.inputs_digest("fr")
    c = perplexity_evaluator(model, tok, {"en": TEXTS}, batch_size=3, max_length=12)
    assert c.inputs_digest("en") != a.inputs_digest("en")  # options count too
    assert a("en")["score"] == perplexity(model, tok, TEXTS, batch_size=2, max_length=12, progress=False)["ppl"]
    x = task_evaluator(model, tok, "xcsqa", ["en", "zh"], FIXTURES, limit=2, batch_size=2)
    assert x.inputs_digest("en") != x.inputs_digest("zh")
    assert x("zh") == get_task("xcsqa").evaluate(model, tok, get_task("xcsqa").load("zh", FIXTURES, limit=2), "zh",
                                                 batch_size=2, progress=False)


def test_run_ppl_equals_the_command(tmp_path, capsys, tiny):
    model, _ = tiny
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    path = NeuronSet.from_indices(model, {"ffn": {0: [1, 2]}, "q": {1: [3]}}, {"language": "xx"}).save(tmp_path / "xx")
    capsys.readouterr()
    args = ["--model", "tiny-random-llama", "--texts", str(texts), "--max-length", "12", "--random-like", str(path),
            "--kinds", "ffn", "--seed", "2", "--device", "cpu", "--out", str(tmp_path / "r.json")]
    assert main(["ppl", *args]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    api = run_ppl(PplConfig(model="tiny-random-llama", texts=str(texts), max_length=12, random_like=str(path),
                            kinds="ffn", seed=2, device="cpu"))
    assert json.loads((tmp_path / "r.json").read_text()) == cli
    cli.pop("seconds"), api.pop("seconds")
    assert api == cli and api["deactivated"] == 2
    with pytest.raises(ValueError, match="not both"):
        PplConfig(texts="x", neurons="a", random_like="b")
    assert main(["ppl", "--texts", str(texts), "--neurons", "a", "--random-like", "b"]) == 2
    assert main(["ppl", "--texts", str(texts), "--neurons", "a", "--layers", "9-3"]) == 2
    assert "bad layer spec" in capsys.readouterr().err
