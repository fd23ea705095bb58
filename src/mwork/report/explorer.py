"""The layer explorer: for each prompt a grid of the top-1 decoded token of every lens layer (rows)
at every input and generated position (columns), coloured by its language; hovering, tapping or
focusing a cell shows its top-k tokens with probabilities; beside it the English and
input-language share per layer with the estimated understanding / generation boundaries.

Drawn by the page's script from a compact JSON value built here from ``lens_explorer.json``
(:mod:`mwork.lens.explorer`) and ``lens.json``; the page keeps a few prompts per language and
the top few tokens per cell, so it stays small (:data:`PROMPTS_PER_LANGUAGE`, :data:`TOP_K`,
:data:`MAX_POSITIONS`).
"""

from __future__ import annotations

import math
from typing import Any

from mwork.report.format import LANGUAGE_NAMES
from mwork.report.html import Markup, el

PROMPTS_PER_LANGUAGE = 3
TOP_K = 5
MAX_POSITIONS = 48  # columns per prompt (the first ones); longer prompts are cut, and the page says so


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else round(x, 4)


def explorer_value(data: dict[str, Any], lens_info: dict[str, Any] | None,
                   shares_csv: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The page's value for the explorer: the first :data:`PROMPTS_PER_LANGUAGE` prompts of each
    language, the top :data:`TOP_K` tokens of each cell, a vocab table of only the tokens used,
    the per-layer shares of each input language and the region estimate."""
    n_layers = int(data["num_layers"]) + 1
    k_file = int(data["top_k"])
    k = min(TOP_K, k_file)
    vocab_in = data["vocab"]
    index: dict[int, int] = {}
    vocab: list[list[str]] = []

    def ref(v: int) -> int:
        if v not in index:
            index[v] = len(vocab)
            vocab.append([str(vocab_in[v][1]), str(vocab_in[v][2])])
        return index[v]

    per_lang: dict[str, int] = {}
    prompts = []
    for p in data["prompts"]:
        lang = str(p["lang"])
        if per_lang.get(lang, 0) >= PROMPTS_PER_LANGUAGE:
            continue
        per_lang[lang] = per_lang.get(lang, 0) + 1
        n_pos = len(p["positions"])
        keep = min(n_pos, MAX_POSITIONS)
        top, prob = [], []
        for layer in range(n_layers):
            for j in range(keep):
                base = (layer * n_pos + j) * k_file
                top.extend(ref(v) for v in p["top"][base:base + k])
                prob.extend(p["prob"][base:base + k])
        prompts.append({"lang": lang, "text": p["text"], "n_prompt": int(p["n_prompt"]),
                        "tokens": [ref(v) for v in p["tokens"]], "positions": p["positions"][:keep],
                        "top": top, "prob": prob, "cut": n_pos - keep})
    langs = list(per_lang)
    return {"layers": n_layers, "k": k, "model": data.get("model", ""), "vocab": vocab, "prompts": prompts,
            "shares": _shares(langs, lens_info, shares_csv), "regions": _regions(lens_info),
            "names": {c: LANGUAGE_NAMES.get(c, c) for c in {*langs, "en", *(lab for _, lab in vocab)}}}


def _shares(langs: list[str], info: dict[str, Any] | None,
            shares_csv: dict[str, list[dict[str, Any]]] | None) -> dict[str, dict[str, list[float | None]]]:
    """Per input language: the English, own-language and unknown share per lens layer."""
    out: dict[str, dict[str, list[float | None]]] = {}
    source = (info or {}).get("shares") if isinstance(info, dict) else None
    for lang in langs:
        rows = (source or {}).get(lang) or (shares_csv or {}).get(lang)
        if not rows:
            continue
        own = None if lang == "en" else [_own(r, lang) for r in rows]
        if own is not None and all(v is None for v in own):
            own = None
        out[lang] = {"en": [_num(r.get("english_share")) for r in rows], "own": own,
                     "unknown": [_num(r.get("unknown_share")) for r in rows]}
    return out


def _own(row: dict[str, Any], lang: str) -> float | None:
    """The input language's share of a layer's tokens of known language (lens.json only)."""
    per = row.get("per_language")
    if not isinstance(per, dict) or _num(row.get("english_share")) is None:
        return None
    return _num(per.get(lang, 0.0))


def _regions(info: dict[str, Any] | None) -> dict[str, Any]:
    reg = (info or {}).get("regions") if isinstance(info, dict) else None
    if not isinstance(reg, dict):
        return {"found": False, "reason": "lens.json holds no region estimate"}
    if not reg.get("found"):
        return {"found": False, "reason": str(reg.get("reason") or "no clear English phase")}
    return {"found": True, "U": int(reg["understanding"]), "G": int(reg["generation"]),
            "n": int(reg["num_layers"]), "langs": list(reg.get("languages") or []),
            "mean": [_num(x) for x in reg.get("curve") or []]}


def explorer_html(sid: str, data_id: str, value: dict[str, Any]) -> Markup:
    """The explorer's skeleton; the page's script draws the grid and the curve into it (with
    textContent and setAttribute only: no value of the JSON is ever parsed as HTML)."""
    cut = sum(1 for p in value["prompts"] if p["cut"])
    k = value["k"]
    legend = [el("span", t, class_=f"sw c-{c}")
              for c, t in (("en", "English (solid)"), ("input", "the input language (striped)"),
                           ("other", "another language (dotted)"),
                           ("unknown", "unknown: punctuation, numbers, fragments (grey)"))]
    i = el("var", "i")
    return el(
        "section",
        el("h3", "Layer explorer: what each layer decodes"),
        el("p", Markup(
            "Rows are lens layers (0 = the embeddings, layer {i} = the output of decoder layer {i}−1), columns the "
            "prompt's tokens and then the generated ones; each cell is the token that layer's hidden state decodes "
            "to first (final norm + LM head), coloured and patterned by its language. Hover, tap or focus a cell "
            "(arrow keys move between cells) for its top {k} tokens with their probabilities (softmax over the whole "
            "vocabulary). Beside the grid: the share of English and of the input language among each layer's "
            "decoded tokens, with the estimated understanding and generation boundaries.").format(i=i, k=k)),
        el("div", el("label", "Input language", for_=f"{sid}-lang"), " ",
           el("select", id=f"{sid}-lang", class_="lx-lang"), " ",
           el("label", "Prompt", for_=f"{sid}-prompt"), " ", el("select", id=f"{sid}-prompt", class_="lx-prompt"),
           class_="lx-controls"),
        el("p", legend, class_="lx-legend"),
        el("div", el("div", el("div", class_="lx-grid", role="grid"), class_="lx-scroll"),
           el("figure", el("svg", role="img", aria_label="share of English and of the input language per layer"),
              el("figcaption", class_="lx-curve-legend"), class_="lx-curve"), class_="lx-body"),
        el("div", class_="lx-tip", id=f"{sid}-tip", role="tooltip", hidden=True),
        el("p", class_="lx-status sub", aria_live="polite"),
        el("p", f"{cut} long prompt{'s are' if cut > 1 else ' is'} shown up to position {MAX_POSITIONS}; "
                "lens_explorer.json holds every position.", class_="sub") if cut else None,
        el("noscript", el("p", Markup("The layer explorer is drawn by the page's script; with scripts off, "
                                      "lens_explorer.json holds the same tokens."), class_="note")),
        id=sid, class_="lx", data_source=data_id)
