"""Per-layer language shares of the logit lens, and the files a researcher reloads.

For one prompt and one lens layer, every decoded token (top-k at every decoded position) gets
a language label (:mod:`mwork.lens.langid`). Then

* ``english_share`` = English tokens / tokens of known language,
* ``non_english_share`` = 1 - english_share (same denominator),
* ``unknown_share`` = unknown tokens / all decoded tokens,
* per-language shares = that language's tokens / tokens of known language.

These are averaged over the prompts of each input language (a prompt with no known token at a
layer is left out of that layer's English / non-English / per-language means). ``n_tokens``
is the number of decoded tokens summed over the prompts, ``n_known`` those of known language.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mwork.lens.langid import ENGLISH, UNKNOWN, TokenLabeler
from mwork.lens.logit_lens import LensResult

CSV_HEADER = ("input_lang", "layer", "english_share", "non_english_share", "unknown_share", "n_tokens")


@dataclass
class LayerShares:
    layer: int
    english_share: float
    non_english_share: float
    unknown_share: float
    n_tokens: int
    n_known: int
    n_prompts: int  # prompts with at least one known token at this layer
    per_language: dict[str, float] = field(default_factory=dict)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def language_shares(
    result: LensResult, labeler: TokenLabeler, segment: str = "all"
) -> dict[str, list[LayerShares]]:
    """Input language -> per-layer shares (lens layer 0 .. num_layers), see the module doc.

    ``segment``: which decoded positions count: ``all``, ``prompt`` or ``generated``."""
    by_lang: dict[str, list[list[Counter]]] = {}
    for p in result.prompts:
        keep = p.segment_mask(segment)
        ids = p.topk_ids[:, keep]  # (layers, positions, k)
        by_lang.setdefault(p.lang, []).append([Counter(labeler.labels(ids[l].flatten().tolist()))
                                               for l in range(ids.shape[0])])
    shares: dict[str, list[LayerShares]] = {}
    n_layers = result.num_layers + 1
    for lang, prompts in by_lang.items():
        rows = []
        for layer in range(n_layers):
            counts = [c[layer] for c in prompts]
            totals = [sum(c.values()) for c in counts]
            knowns = [t - c[UNKNOWN] for c, t in zip(counts, totals)]
            # English, non-English and per-language means run over the prompts with known tokens
            known = [(c, k) for c, k in zip(counts, knowns) if k]
            english = _mean([c[ENGLISH] / k for c, k in known])
            codes = sorted({code for c, _ in known for code in c if code != UNKNOWN})
            per_language = {code: _mean([c[code] / k for c, k in known]) for code in codes}
            rows.append(LayerShares(
                layer=layer,
                english_share=english,
                non_english_share=1.0 - english,
                unknown_share=_mean([c[UNKNOWN] / t for c, t in zip(counts, totals) if t]),
                n_tokens=sum(totals),
                n_known=sum(knowns),
                n_prompts=len(known),
                per_language=per_language,
            ))
        shares[lang] = rows
    return shares


def write_csv(shares: dict[str, list[LayerShares]], path: str | Path) -> Path:
    """``input_lang,layer,english_share,non_english_share,unknown_share,n_tokens`` (one row per
    input language and lens layer)."""
    path = Path(path)
    from mwork.files import atomic_write

    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for lang, rows in shares.items():
            for r in rows:
                w.writerow([lang, r.layer, _fmt(r.english_share), _fmt(r.non_english_share),
                            _fmt(r.unknown_share), r.n_tokens])
    return path


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.6f}"


def _json_float(x: float) -> float | None:
    return None if math.isnan(x) else x


def shares_to_json(shares: dict[str, list[LayerShares]]) -> dict[str, Any]:
    out = {}
    for lang, rows in shares.items():
        out[lang] = []
        for r in rows:
            d = asdict(r)
            for key in ("english_share", "non_english_share", "unknown_share"):
                d[key] = _json_float(d[key])
            out[lang].append(d)
    return out


def read_shares(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Input language -> per-layer rows (dicts with at least the CSV columns), from a
    ``lens.csv``, a ``lens.json`` or a folder holding either."""
    path = Path(path)
    if path.is_dir():
        for name in ("lens.json", "lens.csv"):
            if (path / name).exists():
                return read_shares(path / name)
        raise FileNotFoundError(f"{path} holds neither lens.json nor lens.csv; run `mwork lens --out {path}` first")
    if not path.exists():
        raise FileNotFoundError(f"lens result {str(path)!r} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if "shares" not in data:
            raise ValueError(f"{path} is not a lens.json written by mwork (no 'shares' key)")
        return {lang: [{k: (math.nan if v is None else v) for k, v in row.items()} for row in rows]
                for lang, rows in data["shares"].items()}
    out: dict[str, list[dict[str, Any]]] = {}
    with path.open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_HEADER:
            raise ValueError(f"{path} does not have the lens.csv header {','.join(CSV_HEADER)}")
        for row in reader:
            out.setdefault(row["input_lang"], []).append({
                "layer": int(row["layer"]), "english_share": float(row["english_share"]),
                "non_english_share": float(row["non_english_share"]),
                "unknown_share": float(row["unknown_share"]), "n_tokens": int(row["n_tokens"]),
            })
    for rows in out.values():
        rows.sort(key=lambda r: r["layer"])
    return out


def examples(result: LensResult, tokenizer, per_lang: int = 1) -> list[dict[str, Any]]:
    """Readable samples: the top-1 token of every layer at the last prompt position (the one
    that produced the first generated token), for the first prompts of each language."""
    out, seen = [], Counter()
    for p in result.prompts:
        if seen[p.lang] >= per_lang or not p.positions:
            continue
        prompt_cols = [j for j, pos in enumerate(p.positions) if pos < p.n_prompt]
        if not prompt_cols:
            continue
        seen[p.lang] += 1
        j = prompt_cols[-1]
        out.append({
            "lang": p.lang, "prompt": p.text,
            "generated": tokenizer.decode(p.generated_ids, skip_special_tokens=True),
            "top1_per_layer": [tokenizer.decode([int(p.topk_ids[l, j, 0])]) for l in range(p.topk_ids.shape[0])],
        })
    return out


def write_json(
    result: LensResult, shares: dict[str, list[LayerShares]], path: str | Path, tokenizer=None,
    identifier_settings: dict[str, Any] | None = None, segment: str = "all", extra: dict[str, Any] | None = None,
) -> Path:
    """``lens.json``: settings, model, timing, per-layer shares with per-language detail, and
    per-prompt generations."""
    data: dict[str, Any] = {
        "model": result.model_name,
        "num_layers": result.num_layers,
        "lens_layers": "0 = input of decoder layer 0 (embedding output); i = output of decoder layer i-1",
        "top_k": result.top_k,
        "max_new_tokens": result.max_new_tokens,
        "segment": segment,
        "settings": result.settings,
        "identifier": identifier_settings or {},
        "timing": {"lens_seconds": round(result.seconds, 2)},
        "n_prompts": {lang: sum(p.lang == lang for p in result.prompts) for lang in result.languages},
        "shares": shares_to_json(shares),
    }
    if tokenizer is not None:
        data["examples"] = examples(result, tokenizer)
        data["prompts"] = [
            {"lang": p.lang, "text": p.text, "n_prompt_tokens": p.n_prompt, "n_positions": len(p.positions),
             "generated": tokenizer.decode(p.generated_ids, skip_special_tokens=True)}
            for p in result.prompts
        ]
    if extra:
        data.update(extra)
    path = Path(path)
    from mwork.files import write_text

    write_text(path, json.dumps(data, ensure_ascii=False, indent=1))
    return path
