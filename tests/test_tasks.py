"""Tests of the evaluation tasks: scoring on hand-made cases, number parsing, loaders on the
real data (the subsets in tests/data; the full sets too when $MWORK_DATA names them), log-likelihood
scoring and batched generation on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mwork.tasks import metrics
from mwork.tasks.common import Example, load_prompts, prompt_for
from mwork.tasks.generation import cut_at_stop, encode_pair, generate, loglikelihood
from mwork.tasks.registry import evaluate_task, get_task, list_tasks
from tests.conftest import DATA_ROOTS, FULL_DATA, TEST_DATA

DATA = FIXTURES = TEST_DATA
ROOTS = pytest.mark.parametrize("root", DATA_ROOTS, ids=lambda r: "test-data" if r == TEST_DATA else "full-data")


def _squad(root: Path, lang: str) -> list[dict]:
    """The articles of an XQuAD file, read here without the loader."""
    return json.loads((root / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))["data"]


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return tiny_models.shared("tiny-random-llama")


# ---- number parsing ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, lang, expected", [
    ("The answer is 18.", "en", 18),
    ("She makes $18 every day.", "en", 18),
    ("1,234", "en", 1234),
    ("1,234,567.89", "en", 1234567.89),
    ("1.234,5", "de", 1234.5),
    ("1.234", "en", 1.234),
    ("1.234", "de", 1234),
    ("3,5", "de", 3.5),
    ("３，５００", "zh", 3500),
    ("答案是 １８。", "zh", 18),
    ("-5", "en", -5),
    ("the total is −7", "en", -7),
    ("5-3=2", "en", 2),
    ("from 10-20", "en", 20),
    ("-0.25", "en", -0.25),
    ("12\u00a0345,5", "ru", 12345.5),
    ("1\u202f000\u202f000", "fr", 1_000_000),
    ("उत्तर १२ है", "hi", 12),
    ("উত্তর হল ১২৩", "bn", 123),
    ("คำตอบคือ ๔๕", "th", 45),
    ("١٢٣", "ar", 123),
    ("第3天有 70,000 元", "zh", 70000),
    ("1,2,3", "en", 3),
    ("2 + 2 = 4. Then 4 * 10 = 40.", "en", 40),
])
def test_last_number(text, lang, expected):
    assert metrics.last_number(text, lang, scoring="mwork") == pytest.approx(expected)


def test_number_edge_cases():
    assert metrics.last_number("no digits here", "en", scoring="mwork") is None
    assert metrics.extract_numbers("5-3=2", "en") == [5, 3, 2]
    assert metrics.extract_numbers("12\u00a05", "fr") == [12, 5]  # not a digit group: two numbers
    assert metrics.parse_number("2,125") == 2125
    with pytest.raises(ValueError):
        metrics.parse_number("1 and 2")
    assert metrics.numbers_equal(18, 18.0) and not metrics.numbers_equal(18, 18.5)
    assert not metrics.numbers_equal(None, 0)
    assert metrics.format_number(18.0) == "18" and metrics.format_number(2.5) == "2.5"


# ---- SQuAD F1 / EM ---------------------------------------------------------------------------

def test_squad_normalisation():
    assert metrics.normalize_answer("The  Denver Broncos!", "en", scoring="mwork") == "denver broncos"
    assert metrics.normalize_answer("the U.S.", "en", scoring="mwork") == "us"
    assert metrics.normalize_answer("«Die» Antwort.", "de", scoring="mwork") == "die antwort"  # articles dropped in English only
    assert metrics.normalize_answer("「黑色和黄色」。", "zh", scoring="mwork") == "黑色和黄色"
    assert metrics.normalize_answer("ＡＢＣ", "en", scoring="mwork") == "abc"  # full-width folded


def test_qa_f1_and_exact_match():
    assert metrics.qa_f1("Denver Broncos", ["Denver Broncos"], "en", scoring="mwork") == 1.0
    assert metrics.qa_exact("the Denver Broncos.", ["Denver Broncos"], "en", scoring="mwork") == 1.0
    assert metrics.qa_f1("Carolina Panthers", ["Denver Broncos"], "en", scoring="mwork") == 0.0
    assert metrics.qa_exact("Broncos", ["Denver Broncos"], "en", scoring="mwork") == 0.0
    # precision 1/1, recall 1/2 -> F1 2/3; max over golds
    assert metrics.qa_f1("Broncos", ["Denver Broncos", "Carolina"], "en", scoring="mwork") == pytest.approx(2 / 3)
    assert metrics.qa_f1("", ["x"], "en", scoring="mwork") == 0.0 and metrics.qa_f1("", [""], "en", scoring="mwork") == 1.0


def test_qa_character_tokenisation_for_zh():
    # whitespace does not matter in zh: characters are the tokens
    assert metrics.answer_tokens("北京 大学", "zh", scoring="mwork") == ["北", "京", "大", "学"]
    assert metrics.qa_exact("北京 大学", ["北京大学"], "zh", scoring="mwork") == 1.0
    # 2 of 3 predicted chars in a 4-char gold: P=2/3, R=2/4 -> F1 = 4/7
    assert metrics.qa_f1("北京市", ["北京大学"], "zh", scoring="mwork") == pytest.approx(4 / 7)
    # the same strings under whitespace tokenisation would share nothing
    assert metrics.qa_f1("北京市", ["北京大学"], "en", scoring="mwork") == 0.0


# ---- ROUGE-L ---------------------------------------------------------------------------------

def test_rouge_l_hand_computed():
    assert metrics.lcs_length("abcde", "ace") == 3
    r = metrics.rouge_l("the cat sat on the mat", "the cat is on a mat", "en", scoring="mwork")
    # LCS = the cat on mat (4) ; P = 4/6, R = 4/6
    assert r["f1"] == pytest.approx(4 / 6)
    assert metrics.rouge_l("Hello, World!", "hello world", "en", scoring="mwork")["f1"] == 1.0
    assert metrics.rouge_l("completely different", "nothing shared", "en", scoring="mwork")["f1"] == 0.0


def test_rouge_l_characters_for_zh():
    assert metrics.rouge_tokens("我爱北京。", "zh", scoring="mwork") == ["我", "爱", "北", "京"]
    r = metrics.rouge_l("我爱北京", "我爱上海", "zh", scoring="mwork")
    assert r["f1"] == pytest.approx(0.5)
    # Devanagari combining marks stay inside words (not split like punctuation)
    assert metrics.rouge_tokens("नमस्ते दुनिया", "hi", scoring="mwork") == ["नमस्ते", "दुनिया"]


# ---- task scoring on hand-made outputs ---------------------------------------------------------

def test_mgsm_scoring_right_and_wrong():
    task = get_task("mgsm")
    ex = [Example("a", "en", {"question": "q"}, 18.0), Example("b", "en", {"question": "q"}, 2125.0),
          Example("c", "en", {"question": "q"}, 7.0)]
    res = task.score(ex, ["16 - 3 - 4 = 9 eggs, 9 * 2 = 18. The answer is 18.", "The answer is 2,125.",
                          "It is 7 or maybe 8"], "en")
    assert [r["correct"] for r in res["records"]] == [True, True, False]
    assert res["score"] == pytest.approx(2 / 3) and res["n"] == 3 and res["metric"] == "accuracy"


def test_xquad_scoring():
    task = get_task("xquad")
    ex = [Example("a", "zh", {}, ["黑色和黄色"]), Example("b", "zh", {}, ["2015年"])]
    res = task.score(ex, ["黑色和黄色。", "1998年"], "zh", scoring="mwork")
    assert res["records"][0]["exact_match"] == 1.0 and res["records"][0]["f1"] == 1.0
    assert res["records"][1]["f1"] == pytest.approx(0.4)  # "1" and "年" shared: P = R = 2/5
    assert res["exact_match"] == 0.5


def test_xlsum_scoring():
    task = get_task("xlsum")
    ex = [Example("a", "en", {"text": "t"}, "A new library will open."), Example("b", "en", {"text": "t"}, "Rain floods villages.")]
    res = task.score(ex, ["A new library will open", "Sunny weather"], "en")
    assert res["records"][0]["rougeL_f1"] == 1.0 and res["records"][1]["rougeL_f1"] == 0.0
    assert res["score"] == pytest.approx(0.5) and res["metric"] == "rougeL_f1"


def test_xcsqa_scoring_from_logliks():
    task = get_task("xcsqa")
    ex = [Example("a", "en", {"question": "q", "choices": ["x", "yy", "z"]}, 1),
          Example("b", "en", {"question": "q", "choices": ["long answer", "s"]}, 0)]
    # a: choice 1 most likely -> right; b: raw picks the short choice, per-byte picks the long one
    res = task.score(ex, [-5.0, -1.0, -3.0, -4.0, -3.0], [1, 2, 1, 11, 1], "en")
    assert [r["prediction"] for r in res["records"]] == [1, 1]
    assert [r["prediction_norm"] for r in res["records"]] == [1, 0]
    assert res["score"] == 0.5 and res["accuracy_norm"] == 1.0


# ---- loaders on the real data --------------------------------------------------------------------

@ROOTS
@pytest.mark.parametrize("lang", ["en", "zh", "th"])
def test_xquad_loader_counts_and_article_split(root, lang):
    raw = _squad(root, lang)
    questions = sum(len(p["qas"]) for a in raw for p in a["paragraphs"])
    paragraphs = sum(len(a["paragraphs"]) for a in raw)
    held_out_questions = sum(len(p["qas"]) for a in raw[24:] for p in a["paragraphs"])
    if root == FULL_DATA:
        assert (questions, paragraphs) == (1190, 240)  # the published counts
    task = get_task("xquad")
    every = task.load(lang, root, articles=None)
    assert len(every) == questions
    assert len({e.meta["paragraph"] for e in every}) == paragraphs
    assert len({e.meta["article"] for e in every}) == 48
    held_out = task.load(lang, root)  # default: articles 24-47
    assert {e.meta["article"] for e in held_out} == set(range(24, 48)) and len(held_out) == held_out_questions
    detection = task.load(lang, root, articles=range(0, 24))
    assert len(held_out) + len(detection) == questions
    assert not {e.fields["context"] for e in held_out} & {e.fields["context"] for e in detection}
    assert task.load(lang, root, articles=(24, 26)) == [e for e in held_out if e.meta["article"] < 26]
    assert len(task.load(lang, root / "xquad" / f"xquad.{lang}.json", limit=40)) == 40
    first = held_out[0]
    assert isinstance(first.target, list) and first.target and first.fields["question"]


def test_xquad_ids_parallel_and_paragraphs():
    from mwork.tasks.xquad import load_paragraphs
    en, zh = get_task("xquad").load("en", DATA), get_task("xquad").load("zh", DATA)
    assert [e.id for e in en] == [e.id for e in zh]
    detection = [p["context"] for a in _squad(DATA, "zh")[:24] for p in a["paragraphs"]]  # articles 0-23
    assert load_paragraphs("zh", DATA) == detection and len(detection) == 24  # the subset: one paragraph each
    with pytest.raises(ValueError, match="articles are 0-47"):
        get_task("xquad").load("en", DATA, articles=[50])


@ROOTS
@pytest.mark.parametrize("lang", ["en", "zh", "bn"])
def test_mgsm_loader(root, lang):
    task = get_task("mgsm")
    ex = task.load(lang, root)
    lines = (root / "mgsm" / f"mgsm_{lang}.tsv").read_text(encoding="utf-8").splitlines()
    assert len(ex) == len(lines) and (root != FULL_DATA or len(ex) == 250)
    assert ex[0].target == 18 and ex[0].id == "mgsm-en-0000".replace("en", lang)
    assert 2125 in {e.target for e in ex}  # "2,125" in the file
    assert [e.id for e in task.load(lang, root, start=5, limit=3)] == [e.id for e in ex[5:8]]


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="MGSM has no language"):
        get_task("mgsm").load("xx", tmp_path)
    with pytest.raises(FileNotFoundError, match="mgsm_en.tsv"):
        get_task("mgsm").load("en", tmp_path)
    bad = tmp_path / "mgsm_en.tsv"
    bad.write_text("a question without answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match="question<TAB>answer_number"):
        get_task("mgsm").load("en", tmp_path)
    with pytest.raises(ValueError, match="no XLSum configuration"):
        get_task("xlsum").load("de", tmp_path)


def test_data_env_variable(monkeypatch):
    monkeypatch.setenv("MWORK_DATA", str(FIXTURES))
    assert len(get_task("xcsqa").load("en")) == 3


def test_xcsqa_fixture_loader_and_hub_form():
    from mwork.tasks.xcsqa import parse_record
    for lang in ("en", "zh"):
        ex = get_task("xcsqa").load(lang, FIXTURES)
        assert len(ex) == 3 and all(len(e.fields["choices"]) == 5 for e in ex)
        assert [e.target for e in ex] == [0, 2, 1]
    hub_row = {"id": "x", "question": {"stem": "s", "choices": {"label": ["A", "B"], "text": ["p", "q"]}}, "answerKey": "B"}
    assert parse_record(hub_row, "en", "row").target == 1
    with pytest.raises(ValueError, match="answerKey"):
        parse_record({**hub_row, "answerKey": ""}, "en", "row")


def test_xlsum_fixture_loader():
    ex = get_task("xlsum").load("zh", FIXTURES)
    assert len(ex) == 2 and ex[0].target.startswith("市中心")


# ---- prompts, registry, few-shot ----------------------------------------------------------------

@pytest.mark.parametrize("task, fields", [("mgsm", ["question"]), ("xquad", ["context", "question"]),
                                          ("xcsqa", ["question"]), ("xlsum", ["text"])])
def test_prompt_files_are_complete(task, fields):
    data = load_prompts(task)
    for lang, entry in data["languages"].items():
        for f in fields:
            assert "{" + f + "}" in entry["template"], (task, lang, f)
        entry["template"].format(**{f: "X" for f in fields})  # no stray braces
    assert set(get_task(task).languages()) == set(data["languages"])


def test_prompt_languages_cover_datasets():
    from mwork.tasks.mgsm import MGSM_LANGS
    from mwork.tasks.xcsqa import XCSQA_LANGS
    from mwork.tasks.xlsum import XLSUM_NAMES
    from mwork.tasks.xquad import XQUAD_LANGS
    assert set(MGSM_LANGS) <= set(get_task("mgsm").languages())
    assert set(XQUAD_LANGS) <= set(get_task("xquad").languages())
    assert set(XCSQA_LANGS) <= set(get_task("xcsqa").languages())
    assert set(XLSUM_NAMES) <= set(get_task("xlsum").languages())


def test_registry_errors():
    assert list_tasks() == ["mgsm", "xcsqa", "xlsum", "xquad"]
    assert get_task("X-CSQA").name == "xcsqa"
    with pytest.raises(ValueError, match="known tasks: mgsm, xcsqa, xlsum, xquad"):
        get_task("gsm8k")
    with pytest.raises(ValueError, match="prompts exist for"):
        prompt_for("mgsm", "xx")


def test_few_shot_prompts_and_overlap():
    task = get_task("mgsm")
    ex = [Example("q1", "zh", {"question": "一加一等于几？"}, 2.0)]
    texts, _ = task.build_prompts(ex, "zh", few_shot=2)  # built-in zh shots
    assert texts[0].count("问题：") == 3 and texts[0].endswith("问题：一加一等于几？\n逐步解答：")
    assert "答案是 7。" in texts[0]
    pool = [Example("p1", "zh", {"question": "二加二？"}, 4.0)]
    texts, _ = task.build_prompts(ex, "zh", few_shot=1, shots=pool)
    assert texts[0].startswith("问题：二加二？\n逐步解答：答案是 4。\n\n问题：一加一")
    with pytest.raises(ValueError, match="also evaluation examples"):
        task.build_prompts(ex, "zh", few_shot=1, shots=ex)
    with pytest.raises(ValueError, match="no built-in few-shot examples"):
        task.build_prompts([Example("q", "sw", {"question": "?"}, 1.0)], "sw", few_shot=1)


def test_xquad_shots_come_from_detection_articles():
    shots = get_task("xquad").load_shots("en", DATA, k=3)
    assert len(shots) == 3 and all(s.meta["article"] < 24 for s in shots)
    assert len({s.meta["paragraph"] for s in shots}) == 3
    ex = get_task("xquad").load("en", DATA, limit=1)
    texts, _ = get_task("xquad").build_prompts(ex, "en", few_shot=2, shots=shots)
    assert texts[0].count("\nAnswer:") == 3 and f"Answer: {shots[0].target[0]}\n\n" in texts[0]


# ---- generation and log-likelihood on tiny models ----------------------------------------------

def test_cut_at_stop():
    assert cut_at_stop(" Denver Broncos\nQuestion: x", ["\n"]) == "Denver Broncos"
    assert cut_at_stop("\n\n Paris\n", ["\n"]) == "Paris"  # leading newlines are not a stop
    assert cut_at_stop("a b Question: c", ["\n\n", "Question:"]) == "a b"
    assert cut_at_stop("  plain  ", []) == "plain"


PROMPTS = ["The quick brown fox", "Hi", "Language models read and write many languages. Le renard",
           "敏捷的棕色狐狸", "Quick numbers: 1, 2, 3"]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_generate_continuations_left_padding_batch_independent(arch, shared_tiny):
    model, tok = shared_tiny(f"tiny-random-{arch}")
    reference = []
    for p in PROMPTS:  # one prompt at a time: no padding at all
        enc = tok(p, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        reference.append(tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True).strip())
    assert tok.padding_side == "right"
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=5, progress=False)
    pairs = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=2, progress=False)
    assert tok.padding_side == "right"  # restored
    assert batched == pairs == reference
    assert not any(o.startswith(p) for o, p in zip(batched, PROMPTS))  # continuations only


def test_generate_stops_and_hooks_are_honoured(tiny):
    """evaluate() only calls forward/generate: a hook on the LM head steers every token."""
    model, tok = tiny
    newline = tok("\n", add_special_tokens=False).input_ids[-1]
    letter = tok("a", add_special_tokens=False).input_ids[-1]
    calls = []

    def force(token_ids):
        def hook(module, args, output):
            calls.append(1)
            bias = torch.full_like(output, -1e4)
            bias[..., token_ids[min(len(calls) - 1, len(token_ids) - 1)]] = 1e4
            return output + bias
        return hook

    head = model.get_output_embeddings()
    handle = head.register_forward_hook(force([letter, letter, newline, letter]))
    try:
        out = generate(model, tok, ["Hi"], max_new_tokens=10, stop=["\n"], batch_size=1, progress=False)
    finally:
        handle.remove()
    assert out == ["aa"] and len(calls) == 3  # stopped at the newline, not after 10 tokens


def _independent_loglik(model, tok, context, continuation):
    ctx, cont = encode_pair(tok, context, continuation)
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ctx + cont])).logits[0].double().log_softmax(-1)
    return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))


def test_encode_pair_splits_at_the_context(tiny):
    _, tok = tiny
    ctx, cont = encode_pair(tok, "Question: what?\nAnswer:", " the dog")
    assert tok.decode(cont) == " the dog"
    assert ctx == tok("Question: what?\nAnswer:").input_ids


def test_loglikelihood_matches_independent_computation(tiny):
    model, tok = tiny
    requests = [("Question: where?\nAnswer:", " cupboard"), ("Hi", " there friend"), ("The quick brown", " fox")]
    batched = loglikelihood(model, tok, requests, batch_size=3, progress=False)
    single = loglikelihood(model, tok, requests, batch_size=1, progress=False)
    for (ll, n), (ll1, _), (c, x) in zip(batched, single, requests):
        assert ll == pytest.approx(_independent_loglik(model, tok, c, x), abs=1e-4)
        assert ll == pytest.approx(ll1, abs=1e-4)
        assert n == len(encode_pair(tok, c, x)[1])


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_xcsqa_higher_likelihood_choice_wins(tiny, lang):
    model, tok = tiny
    task = get_task("xcsqa")
    prompt = prompt_for("xcsqa", lang)
    examples = task.load(lang, FIXTURES)
    best, worst = [], []
    for ex in examples:
        context = prompt["template"].format(question=ex.fields["question"])
        lls = [_independent_loglik(model, tok, context, prompt["choice"].format(choice=c)) for c in ex.fields["choices"]]
        best.append(Example(ex.id, lang, ex.fields, lls.index(max(lls))))
        worst.append(Example(ex.id, lang, ex.fields, lls.index(min(lls))))
    assert task.evaluate(model, tok, best, lang, progress=False)["score"] == 1.0
    res = task.evaluate(model, tok, worst, lang, batch_size=4, progress=False)
    assert res["score"] == 0.0 and res["chance"] == pytest.approx(0.2)


def test_generation_tasks_end_to_end_on_tiny_model(tiny):
    model, tok = tiny
    for name, source, lang in [("mgsm", DATA, "zh"), ("xquad", DATA, "zh"), ("xlsum", FIXTURES, "en")]:
        res = evaluate_task(name, model, tok, lang, source, limit=2, max_new_tokens=4, progress=False)
        assert res["n"] == 2 and 0.0 <= res["score"] <= 1.0 and len(res["records"]) == 2
        json.dumps(res)  # results are plain JSON


# ---- hub loaders, through a stand-in for the `datasets` package (no network) ------------------

@pytest.fixture
def fake_hub(monkeypatch):
    """Install a fake ``datasets`` module serving ``tables[(repo, config, split)]``."""
    import sys
    import types

    tables: dict = {}
    module = types.ModuleType("datasets")

    def load_dataset(repo, config=None, split=None):
        if (repo, config, split) not in tables:
            raise FileNotFoundError(f"{repo}/{config}/{split} is not on the fake hub")
        return tables[(repo, config, split)]

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    monkeypatch.delenv("MWORK_DATA", raising=False)
    return tables


def test_mgsm_from_hub(fake_hub):
    fake_hub[("juletxara/mgsm", "zh", "test")] = [{"question": "一加一？", "answer": None, "answer_number": 2}]
    fake_hub[("juletxara/mgsm", "zh", "train")] = [
        {"question": "问题：二加二？", "answer": "逐步解答：2 + 2 = 4。答案是 4。", "answer_number": 4}]
    ex = get_task("mgsm").load("zh")  # source=None and no MWORK_DATA: the hub
    assert ex == [Example("mgsm-zh-0000", "zh", {"question": "一加一？"}, 2.0)]
    shots = get_task("mgsm").load_shots("zh", "hub", k=1)
    assert shots[0].fields == {"question": "二加二？", "solution": "2 + 2 = 4。答案是 4。"}
    texts, _ = get_task("mgsm").build_prompts(ex, "zh", few_shot=1, shots=shots)
    assert texts[0] == "问题：二加二？\n逐步解答：2 + 2 = 4。答案是 4。\n\n问题：一加一？\n逐步解答："
    from mwork.tasks.common import HubLoadError
    with pytest.raises(HubLoadError, match="Pass source="):
        get_task("mgsm").load("en", "hub")


def _five_paragraphs_an_article(folder: Path) -> Path:
    """A data folder whose xquad.en.json has the full set's shape, 48 articles of 5 paragraphs:
    the full file when $MWORK_DATA has one, else the subset's paragraph of each article and four
    copies of it told apart (a suffix to the context, to the question ids)."""
    if FULL_DATA is not None:
        return FULL_DATA
    articles = [{"title": a["title"], "paragraphs": [
        {"context": p["context"] + (f" ({k})" if k else ""), "qas": [{**qa, "id": f"{qa['id']}-{k}"} for qa in p["qas"]]}
        for k in range(5) for p in a["paragraphs"][:1]]} for a in _squad(TEST_DATA, "en")]
    (folder / "xquad").mkdir(parents=True)
    (folder / "xquad" / "xquad.en.json").write_text(json.dumps({"data": articles}, ensure_ascii=False), encoding="utf-8")
    return folder


def test_xquad_from_hub_recovers_articles(fake_hub, tmp_path):
    source = _five_paragraphs_an_article(tmp_path / "full")
    local = _squad(source, "en")
    assert len(local) == 48 and {len(a["paragraphs"]) for a in local} == {5}
    fake_hub[("google/xquad", "xquad.en", "validation")] = [
        {"id": qa["id"], "context": p["context"], "question": qa["question"],
         "answers": {"text": [a["text"] for a in qa["answers"]], "answer_start": [a["answer_start"] for a in qa["answers"]]}}
        for art in local for p in art["paragraphs"] for qa in p["qas"]
    ]
    assert get_task("xquad").load("en", "hub") == get_task("xquad").load("en", source)
    from mwork.texts import xquad_texts  # the held-out texts come from the same loader

    assert xquad_texts("en", source="hub") == xquad_texts(source / "xquad" / "xquad.en.json")
    fake_hub[("google/xquad", "xquad.en", "validation")] = fake_hub[("google/xquad", "xquad.en", "validation")][:50]
    with pytest.raises(ValueError, match="cannot recover articles"):
        get_task("xquad").load("en", "hub")


def test_xcsqa_and_xlsum_from_hub(fake_hub):
    row = {"id": "q1", "lang": "jap", "question": {"stem": "s", "choices": {"label": ["A", "B"], "text": ["a", "b"]}},
           "answerKey": "A"}
    fake_hub[("INK-USC/xcsr", "X-CSQA-jap", "validation")] = [row]
    assert get_task("xcsqa").load("ja", "hub")[0].fields["choices"] == ["a", "b"]
    fake_hub[("csebuetnlp/xlsum", "chinese_simplified", "test")] = [{"id": "1", "text": "正文", "summary": "摘要"}]
    assert get_task("xlsum").load("zh", "hub")[0].target == "摘要"
