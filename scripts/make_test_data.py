#!/usr/bin/env python
"""Cut the small XQuAD and MGSM subsets the tests read (``tests/data``) from a full data folder.

    python scripts/make_test_data.py FULL_DATA tests/data

``FULL_DATA`` holds the released files in their usual layout: ``xquad/xquad.<lang>.json`` (SQuAD
JSON, 48 articles of 5 paragraphs) and ``mgsm/mgsm_<lang>.tsv`` (``question<TAB>answer_number``,
250 lines), each folder with its ``LICENSE``. The subsets keep that layout, so that code given
``tests/data`` as its data folder (``source=``, ``--data``, ``$MWORK_DATA``) reads them as it reads
the full sets. The cut (deterministic; the same items in every language, checked):

* XQuAD: all 48 articles (the loaders require them: articles 0-23 are for detection, 24-47 for
  evaluation), one paragraph each, the first ``--questions`` (4) questions of that paragraph.
  The paragraph is the one of the article with the most questions (counted up to 4: four
  questions make four-way multiple-choice items, ``mwork_xquad_mc_<lang>``, from one paragraph),
  then one whose kept questions have different first answers in every language (else an item
  lacks distractors), then the shortest in English, then the first. Answers (with
  ``answer_start``) and titles are kept as they are.
* MGSM: the first ``--mgsm-first`` (40) problems, and every problem whose answer is written with a
  thousands separator (``2,125``: the parsers must read it), in file order.

Languages: those the tests use (``--xquad-langs``, ``--mgsm-langs``). The licence files are copied
beside the subsets; tests/data/README.md describes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

XQUAD_LANGS = ("en", "es", "de", "ru", "zh", "ar", "vi", "th")
MGSM_LANGS = ("en", "de", "fr", "zh", "ru", "ja", "bn")
QUESTIONS = 4
MGSM_FIRST = 40


def _read_xquad(folder: Path, lang: str) -> dict:
    return json.loads((folder / f"xquad.{lang}.json").read_text(encoding="utf-8"))


def _distinct_answers(paragraph: dict, questions: int) -> bool:
    firsts = [qa["answers"][0]["text"].strip().lower() for qa in paragraph["qas"][:questions]]
    return len(set(firsts)) == len(firsts)


def xquad_picks(every: list[list[dict]], questions: int) -> list[int]:
    """Per article, the index of the paragraph to keep (module docstring); ``every``: the articles
    of each language, English first."""
    def rank(a: int, i: int) -> tuple:
        paragraph = every[0][a]["paragraphs"][i]
        return (-min(len(paragraph["qas"]), questions),
                not all(_distinct_answers(data[a]["paragraphs"][i], questions) for data in every),
                len(paragraph["context"]), i)

    return [min(range(len(article["paragraphs"])), key=lambda i: rank(a, i)) for a, article in enumerate(every[0])]


def cut_xquad(source: Path, out: Path, langs: tuple[str, ...], questions: int) -> dict[str, int]:
    english = _read_xquad(source, "en")["data"]
    fulls = {lang: _read_xquad(source, lang) for lang in langs}
    for lang, full in fulls.items():
        if len(full["data"]) != len(english):
            raise ValueError(f"xquad.{lang}.json has {len(full['data'])} articles, xquad.en.json {len(english)}")
    picks = xquad_picks([english] + [fulls[lang]["data"] for lang in langs], questions)
    ids = [[qa["id"] for qa in a["paragraphs"][k]["qas"][:questions]] for a, k in zip(english, picks)]
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for lang in langs:
        full = fulls[lang]
        data = []
        for a, (article, k) in enumerate(zip(full["data"], picks)):
            paragraph = article["paragraphs"][k]
            qas = paragraph["qas"][:questions]
            if [qa["id"] for qa in qas] != ids[a]:
                raise ValueError(f"xquad.{lang}.json article {a} paragraph {k}: not the English questions")
            data.append({"title": article.get("title", ""), "paragraphs": [{"context": paragraph["context"], "qas": qas}]})
        path = out / f"xquad.{lang}.json"
        path.write_text(json.dumps({"data": data, "version": full.get("version", "")}, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        sizes[path.name] = path.stat().st_size
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    return sizes


def mgsm_lines(english: list[str], first: int) -> list[int]:
    """The line indices to keep (module docstring)."""
    return [i for i, line in enumerate(english) if i < first or "," in line.rsplit("\t", 1)[-1]]


def cut_mgsm(source: Path, out: Path, langs: tuple[str, ...], first: int) -> dict[str, int]:
    english = (source / "mgsm_en.tsv").read_text(encoding="utf-8").splitlines()
    keep = mgsm_lines(english, first)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for lang in langs:
        lines = (source / f"mgsm_{lang}.tsv").read_text(encoding="utf-8").splitlines()
        if len(lines) != len(english):
            raise ValueError(f"mgsm_{lang}.tsv has {len(lines)} lines, mgsm_en.tsv {len(english)}")
        if [lines[i].rsplit("\t", 1)[-1] for i in keep] != [english[i].rsplit("\t", 1)[-1] for i in keep]:
            raise ValueError(f"mgsm_{lang}.tsv: the answers differ from mgsm_en.tsv's")
        path = out / f"mgsm_{lang}.tsv"
        path.write_text("".join(lines[i] + "\n" for i in keep), encoding="utf-8")
        sizes[path.name] = path.stat().st_size
    shutil.copyfile(source / "LICENSE", out / "LICENSE")
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="full data folder with xquad/ and mgsm/")
    p.add_argument("out", type=Path, help="where to write the subsets (tests/data)")
    p.add_argument("--xquad-langs", default=",".join(XQUAD_LANGS))
    p.add_argument("--mgsm-langs", default=",".join(MGSM_LANGS))
    p.add_argument("--questions", type=int, default=QUESTIONS, help="questions kept per XQuAD paragraph")
    p.add_argument("--mgsm-first", type=int, default=MGSM_FIRST, help="MGSM problems kept from the top")
    args = p.parse_args(argv)
    sizes = cut_xquad(args.source / "xquad", args.out / "xquad", tuple(args.xquad_langs.split(",")), args.questions)
    sizes |= cut_mgsm(args.source / "mgsm", args.out / "mgsm", tuple(args.mgsm_langs.split(",")), args.mgsm_first)
    for name, size in sizes.items():
        print(f"{size:8d}  {name}")
    print(f"{sum(sizes.values()):8d}  in all (licences not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
