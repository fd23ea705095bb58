"""The scoring side of the control experiment (mwork.control, issue #22): parallel items paired
across languages, the dev/test split, chrF against sacrebleu, the two-axis score by hand, and the
choice of a setting on dev. No model, no network: the tests/data subsets and hand-made lists."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys

import pytest
import sacrebleu

from mwork.control import (
    ParallelItem, choose_settings, chosen_test_rows, chrf, chrf_signature, combine_rows, corpus_chrf, detect_languages,
    first_sentence, forcing, harmonic_score, item_languages, item_measures, items_of_split, load_items,
    Fluency, Judged, ReferencePool, meaning_ratio, relative_meaning, score_row, split_items, split_of, split_value)
from mwork.data_sources import load_articles
from mwork.tasks.metrics import qa_f1
from tests.conftest import DATA_ROOTS, TEST_DATA

#: the languages both subsets have (tests/data/README.md)
XQUAD_SUBSET = ("en", "es", "de", "ru", "zh", "ar", "vi")
MGSM_SUBSET = ("en", "de", "fr", "zh", "ru", "ja", "bn")
YEAR = re.compile(r"(?<!\d)\d{4}(?!\d)")

# ---- chrF: sacrebleu's, with its command line's defaults --------------------------------------

PAIRS = [
    ("Das ist kein Test.", "Das ist ein Test."),
    ("Hallo, Welt!", "Hallo Welt"),
    ("В тибетском буддизме учителей называют ламами.", "В тибетском буддизме тибетские преподаватели Дхармы обычно называются ламами."),
    ("在藏传佛教中，法师被称为喇嘛。", "在藏传佛教中，西藏的法师通常被称为 喇嘛 。"),
    ("completely unrelated words", "En el budismo tibetano se llama lamas a los maestros."),
    ("", "Nothing was generated."),
]


def test_chrf_is_sacrebleus_sentence_and_corpus_chrf():
    for hyp, ref in PAIRS:
        assert chrf(hyp, ref) == pytest.approx(sacrebleu.sentence_chrf(hyp, [ref]).score, abs=1e-12)
        assert chrf(hyp, [ref]) == chrf(hyp, ref)
    assert chrf(PAIRS[0][0], [PAIRS[0][1], PAIRS[0][0]]) == pytest.approx(100.0)  # several references: the best
    hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
    assert corpus_chrf(hyps, refs) == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-12)
    # the corpus score sums statistics: it is not the mean of the sentence scores
    assert corpus_chrf(hyps, refs) != pytest.approx(sum(chrf(h, r) for h, r in PAIRS) / len(PAIRS))
    assert chrf(PAIRS[-1][0], PAIRS[-1][1]) == 0.0
    with pytest.raises(ValueError):
        corpus_chrf(hyps, refs[:-1])


def test_chrf_matches_the_sacrebleu_command_line_defaults(tmp_path):
    """``sacrebleu REF -i HYP -m chrf`` (no other option) gives our corpus score and signature, and
    ``--sentence-level`` our sentence scores: our use of chrF is the command line's default."""
    pairs = [p for p in PAIRS if p[0]]  # the command line reads lines: no empty hypothesis
    (tmp_path / "hyp.txt").write_text("".join(h + "\n" for h, _ in pairs), encoding="utf-8")
    (tmp_path / "ref.txt").write_text("".join(r + "\n" for _, r in pairs), encoding="utf-8")
    cmd = [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
           "-m", "chrf", "-w", "6"]
    corpus = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert corpus["name"] == "chrF2"
    assert corpus["signature"] == chrf_signature()
    assert corpus["score"] == pytest.approx(corpus_chrf([h for h, _ in pairs], [r for _, r in pairs]), abs=1e-5)
    lines = subprocess.run(cmd + ["--sentence-level"], capture_output=True, text=True, check=True,
                           timeout=120).stdout.splitlines()
    assert len(lines) == len(pairs)
    for line, (hyp, ref) in zip(lines, pairs):
        signature, score = line.split(" = ")
        assert signature == "chrF2|" + chrf_signature()
        assert float(score) == pytest.approx(chrf(hyp, ref), abs=1e-5)


# ---- the two axes and the score, by hand --------------------------------------------------------


def test_harmonic_score_by_hand():
    assert harmonic_score(1.0, 1.0) == 1.0
    assert harmonic_score(0.5, 1.0) == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert harmonic_score(0.8, 0.2) == pytest.approx(0.32)
    assert harmonic_score(0.25, 0.25) == pytest.approx(0.25)
    assert harmonic_score(0.0, 1.0) == 0.0 and harmonic_score(1.0, 0.0) == 0.0 and harmonic_score(0, 0) == 0.0
    for bad in ((1.2, 0.5), (0.5, -0.1), (float("nan"), 0.5), (0.5, None)):
        with pytest.raises(ValueError):
            harmonic_score(*bad)


def test_relative_meaning_rule_and_its_edge_cases():
    assert relative_meaning(0.2, 0.4) == pytest.approx(0.5)
    assert relative_meaning(0.4, 0.4) == 1.0
    # better than the unsteered model: capped at 1, the uncapped ratio kept beside
    assert relative_meaning(0.6, 0.4) == 1.0 and meaning_ratio(0.6, 0.4) == pytest.approx(1.5)
    # nothing kept: 0, whatever the unsteered model scored, 0 included
    assert relative_meaning(0.0, 0.4) == 0.0 and relative_meaning(0.0, 0.0) == 0.0
    # the unsteered model scored 0: defined, 1 for anything above 0; the ratio is None
    assert relative_meaning(0.3, 0.0) == 1.0 and meaning_ratio(0.3, 0.0) is None
    assert relative_meaning(25.0, 50.0) == pytest.approx(0.5)  # scale-free (chrF is 0-100)
    for bad in ((-0.1, 0.4), (0.1, -1.0), (float("nan"), 0.4), (0.2, float("inf"))):
        with pytest.raises(ValueError):
            relative_meaning(*bad)


def test_forcing_is_the_share_of_outputs_in_the_target():
    assert forcing(["es", "en", "unknown", "es"], "es") == 0.5
    assert forcing(["zh", "wuu"], "zh") == 0.5  # labels compared as the identifier gives them
    assert forcing(["en"], "es") == 0.0
    with pytest.raises(ValueError):
        forcing([], "es")


def test_languages_are_the_sentence_identifiers():
    assert detect_languages(["Bonjour à tous, comment allez-vous aujourd'hui ?", "1870", ""]) == ["fr", "unknown", "unknown"]

    class Fixed:
        def label(self, text):
            return "es" if text.startswith("es:") else "en"

    items = [_qa(0, "uno", "one"), _qa(1, "dos", "two")]
    row = score_row(items, ["es: uno", "dos"], ["one", "two"], detect_languages(["es: uno", "dos"], Fixed()))
    assert row["forcing"] == 0.5


def _qa(i: int, gold: str, source_gold: str, source: str = "en", target: str = "es") -> ParallelItem:
    return ParallelItem(id=f"t:{i}", item_set="xquad-qa", kind="qa", group=f"g:{i}", source=source, target=target,
                        fields={"context": "c", "question": "q"}, references=(gold,), source_references=(source_gold,))


def _text(i: int, ref: str, src: str) -> ParallelItem:
    return ParallelItem(id=f"m:{i}", item_set="mgsm-text", kind="text", group=f"m:{i}", source="en", target="de",
                        fields={"text": src}, references=(ref,), source_references=(src,))


def test_score_row_by_hand_for_qa():
    items = [_qa(0, "Pekín", "Beijing"), _qa(1, "1870", "1870"), _qa(2, "lagos azules", "blue lakes"),
             _qa(3, "la ciudad", "the city")]
    steered = ["Pekín", "1870", "lagos verdes", "nada"]  # F1 vs target: 1, 1, 0.5, 0; vs source: 0, 1, 0, 0
    unsteered = ["Beijing", "1870", "blue lakes", "ciudad"]  # F1 vs target: 0, 1, 0, 2/3; vs source: 1, 1, 1, 0
    languages = ["es", "unknown", "es", "es"]
    row = score_row(items, steered, unsteered, languages, fluency=Fluency([0.5, None, 1.0, 0.75], 3.5))
    assert row["n"] == 4 and row["measure"] == "f1_any" and row["kind"] == "qa"
    # the meaning measure is the better of the two languages' F1, per output
    assert row["steered"] == pytest.approx(2.5 / 4) and row["unsteered"] == pytest.approx((3 + 2 / 3) / 4)
    assert row["meaning_ratio"] == pytest.approx(2.5 / (3 + 2 / 3)) == row["meaning"]
    assert row["forcing"] == 0.75
    assert row["score"] == pytest.approx(2 * 0.75 * row["meaning"] / (0.75 + row["meaning"]))
    # each language's F1 beside it: target 2.5/4 vs (1 + 2/3)/4; source 0.25 vs 0.75
    assert row["f1"] == pytest.approx(2.5 / 4) and row["f1_unsteered"] == pytest.approx((1 + 2 / 3) / 4)
    assert row["f1_source"] == pytest.approx(0.25) and row["f1_source_unsteered"] == pytest.approx(0.75)
    assert row["meaning_source"] == pytest.approx(0.25 / 0.75)
    assert row["exact"] == pytest.approx(0.5) and row["exact_unsteered"] == pytest.approx(0.25)
    assert row["f1_any"] == row["steered"] and row["f1_any_unsteered"] == row["unsteered"]
    assert row["distinct_2"] == pytest.approx(0.75) and row["fluency"] == row["distinct_2"]
    assert row["perplexity"] == 3.5
    # each number is the official scorer's
    assert row["f1"] == pytest.approx(sum(qa_f1(o, [i.references[0]], "es") for i, o in zip(items, steered)) / 4)
    assert row["steered"] == pytest.approx(sum(max(qa_f1(o, [i.references[0]], "es"), qa_f1(o, [i.source_references[0]], "en"))
                                               for i, o in zip(items, steered)) / 4)

    # half as good as the unsteered model: meaning 0.5
    half = score_row(items[:2], ["Pekín", "no"], ["Pekín", "1870"], ["es", "es"])
    assert half["meaning"] == pytest.approx(0.5) and half["score"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    # nothing kept: meaning 0, score 0, although every output is in the target
    none = score_row(items, ["no"] * 4, unsteered, ["es"] * 4)
    assert none["meaning"] == 0.0 and none["score"] == 0.0 and none["forcing"] == 1.0
    # the unsteered model scores 0: any kept meaning counts as all of it; none as none
    zero_base = score_row(items[:1], ["Pekín"], ["nada"], ["es"])
    assert zero_base["meaning"] == 1.0 and zero_base["meaning_ratio"] is None and zero_base["score"] == 1.0
    assert score_row(items[:1], ["nada"], ["nada"], ["es"])["meaning"] == 0.0
    # the right answer left in the source language keeps the meaning; forcing says it is not the target's
    kept = score_row(items[:1], ["Beijing"], ["Beijing"], ["en"])
    assert kept["meaning"] == 1.0 and kept["forcing"] == 0.0 and kept["score"] == 0.0


def test_score_row_by_hand_for_text():
    items = [_text(0, "Janet hat 16 Enten.", "Janet has 16 ducks."), _text(1, "Er kauft 3 Hüte.", "He buys 3 hats."),
             _text(2, "Die Sonne scheint heute sehr hell.", "The sun is shining very brightly today.")]
    steered = ["Janet hat 16 Enten.", "Er kauft Hüte.", "Er kauft 3 Hüte."]
    unsteered = ["Janet has 16 ducks.", "He buys 3 hats.", "The sun shines brightly today."]
    row = score_row(items, steered, unsteered, ["de", "de", "de"])
    # match: closer by chrF to its own item's sentence (either language) than to every other item's
    def matches(out, own, side):
        refs = [(i.references if side == "target" else i.source_references)[0] for i in items]
        scores = [sacrebleu.sentence_chrf(out, [r]).score for r in refs]
        return all(scores[own] > s for j, s in enumerate(scores) if j != own)
    on = [float(matches(o, k, "target") or matches(o, k, "source")) for k, o in enumerate(steered)]
    off = [float(matches(o, k, "target") or matches(o, k, "source")) for k, o in enumerate(unsteered)]
    assert on == [1.0, 1.0, 0.0] and off == [1.0, 1.0, 1.0]  # the third says the second item's sentence
    assert row["measure"] == "match" and row["steered"] == pytest.approx(2 / 3) and row["unsteered"] == 1.0
    assert row["meaning"] == pytest.approx(2 / 3) and row["forcing"] == 1.0
    assert row["score"] == pytest.approx(2 * (2 / 3) / (1 + 2 / 3))
    assert row["match_target"] == pytest.approx(2 / 3)
    # names and numbers survive translation: a German sentence may single out its English one too
    assert row["match_source"] == pytest.approx(sum(matches(o, k, "source") for k, o in enumerate(steered)) / 3)
    assert row["match_source_unsteered"] == 1.0
    assert row["match_target_unsteered"] == pytest.approx(sum(matches(o, k, "target") for k, o in enumerate(unsteered)) / 3)
    s = [sacrebleu.sentence_chrf(o, [i.references[0]]).score for i, o in zip(items, steered)]
    assert row["chrf"] == pytest.approx(sum(s) / 3)
    u = [sacrebleu.sentence_chrf(o, [i.source_references[0]]).score for i, o in zip(items, unsteered)]
    assert row["chrf_source_unsteered"] == pytest.approx(sum(u) / 3)
    refs = [i.references[0] for i in items]
    assert row["corpus_chrf"] == pytest.approx(sacrebleu.corpus_chrf(steered, [refs]).score)
    assert row["distinct_2"] is None and row["fluency"] is None and row["perplexity"] is None
    pool = ReferencePool.of(items)
    assert item_measures(items[0], steered[0], pool=pool)["chrf"] == pytest.approx(100.0)
    # an output close to no sentence matches no item (a tie is no match)
    assert item_measures(items[0], "Zzz.", pool=pool)["match"] == 0.0
    assert item_measures(items[0], "", pool=pool)["match"] == 0.0
    # a pool given explicitly: the second item's sentence now has a rival closer to it
    rival = _text(3, "Er kauft 3 Hüte und Schuhe.", "He buys 3 hats and shoes.")
    wider = ReferencePool.of([*items, rival])
    assert score_row(items[1:2], ["Er kauft 3 Hüte und Schuhe."], ["He buys 3 hats."], ["de"],
                     pool=wider)["match"] == 0.0
    with pytest.raises(ValueError, match="pool"):
        item_measures(items[0], "x")
    with pytest.raises(ValueError, match="not in the reference pool"):
        item_measures(rival, "x", pool=pool)


def test_score_row_refuses_misaligned_or_mixed_input():
    items = [_qa(0, "a", "a"), _qa(1, "b", "b")]
    with pytest.raises(ValueError, match="outputs"):
        score_row(items, ["a"], ["a", "b"], ["es", "es"])
    with pytest.raises(ValueError, match="languages"):
        score_row(items, ["a", "b"], ["a", "b"], ["es"])
    with pytest.raises(ValueError, match="one item set"):
        score_row([items[0], _qa(2, "c", "c", target="de")], ["a", "c"], ["a", "c"], ["es", "de"])
    with pytest.raises(ValueError, match="no items"):
        score_row([], [], [], [])


def test_combine_rows_pools_forcing_and_averages_meaning():
    qa = {"n": 3, "item_set": "xquad-qa", "forcing": 1.0, "meaning": 0.5, "distinct_2": 0.6}
    text = {"n": 1, "item_set": "mgsm-text", "forcing": 0.0, "meaning": 1.0, "distinct_2": None}
    row = combine_rows([qa, text])
    assert row["n"] == 4 and row["item_set"] == "xquad-qa+mgsm-text"
    assert row["forcing"] == pytest.approx(0.75) and row["meaning"] == pytest.approx(0.75)
    assert row["score"] == pytest.approx(0.75) and row["distinct_2"] == pytest.approx(0.6)


# ---- the dev/test split ------------------------------------------------------------------------------


def _all_items(root) -> list[ParallelItem]:
    items = []
    for source, target in (("en", "es"), ("zh", "ru"), ("de", "en"), ("en", "en")):
        items += load_items("xquad-qa", source, target, root) + load_items("xquad-text", source, target, root)
    for source, target in (("en", "fr"), ("ru", "zh")):
        items += load_items("mgsm-text", source, target, root)
    return items


def test_split_is_disjoint_and_the_same_for_every_pair_and_order():
    items = _all_items(TEST_DATA)
    parts = split_items(items)
    dev_ids, test_ids = {i.id for i in parts["dev"]}, {i.id for i in parts["test"]}
    assert dev_ids and test_ids and not dev_ids & test_ids
    assert len(parts["dev"]) + len(parts["test"]) == len(items)
    # one split per item id, whatever the pair; one per group (a paragraph's questions and sentence)
    by_id: dict[str, set[str]] = {}
    by_group: dict[str, set[str]] = {}
    for split, chosen in parts.items():
        for item in chosen:
            by_id.setdefault(item.id, set()).add(split)
            by_group.setdefault(item.group, set()).add(split)
    assert all(len(s) == 1 for s in by_id.values()) and all(len(s) == 1 for s in by_group.values())
    assert any(i.item_set == "xquad-text" for i in parts["dev"]) and any(i.item_set == "xquad-qa" for i in parts["test"])
    # the order of loading changes nothing
    shuffled = list(items)
    random.Random(0).shuffle(shuffled)
    again = split_items(shuffled)
    assert {i.id for i in again["dev"]} == dev_ids and {i.id for i in again["test"]} == test_ids
    # order kept inside a split; items_of_split and its limit
    assert items_of_split(items, "dev") == parts["dev"]
    assert items_of_split(items, "test", limit=3) == parts["test"][:3]
    with pytest.raises(ValueError):
        items_of_split(items, "train")


def test_split_is_stable_across_runs_and_versions():
    """Pinned: the split of these keys must never change (it would silently move items from dev to test)."""
    assert split_value("mgsm:0000") == pytest.approx(0.1722069998733484, abs=1e-15)
    assert split_value("xquad-paragraph:56beb4343aeaaa14008c925b") == pytest.approx(0.5674063602788335, abs=1e-15)
    assert [split_of(f"mgsm:{n:04d}") for n in range(4)] == ["dev", "test", "dev", "dev"]
    assert split_of("xquad-paragraph:572734af708984140094dae3") == "dev"
    assert split_of("xquad-paragraph:56beb4343aeaaa14008c925b") == "test"
    # a larger dev fraction only moves groups from test to dev; 0 and 1 are all test / all dev
    keys = [f"k{i}" for i in range(2000)]
    for small, large in ((0.2, 0.5), (0.5, 0.8)):
        assert {k for k in keys if split_of(k, small) == "dev"} <= {k for k in keys if split_of(k, large) == "dev"}
    assert all(split_of(k, 0.0) == "test" for k in keys) and all(split_of(k, 1.0) == "dev" for k in keys)
    share = sum(split_of(k) == "dev" for k in keys) / len(keys)
    assert 0.45 < share < 0.55
    with pytest.raises(ValueError):
        split_of("k", 1.5)


# ---- items paired across languages ----------------------------------------------------------------


def _gold(root, lang: str) -> dict[str, tuple[str, list[str], str]]:
    """question id -> (its paragraph, its answers, the question), read straight from the SQuAD files."""
    return {qa["id"]: (p["context"], [a["text"] for a in qa["answers"]], qa["question"])
            for article in load_articles(lang, root) for p in article["paragraphs"] for qa in p["qas"]}


@pytest.mark.parametrize("root", DATA_ROOTS)
@pytest.mark.parametrize("source,target", [("en", "es"), ("zh", "en"), ("ru", "de"), ("en", "zh")])
def test_qa_items_pair_the_same_question_across_languages(root, source, target):
    items = load_items("xquad-qa", source, target, root)
    src, tgt = _gold(root, source), _gold(root, target)
    assert items and all(i.kind == "qa" and i.source == source and i.target == target for i in items)
    # evaluation articles only (24-47), every question the two languages share
    assert all(24 <= i.meta["article"] < 48 for i in items)
    assert len({i.id for i in items}) == len(items)
    numbers = 0
    for item in items:
        qid = item.id.removeprefix("xquad:")
        assert item.fields["context"] == src[qid][0] and item.references == tuple(tgt[qid][1])
        assert item.source_references == tuple(src[qid][1])
        assert item.fields["question"] == src[qid][2]
        # the same question: the years in an answer are the same years in both languages
        s, t = (set(YEAR.findall(refs[0])) for refs in (item.source_references, item.references))
        if s and t:
            numbers += 1
            assert s == t, item.id
    assert numbers >= 5
    # the pair the other way round: the same items, references swapped
    back = {i.id: i for i in load_items("xquad-qa", target, source, root)}
    assert set(back) == {i.id for i in items}
    for item in items:
        assert back[item.id].references == item.source_references and back[item.id].group == item.group


def test_text_items_pair_the_same_paragraph_and_problem():
    for source, target in (("en", "de"), ("zh", "ru"), ("ar", "vi")):
        items = load_items("xquad-text", source, target, TEST_DATA)
        qa = {i.id.removeprefix("xquad:"): i for i in load_items("xquad-qa", source, target, TEST_DATA)}
        tgt = _gold(TEST_DATA, target)
        assert len(items) >= 20  # of 24 paragraphs: a few pairs of unequal first sentences left out
        for item in items:
            qid = item.id.removeprefix("xquad-text:")
            assert item.group == qa[qid].group == f"xquad-paragraph:{qid}"
            assert qa[qid].fields["context"].strip().startswith(item.fields["text"])
            assert tgt[qid][0].strip().startswith(item.references[0])
            assert abs(item.meta["source_share"] - item.meta["target_share"]) <= 0.15
        every = load_items("xquad-text", source, target, TEST_DATA, max_share_gap=None)
        assert len(every) == 24 and {i.id for i in items} <= {i.id for i in every}
    for source, target in (("en", "fr"), ("zh", "bn"), ("ja", "ru")):
        items = load_items("mgsm-text", source, target, TEST_DATA)
        assert len(items) == 44 and [i.id for i in items] == [f"mgsm:{n:04d}" for n in range(44)]
        for item in items:  # the same problem: the same answer in both languages
            assert item.meta["answer"] == item.meta["target_answer"]
            assert item.group == item.id and item.references != item.source_references
    same = load_items("mgsm-text", "en", "en", TEST_DATA)
    assert all(i.references == i.source_references == (i.fields["text"],) for i in same)


def test_item_sets_refuse_what_they_cannot_pair():
    with pytest.raises(ValueError, match="sentence marks"):
        load_items("xquad-text", "en", "th", TEST_DATA)
    with pytest.raises(ValueError, match="unknown item set"):
        load_items("xquad", "en", "es", TEST_DATA)
    with pytest.raises(ValueError, match="no language"):
        load_items("mgsm-text", "en", "vi", TEST_DATA)
    assert "th" in item_languages("xquad-qa") and "th" not in item_languages("xquad-text")
    assert set(XQUAD_SUBSET) <= set(item_languages("xquad-text")) and "fr" in item_languages("mgsm-text")
    assert set(MGSM_SUBSET) - {"ja", "bn"} <= set(item_languages("mgsm-text"))


def test_first_sentence():
    assert first_sentence(" In 1973, Nixon named William E. Simon as the first Administrator. He was.") == \
        "In 1973, Nixon named William E. Simon as the first Administrator."
    assert first_sentence("The U.S. Army was there. Then it left.") == "The U.S. Army was there."
    assert first_sentence("It costs 3.5 dollars, e.g. here. Next.") == "It costs 3.5 dollars, e.g. here."
    assert first_sentence('He said "Stop." Then he went.') == 'He said "Stop."'
    assert first_sentence("在藏传佛教中，法师被称为 喇嘛 。通过有意识地决定投胎。") == "在藏传佛教中，法师被称为 喇嘛 。"
    assert first_sentence("كتب المؤرخ فريديريك و. موت أن. ثم") == "كتب المؤرخ فريديريك و. موت أن."
    assert first_sentence("Is it? Yes!") == "Is it?"
    assert first_sentence("No mark at all") == "No mark at all"


# ---- choosing a setting on dev ----------------------------------------------------------------------


def _row(lever, split, strength, score, layers="6-12", source="en", target="es"):
    return {"lever": lever, "source": source, "target": target, "split": split, "layers": layers,
            "strength": strength, "score": score}


def test_settings_are_chosen_on_dev_and_reported_on_test():
    rows = [
        _row("vectors", "dev", 4.0, 0.7), _row("vectors", "dev", 2.0, 0.7), _row("vectors", "dev", 1.0, 0.5),
        _row("vectors", "dev", 8.0, float("nan")),  # a row that met non-finite logits: never chosen
        _row("vectors", "test", 1.0, 0.99), _row("vectors", "test", 2.0, 0.6), _row("vectors", "test", 4.0, 0.65),
        _row("neurons", "dev", -1.0, 0.4), _row("neurons", "dev", 1.0, 0.4),  # tie: |strength| equal, smaller wins
        _row("neurons", "test", -1.0, 0.3), _row("neurons", "test", 1.0, 0.35),
        _row("prompt", "dev", None, 0.9, layers=None), _row("prompt", "test", None, 0.8, layers=None),
        _row("vectors", "dev", 2.0, 0.1, layers="0-6"),  # another layer range, worse
        _row("vectors", "dev", 2.0, 0.9, target="zh"), _row("vectors", "test", 2.0, 0.2, target="zh"),
    ]
    choices = choose_settings(rows)
    chosen = {(c["lever"], c["target"]): (c["layers"], c["strength"], c["dev_score"]) for c in choices}
    # the test score (0.99 at strength 1) plays no part; of the two best on dev, the smaller strength
    assert chosen[("vectors", "es")] == ("6-12", 2.0, 0.7)
    assert chosen[("neurons", "es")] == ("6-12", -1.0, 0.4)
    assert chosen[("prompt", "es")] == (None, None, 0.9)
    assert chosen[("vectors", "zh")] == ("6-12", 2.0, 0.9)
    test = chosen_test_rows(rows, choices)
    assert [(r["lever"], r["target"], r["strength"], r["score"], r["dev_score"]) for r in test] == [
        ("vectors", "es", 2.0, 0.6, 0.7), ("neurons", "es", -1.0, 0.3, 0.4), ("prompt", "es", None, 0.8, 0.9),
        ("vectors", "zh", 2.0, 0.2, 0.9)]
    assert all(r["split"] == "test" for r in test)
    assert chosen_test_rows(rows) == test  # choices made there when not given


def test_setting_choice_reads_csv_rows_and_can_choose_per_lever():
    # as read back from control.csv: every cell a string, empty for none
    rows = [{k: "" if v is None else str(v) for k, v in r.items()} for r in [
        _row("vectors", "dev", 1.0, 0.2, target="es"), _row("vectors", "dev", 2.0, 0.6, target="es"),
        _row("vectors", "dev", 1.0, 0.9, target="zh"), _row("vectors", "dev", 2.0, 0.4, target="zh"),
        _row("vectors", "test", 1.0, 0.3, target="es"), _row("vectors", "test", 1.0, 0.8, target="zh"),
        _row("vectors", "test", 2.0, 0.5, target="es"), _row("vectors", "test", 2.0, 0.45, target="zh"),
    ]]
    per_pair = choose_settings(rows)
    assert [(c["target"], c["strength"]) for c in per_pair] == [("es", "2.0"), ("zh", "1.0")]
    # one setting per lever: the mean dev score over the pairs, 1.0 -> 0.55, 2.0 -> 0.5
    per_lever = choose_settings(rows, per=("lever",))
    assert len(per_lever) == 1 and per_lever[0]["strength"] == "1.0"
    assert per_lever[0]["dev_score"] == pytest.approx(0.55) and per_lever[0]["dev_rows"] == 2
    test = chosen_test_rows(rows, per_lever, per=("lever",))
    assert sorted((r["target"], r["score"]) for r in test) == [("es", "0.3"), ("zh", "0.8")]
    # a chosen setting with no test row: an error, or left out
    dev_only = [r for r in rows if r["split"] == "dev"]
    with pytest.raises(ValueError, match="no test row"):
        chosen_test_rows(dev_only)
    assert chosen_test_rows(dev_only, strict=False) == []
    assert choose_settings([_row("x", "test", 1.0, 0.5)]) == []
    assert not math.isnan(per_lever[0]["dev_score"])


def test_a_judges_relevance_is_beside_the_measure_or_is_the_meaning():
    items = [_qa(0, "Pekín", "Beijing"), _qa(1, "1870", "1870")]
    judged = Judged([0.5, 1.0], [1.0, 1.0])
    row = score_row(items, ["Pekín", "no"], ["Beijing", "1870"], ["es", "es"], judged=judged)
    assert row["measure"] == "f1_any" and row["meaning"] == pytest.approx(0.5)  # the measure: (1 + 0) / 2 vs 1
    assert row["judge"] == pytest.approx(0.75) and row["judge_unsteered"] == 1.0
    assert row["meaning_judge"] == pytest.approx(0.75)
    primary = score_row(items, ["Pekín", "no"], ["Beijing", "1870"], ["es", "es"],
                        judged=Judged([0.5, 1.0], [1.0, 1.0], primary=True))
    assert primary["measure"] == "judge" and primary["meaning"] == pytest.approx(0.75)
    assert primary["score"] == pytest.approx(2 * 1.0 * 0.75 / 1.75) and primary["f1_any"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="judged steered"):
        score_row(items, ["a", "b"], ["a", "b"], ["es", "es"], judged=Judged([0.5], [1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_row(items, ["a", "b"], ["a", "b"], ["es", "es"], judged=Judged([0.5, 2.0], [1.0, 1.0]))
