"""The Language Confusion Benchmark's scorer (mwork.confusion.lcb) and ``mwork confusion score``:
every rule on hand-made completions, and the released completions (a subset in tests/data/lcb)
against a direct computation written here."""

from __future__ import annotations

import copy
import csv
import gzip
import hashlib
import json
import string
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from mwork.cli import main
from mwork.confusion.lcb import (ALL, COLUMNS, LcbConfig, Scorer, harmonic_mean, normalize, read_completions,
                                 read_word_list, score_completions, score_file, shipped_lid_model, write_result)

LCB = Path(__file__).resolve().parent / "data" / "lcb"
RELEASED = [LCB / "outputs" / "command-r.csv", LCB / "outputs" / "llama-2-instruct.csv"]

FR = "Il fait très beau aujourd'hui à Paris"  # fr, p 0.995
EN = "This is an English sentence with words"  # en, p 0.97


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer()


class StubIdentifier:
    """A line identifier whose answer is written in the line: ``"fr 90 ..."`` is fr with
    probability 0.9 (for rules about the threshold and the averages, free of a model's opinion)."""

    languages = frozenset({"en", "fr", "zh", "ja", "ru", "ar", "de"})
    path = Path("stub.bin")

    def scored(self, line: str) -> tuple[str, float]:
        lang, percent = line.split()[:2]
        return lang, int(percent) / 100

    def label(self, line: str, threshold: float = 0.3) -> str:
        lang, prob = self.scored(line)
        return lang if prob > threshold else "unknown"

    def settings(self) -> dict:
        return {"file": "stub"}


def stub_scorer(**config) -> Scorer:
    s = Scorer(LcbConfig(**config))
    s.identifier = StubIdentifier()
    return s


def line(lang: str, prob: float = 0.9, words: int = 5) -> str:
    """A line the stub labels ``lang`` with ``prob``; ``words`` tokens on whitespace."""
    return " ".join([lang, str(round(prob * 100))] + ["mot"] * (words - 2))


# ---- the rules, one at a time ---------------------------------------------------------------------


def test_the_completion_is_cut_at_the_first_newline_q(scorer):
    assert normalize(f"{FR}\nQ: {EN}\nQ: more") == "Il fait très beau aujourdhui à Paris"
    assert scorer.score(f"{FR}\nQ: {EN}", "fr").line_pass
    # only a new line that starts with "Q:" ends the answer
    assert not scorer.score(f"{FR}\n{EN} Q: and more", "fr").line_pass
    assert not scorer.score(f"{FR}\nq: {EN}", "fr").line_pass
    assert normalize("  \n Réponse\n\n") == "Réponse"


def test_punctuation_is_removed_as_the_benchmark_does():
    assert normalize("a!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~b") == "ab"
    assert normalize("un—deux") == "un deux"  # the em dash becomes a space
    assert normalize("واحد، اثنان") == "واحد اثنان"  # the Arabic comma is deleted
    assert normalize("你好，世界。") == "你好，世界。"  # other marks stay
    assert normalize("a – b") == "a – b"  # the en dash too


def test_punctuation_changes_which_lines_are_scored(scorer):
    # five punctuation "tokens" are not tokens once removed: the English line is too short to count
    assert scorer.score(f"{FR}\nOK . . . .", "fr").scored_lines == 1
    # em dashes split one whitespace token into five
    s = scorer.score(f"{FR}\nthis—is—an—English—line", "fr")
    assert (s.scored_lines, s.line_errors) == (2, 1)


def test_lines_under_five_tokens_are_not_scored(scorer):
    assert scorer.score(f"{FR}\nThis is English text", "fr").line_pass  # 4 tokens: not scored
    s = scorer.score(f"{FR}\nThis is English text indeed", "fr")  # 5 tokens: scored, wrong language
    assert (s.scored_lines, s.line_errors, s.line_pass) == (2, 1, False)
    # zh counts jieba's tokens, the spaces it yields included; ja counts MeCab's
    tokens = scorer.tokenizer.tokens
    assert tokens("我们今天去公园玩了一整天", "zh") == ["我们", "今天", "去", "公园", "玩", "了", "一整天"]
    assert tokens("a b", "zh") == ["a", " ", "b"]
    assert tokens("私は東京に住んでいます", "ja") == ["私", "は", "東京", "に", "住ん", "で", "い", "ます"]
    assert scorer.score("我们今天去公园", "zh").scored_lines == 0  # 我们 今天 去 公园: 4 tokens
    assert scorer.score("东京很大", "ja").scored_lines == 0
    assert scorer.score("私は東京に住んでいます", "ja").line_pass


def test_the_threshold_makes_unsure_lines_unknown(scorer):
    digits = "12 345 678 910 1112"  # lid.176.ftz: en with p 0.12
    assert scorer.identifier.label(digits) == "unknown"
    assert not scorer.score(f"{EN}\n{digits}", "en").line_pass
    low = Scorer(LcbConfig(threshold=0.1))
    assert low.identifier.label(digits, 0.1) == "en" and low.score(f"{EN}\n{digits}", "en").line_pass
    # a label counts only when its probability is *above* the threshold
    stub = stub_scorer()
    assert stub.score(line("fr", 0.31), "fr").line_pass
    assert not stub.score(line("fr", 0.3), "fr").line_pass
    assert stub_scorer(threshold=0.2).score(line("fr", 0.3), "fr").line_pass


def test_the_word_check(scorer):
    zh = "我喜欢用{}写程序和文章"
    assert scorer.score(zh.format("电脑"), "zh").word_pass is True
    assert scorer.score(zh.format("computer"), "zh").word_pass is False  # an English word
    assert scorer.score(zh.format("Computer"), "zh").word_pass is True  # the list's lower-case words only
    assert scorer.score(zh.format("the"), "zh").word_pass is True  # and only those longer than 3 letters
    ru = "Я люблю {} и книги каждый вечер"
    assert scorer.score(ru.format("книги"), "ru").word_pass is True
    assert scorer.score(ru.format("computer"), "ru").word_pass is False
    assert scorer.score("私は毎日computerで仕事をしています", "ja").word_pass is False
    # only the scored lines are searched: an English word in a short line does not count
    assert scorer.score(f"{zh.format('电脑')}\n好的 computer", "zh").word_pass is True
    # only for ar, hi, ja, ko, ru, zh; and only when the lines pass
    assert scorer.score(f"{FR} computer", "fr").word_pass is None
    failed = scorer.score(f"{zh.format('computer')}\n{EN}", "zh")
    assert not failed.line_pass and failed.word_pass is None


def test_the_shipped_word_list_is_the_benchmarks():
    words, record = read_word_list()
    assert record["sha256"] == "1ec8230beef2a7c955742b089fc3cea2833866cf5482bf018d7c4124eef104bd"
    assert (record["lines"], record["words_used"], len(words)) == (99171, 81995, 81995)
    assert "computer" in words and "the" not in words and "English" not in words


def test_a_word_list_of_ones_own(tmp_path):
    plain = tmp_path / "words.txt"
    plain.write_text("Paris\nbonjour\ncat\n", encoding="utf-8")
    gz = tmp_path / "words.txt.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, gz):
        words, record = read_word_list(path)
        assert words == {"bonjour"} and record["file"] == str(path)
    (tmp_path / "none.txt").write_text("A\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no lower-case word longer than three letters"):
        read_word_list(tmp_path / "none.txt")
    with pytest.raises(FileNotFoundError, match="cannot read the word list"):
        read_word_list(tmp_path / "missing.txt")


# ---- cells and averages -------------------------------------------------------------------------


def rows_by_key(rows) -> dict:
    return {(r["task"], r["source"], r["language"]): r for r in rows}


def test_cells_and_every_average():
    s = stub_scorer()
    recs = []

    def add(task, source, lang, texts):
        recs.extend({"task": task, "source": source, "language": lang, "completion": t} for t in texts)

    ok, bad_line = line("zh"), line("en")
    english = line("zh") + " computer"  # passes the lines, fails the word check
    add("mono", "a", "zh", [ok, ok, english, bad_line])  # LPR 3/4, WPR 2/3
    add("mono", "a", "fr", [line("fr"), line("en")])  # LPR 1/2, no WPR
    add("mono", "b", "zh", [ok, bad_line])  # LPR 1/2, WPR 1/1
    add("cross", "a", "fr", [line("fr"), f"{line('fr')}\n{line('fr', 0.2)}"])  # LPR 1/2 (an unknown line)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no empty completion here: no warning
        rows = score_completions(recs, scorer=s).rows
    got = rows_by_key(rows)
    cell = got[("mono", "a", "zh")]
    assert (cell["n"], cell["scored"], cell["line_pass"], cell["word_pass"]) == (4, 4, 3, 2)
    assert cell["lpr"] == 0.75 and cell["wpr"] == pytest.approx(2 / 3)
    assert cell["lcpr"] == pytest.approx(harmonic_mean(0.75, 2 / 3)) == pytest.approx(12 / 17)
    assert got[("mono", "a", "fr")]["wpr"] is None and got[("mono", "a", "fr")]["lcpr"] is None
    # per source: the mean over its cells; WPR over the cells that have one
    assert got[("mono", "a", ALL)]["lpr"] == pytest.approx((0.75 + 0.5) / 2)
    assert got[("mono", "a", ALL)]["wpr"] == pytest.approx(2 / 3)
    # per language: the mean over its cells
    assert got[("mono", ALL, "zh")]["lpr"] == pytest.approx((0.75 + 0.5) / 2)
    assert got[("mono", ALL, "zh")]["wpr"] == pytest.approx((2 / 3 + 1) / 2)
    # overall: the mean of the per-language averages (not of the cells: 0.5833 here)
    top = got[("mono", ALL, ALL)]
    assert top["lpr"] == pytest.approx(((0.75 + 0.5) / 2 + 0.5) / 2)
    assert top["wpr"] == pytest.approx((2 / 3 + 1) / 2)
    assert top["lcpr"] == pytest.approx(harmonic_mean(top["lpr"], top["wpr"]))
    assert (top["cells"], top["n"], top["scored"], top["line_pass"]) == (3, 8, 8, 5)
    assert got[("cross", ALL, ALL)]["lpr"] == 0.5 and got[("cross", ALL, ALL)]["wpr"] is None
    # with several tasks, task "all" is the mean of their overall rows
    assert got[(ALL, ALL, ALL)]["lpr"] == pytest.approx((top["lpr"] + 0.5) / 2)
    assert got[(ALL, ALL, ALL)]["wpr"] == pytest.approx(top["wpr"])
    # the order: per task, cells, then per source, per language, overall
    order = [(r["task"], r["source"], r["language"]) for r in rows]
    assert order[:6] == [("cross", "a", "fr"), ("cross", "a", ALL), ("cross", ALL, "fr"), ("cross", ALL, ALL),
                         ("mono", "a", "fr"), ("mono", "a", "zh")]
    assert order[-1] == (ALL, ALL, ALL)


def test_empty_completions_are_counted_but_not_scored():
    s = stub_scorer()
    recs = [{"source": "a", "language": "zh", "completion": line("zh")},
            {"source": "a", "language": "zh", "completion": ""},
            {"source": "a", "language": "zh", "completion": None},
            {"source": "a", "language": "zh", "completion": "  \n\nQ: next question here please now"},
            {"source": "b", "language": "zh", "completion": ""}]
    with pytest.warns(UserWarning, match=r"4 completions are empty \(rows 2, 3, 4, 5\).*not in LPR or WPR"):
        result = score_completions(recs, scorer=s)
    got = rows_by_key(result.rows)
    a = got[("", "a", "zh")]
    assert (a["n"], a["scored"], a["lpr"], a["wpr"]) == (4, 1, 1.0, 1.0)
    b = got[("", "b", "zh")]  # nothing to count: no rate, and out of the averages
    assert (b["n"], b["scored"], b["lpr"], b["wpr"], b["lcpr"]) == (1, 0, None, None, None)
    assert got[("", ALL, "zh")]["lpr"] == 1.0
    assert result.metadata["empty_completions"] == 4
    # the benchmark's script writes 100 % there instead
    with pytest.warns(UserWarning):
        official = rows_by_key(score_completions(recs, scorer=stub_scorer(undefined_as_pass=True)).rows)
    assert (official[("", "b", "zh")]["lpr"], official[("", "b", "zh")]["wpr"]) == (1.0, 1.0)


def test_a_wpr_with_no_line_passing_completion_is_undefined():
    recs = [{"source": "a", "language": "ru", "completion": line("en")}]
    cell = rows_by_key(score_completions(recs, scorer=stub_scorer()).rows)[("", "a", "ru")]
    assert (cell["lpr"], cell["wpr"], cell["lcpr"]) == (0.0, None, None)
    cell = rows_by_key(score_completions(recs, scorer=stub_scorer(undefined_as_pass=True)).rows)[("", "a", "ru")]
    assert (cell["lpr"], cell["wpr"], cell["lcpr"]) == (0.0, 1.0, 0.0)


def test_unknown_languages_and_bad_rows_are_errors(scorer):
    with pytest.raises(ValueError, match=r"unknown language 'xx' \(row 2\).*lid.176.ftz"):
        score_completions([{"source": "a", "language": "fr", "completion": FR},
                           {"source": "a", "language": "xx", "completion": FR}], scorer=scorer)
    with pytest.raises(ValueError, match="unknown language 'zh-CN'"):
        scorer.score(FR, "zh-CN")
    with pytest.raises(ValueError, match="row 1 has no language"):
        score_completions([{"source": "a", "language": " ", "completion": FR}], scorer=scorer)
    with pytest.raises(ValueError, match="'all' is the name lcb.csv gives to averages"):
        score_completions([{"source": "all", "language": "fr", "completion": FR}], scorer=scorer)


def test_config_is_checked(tmp_path, scorer):
    with pytest.raises(ValueError, match="--threshold"):
        LcbConfig(threshold=1.5)
    with pytest.raises(ValueError, match="--min-tokens"):
        LcbConfig(min_tokens=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Scorer(LcbConfig(lid_model="/nonexistent/lid.176.bin"))
    foreign = tmp_path / "model.bin"
    foreign.write_bytes(b"not a model" * 10)
    with pytest.raises(ValueError, match="is not a fastText model file"):
        Scorer(LcbConfig(lid_model=str(foreign)))
    with pytest.raises(ValueError, match="give the settings once"):
        score_completions([{"source": "a", "language": "fr", "completion": FR}], LcbConfig(threshold=0.5), scorer)


# ---- files and the command ------------------------------------------------------------------------


def test_csv_without_the_needed_columns(tmp_path, scorer):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text,lang\n0,Bonjour,fr\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"has no completion, source, language columns \(found: id, text, lang\)"):
        read_completions(bad)
    one = tmp_path / "one.csv"
    one.write_text("completion,language\nBonjour,fr\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no source column"):
        score_file(one, scorer=scorer)
    header = tmp_path / "header.csv"
    header.write_text("completion,source,language\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has a header but no completions"):
        read_completions(header)


def test_cli_writes_lcb_csv_and_json(tmp_path, capsys):
    src = tmp_path / "c.csv"
    src.write_text("completion,source,language\n"
                   f"\"{FR}\",s,fr\n\"{EN}\",s,fr\n,s,fr\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["confusion", "score", str(src), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 completion is empty (data row 3)" in captured.err
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert printed["overall"][""]["lpr"] == 0.5
    with open(out / "lcb.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS
    assert [(r["source"], r["language"], r["n"], r["scored"], r["lpr"], r["wpr"], r["lcpr"]) for r in rows] == [
        ("s", "fr", "3", "2", "0.5", "", ""), ("s", ALL, "3", "2", "0.5", "", ""),
        (ALL, "fr", "3", "2", "0.5", "", ""), (ALL, ALL, "3", "2", "0.5", "", "")]
    meta = json.loads((out / "lcb.json").read_text(encoding="utf-8"))
    model = shipped_lid_model()
    assert meta["lid_model"]["name"] == "lid.176.ftz" and meta["lid_model"]["labels"] == 176
    assert meta["lid_model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert meta["settings"] == {"threshold": 0.3, "min_tokens": 5, "lid_model": None, "words": None,
                                "undefined_as_pass": False}
    assert meta["words"]["words_used"] == 81995 and meta["empty_completions"] == 1
    assert meta["input_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,source,language\nBonjour,s,fr\n", encoding="utf-8")
    assert main(["confusion", "score", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mwork confusion: error: ") and "no completion column" in err[0]
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"completion,source,language\n\"{FR}\",s,french\n", encoding="utf-8")
    assert main(["confusion", "score", str(unknown), "--out", str(tmp_path / "o")]) == 2
    assert "unknown language 'french' (data row 1)" in capsys.readouterr().err
    assert main(["confusion", "score", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read the completions file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["confusion", "score", str(bad), "--out", str(tmp_path / "o"), "--threshold", "x"])


# ---- the released completions against a direct computation -----------------------------------------


@pytest.fixture(scope="module")
def tools():
    """The tools themselves, loaded here: fastText, jieba, MeCab, the word list."""
    from importlib import resources

    import fasttext
    import fugashi
    import jieba
    import unidic_lite

    lid = fasttext.load_model(str(shipped_lid_model()))
    zh = jieba.Tokenizer()
    ja = fugashi.Tagger(f'-O wakati -b 50000 -r "{unidic_lite.DICDIR}/mecabrc" -d "{unidic_lite.DICDIR}"')
    raw = gzip.decompress(resources.files("mwork").joinpath("data", "lcb", "english_words.txt.gz").read_bytes())
    english = {w.strip() for w in raw.decode().split("\n") if w.strip().islower() and len(w.strip()) > 3}
    return lid, zh, ja, english


def direct_scores(path: Path, tools) -> dict:
    """The benchmark's rules computed here, directly from the tools, for comparison."""
    lid, zh, ja, english = tools
    counts: dict = defaultdict(lambda: [0, 0, 0])  # scored, line errors, word errors
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            lang = row["language"]
            text = row["completion"].split("\nQ:")[0].strip()
            text = "".join(" " if c == "—" else c for c in text if c not in string.punctuation and c != "،")
            kept = []
            for ln in text.split("\n"):
                toks = list(zh.cut(ln)) if lang == "zh" else ja.parse(ln).split() if lang == "ja" else ln.split()
                if len(toks) >= 5:
                    kept.append((ln, toks))
            if not kept:
                continue
            c = counts[(row["task"], row["source"], lang)]
            c[0] += 1
            wrong = 0
            for ln, _ in kept:
                (label,), (p,) = lid.predict(ln)
                wrong += (label[len("__label__"):] if p > 0.3 else "unknown") != lang
            if wrong:
                c[1] += 1
            elif any(t.strip() in english for _, toks in kept for t in toks):
                c[2] += 1
    out = {}
    for (task, source, lang), (scored, line_err, word_err) in counts.items():
        lpr = 1 - line_err / max(1, scored)
        wpr = 1 - word_err / max(1, scored - line_err) if lang in ("ar", "hi", "ja", "ko", "ru", "zh") else None
        out[(task, source, lang)] = (lpr, wpr)
    return out


def direct_averages(cells: dict) -> dict:
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    out = dict(cells)
    for task in {k[0] for k in cells}:
        mine = {k[1:]: v for k, v in cells.items() if k[0] == task}
        for source in {s for s, _ in mine}:
            vals = [v for (s, _), v in mine.items() if s == source]
            out[(task, source, ALL)] = (mean([v[0] for v in vals]), mean([v[1] for v in vals]))
        langs = {}
        for lang in {lang for _, lang in mine}:
            vals = [v for (_, g), v in mine.items() if g == lang]
            langs[lang] = out[(task, ALL, lang)] = (mean([v[0] for v in vals]), mean([v[1] for v in vals]))
        out[(task, ALL, ALL)] = (mean([v[0] for v in langs.values()]), mean([v[1] for v in langs.values()]))
    return out


@pytest.mark.parametrize("path", RELEASED, ids=lambda p: p.stem)
def test_released_completions_match_a_direct_computation(path, scorer, tools, tmp_path):
    # the benchmark's script fills empty denominators with 100 %: compare with the same setting
    official = copy.copy(scorer)
    official.config = LcbConfig(undefined_as_pass=True)
    result = score_file(path, scorer=official)
    csv_path, _ = write_result(result, tmp_path)
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    expected = direct_averages(direct_scores(path, tools))
    got = {(r["task"], r["source"], r["language"]): r for r in rows if r["task"] != ALL}
    assert set(got) == set(expected)
    for key, (lpr, wpr) in expected.items():
        assert float(got[key]["lpr"]) == pytest.approx(lpr, abs=1e-12), key
        assert (got[key]["wpr"] == "") == (wpr is None), key
        if wpr is not None:
            assert float(got[key]["wpr"]) == pytest.approx(wpr, abs=1e-12), key
    models = {r["model"] for r in rows}
    assert models == {path.stem}
    # and by default a WPR with no line-passing completion is left empty, out of the averages
    default = rows_by_key(score_file(path, scorer=scorer).rows)
    for key, row in default.items():
        if row["source"] != ALL and row["language"] in ("ar", "hi", "ja", "ko", "ru", "zh"):
            assert (row["wpr"] is None) == (row["line_pass"] == 0)
