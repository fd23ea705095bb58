"""The top activating tokens of dictionary features, per language: what a feature that a
detection method chose fires on (``mwork detect --units sae:DIR`` writes them to
``OUT/top_tokens.json``; the report's feature explorer shows them).

How they are found: in the detection's own corpus pass (``mwork.corpus_pass``, the ``"windows"``
token rule: text tokens only, never a window's special tokens or padding), the statistic
``top_activations`` keeps, for every feature of the dictionary and every language, the
:data:`TOP` largest activations over that language's tokens and where they happened (document,
position), counting only tokens where the feature fires (activation > 0); ties go to the
earlier document, then the earlier position. Every feature is followed (which ones a method will
choose is known only after the scores); the cost is one ``topk`` over each batch's tokens per
layer, small beside the forward pass (docs/sae.md, "Features in the report"). After the sets are
drawn, the entries of the chosen features are decoded: each document is tokenized again as the
pass tokenized it, and an entry becomes ``[token, before, after, value, document, position]``
(:data:`COLUMNS`), the token's text (a token that is a piece of a character -- a byte of its
UTF-8 -- with the tokens that complete the character) and up to :data:`BEFORE` / :data:`AFTER`
tokens of context, decoded by the tokenizer.

The file (:func:`read_top_tokens` reads it back)::

    {"format": "mwork-top-tokens", "version": 1, "columns": [...], "top": 8,
     "context": {"before": 8, "after": 4}, "rule": "...", "method": "lape", "model": "...",
     "units": {"kind": "dictionary", "site": "layer.out", "read_site": null, "layers": [6]},
     "languages": ["en", "fr"],
     "features": {"6:123": {"en": [["▁le", "...", "...", 3.2, 4, 17], ...], "fr": [...]}, ...}}

``features`` holds every feature of every language's set, keyed ``"layer:feature"`` (the feature's
index in its layer's dictionary), in layer and feature order; for each, every language's entries,
largest first (fewer than ``top`` where the feature fired on fewer tokens of that language).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from mwork.corpus_pass import Request, unit_request
from mwork.corpus_statistics import TopValues

if TYPE_CHECKING:
    from mwork.neurons.methods.base import LanguageScores

FILE = "top_tokens.json"
FORMAT = "mwork-top-tokens"
VERSION = 1
COLUMNS = ("token", "before", "after", "value", "document", "position")
TOP = 8  # entries per feature and language
BEFORE, AFTER = 8, 4  # tokens of context decoded before and after the token
SPAN = 8  # at most this many tokens shown for a token that is a piece of a character
STATISTIC_KEY = "top_activations@features"
RULE = ("the largest activations of the feature over the language's detection tokens (text tokens of the detection "
        "windows, never special tokens or padding), counting only tokens where it fires (activation > 0); ties: the "
        "earlier document, then the earlier position; measured in the detection's corpus pass for every feature of "
        "the dictionary. document: the corpus position of the document (empty ones counted); position: the token's "
        "index among the document's tokens (tokenized without special tokens); before / after: up to "
        f"{BEFORE} / {AFTER} tokens of context, decoded")


def top_request(units: Any, n: int = TOP) -> Request:
    """The corpus-pass request for the ``n`` largest activations of every feature of ``units``."""
    return unit_request("top_activations", units, {"n": n, "above": 0.0}, key=STATISTIC_KEY)


def joined(per_layer: Mapping[int, Any], units: Any) -> TopValues:
    """One language's ``top_activations`` statistics (``{layer: Statistic}``) as one
    :class:`TopValues` over every unit of ``units``, in the set's order."""
    results = {layer: stat.result() for layer, stat in per_layer.items()}
    n = next(iter(results.values())).values.shape[0]
    values = torch.full((n, units.count()), math.nan, dtype=torch.float64)
    doc = torch.full((n, units.count()), -1, dtype=torch.long)
    position = doc.clone()
    for layer, top in results.items():
        at = units.positions(layer)
        values[:, at], doc[:, at], position[:, at] = top.values, top.doc, top.position
    return TopValues(values, doc, position)


def _character_span(tokenizer: Any, ids: Sequence[int], position: int) -> tuple[int, int]:
    """The tokens ``[a, b)`` to show for the token at ``position``: itself, or where it is a piece
    of a character (a byte of its UTF-8, decoded as U+FFFD), the fewest tokens around it (at most
    :data:`SPAN`) that decode to whole characters (a token may end one character and start the
    next)."""
    for width in range(1, SPAN + 1):
        for a in range(max(0, position - width + 1), position + 1):
            b = a + width
            if b <= len(ids) and "\ufffd" not in tokenizer.decode(ids[a:b]):
                return a, b
    return position, position + 1


def token_in_context(tokenizer: Any, ids: Sequence[int], position: int) -> tuple[str, str, str]:
    """The token at ``position`` of ``ids`` as text (with the tokens that complete its character,
    where it is a piece of one), and up to :data:`BEFORE` tokens before it and :data:`AFTER` after
    it: decoded together and cut, so that the token keeps the space a tokenizer writes before a
    word (decoded alone where the cut does not fall between them)."""
    if not 0 <= position < len(ids):
        raise ValueError(f"token position {position} is not in a document of {len(ids)} tokens: the documents are "
                         "not those the pass read")
    a, b = _character_span(tokenizer, ids, position)
    lo = max(0, a - BEFORE)
    before = tokenizer.decode(ids[lo:a])
    upto = tokenizer.decode(ids[lo:b])
    token = upto[len(before):] if upto.startswith(before) else tokenizer.decode(ids[a:b])
    full = tokenizer.decode(ids[lo:b + AFTER])
    after = full[len(upto):] if full.startswith(upto) else tokenizer.decode(ids[b:b + AFTER])
    return token, before.lstrip("\ufffd"), after.rstrip("\ufffd")


def _number(x: float) -> float:
    return float(f"{x:.6g}")


def top_tokens_value(scores: "LanguageScores", sets: Mapping[str, Any], tokenizer: Any,
                     texts: Mapping[str, Sequence[str]], model_id: str | None = None) -> dict[str, Any]:
    """The content of :data:`FILE` (module docstring) for the features of ``sets`` (each a subset
    of ``scores.units``), from ``scores.top_values`` and each language's documents ``texts``."""
    units = scores.units
    if units is None or not scores.top_values:
        raise ValueError("these scores carry no top activations: score a dictionary's features with top_tokens=N")
    index = {(int(layer), int(f)): j for j, (layer, f) in enumerate(zip(units.layers.tolist(), units.features.tolist()))}
    chosen = sorted({(int(layer), int(f)) for s in sets.values() for layer, f in zip(s.layers.tolist(),
                                                                                    s.features.tolist())})
    ids: dict[tuple[str, int], list[int]] = {}

    def tokens(lang: str, doc: int) -> list[int]:
        if (lang, doc) not in ids:  # as the pass's "windows" rule tokenized it
            ids[lang, doc] = tokenizer(texts[lang][doc], add_special_tokens=False, verbose=False)["input_ids"]
        return ids[lang, doc]

    features: dict[str, dict[str, list[list[Any]]]] = {}
    for layer, feature in chosen:
        j = index[layer, feature]
        features[f"{layer}:{feature}"] = {
            lang: [[*token_in_context(tokenizer, tokens(lang, doc), pos), _number(value), doc, pos]
                   for value, doc, pos in scores.top_values[lang].unit(j)]
            for lang in scores.langs}
    n = next(iter(scores.top_values.values())).values.shape[0]
    return {"format": FORMAT, "version": VERSION, "columns": list(COLUMNS), "top": n,
            "context": {"before": BEFORE, "after": AFTER}, "rule": RULE, "method": scores.method,
            "model": model_id, "units": {"kind": units.kind, "site": units.site, "read_site": units.read_site,
                                         "layers": sorted(units.books)},
            "languages": list(scores.langs), "features": features}


def top_tokens_text(value: Mapping[str, Any]) -> str:
    """``value`` as JSON text, one line per feature (UTF-8 characters as they are)."""
    head = json.dumps({k: v for k, v in value.items() if k != "features"}, ensure_ascii=False, indent=1)
    features = ",\n".join(f"  {json.dumps(key)}: {json.dumps(langs, ensure_ascii=False)}"
                          for key, langs in value["features"].items())
    return head[:-2] + ',\n "features": {\n' + features + ("\n" if features else "") + " }\n}\n"


def write_top_tokens(folder: str | Path, value: Mapping[str, Any]) -> Path:
    """``folder/top_tokens.json`` (:func:`top_tokens_text`)."""
    from mwork.files import write_text

    path = Path(folder) / FILE
    write_text(path, top_tokens_text(value))
    return path


def read_top_tokens(path: str | Path) -> dict[str, Any]:
    """A ``top_tokens.json`` (a file, or the folder holding it), checked: its format and version,
    and every entry a row of :data:`COLUMNS`."""
    path = Path(path)
    path = path / FILE if path.is_dir() else path
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise ValueError(f"{path} is not a top-tokens file written by mwork detect (format {FORMAT!r})")
    if value.get("version") != VERSION:
        raise ValueError(f"{path} is version {value.get('version')!r} of the top-tokens format; this mwork reads "
                         f"version {VERSION}")
    for key, langs in (value.get("features") or {}).items():
        for lang, rows in (langs or {}).items():
            if not all(isinstance(r, list) and len(r) == len(COLUMNS) for r in rows):
                raise ValueError(f"{path}: feature {key}, {lang}: every entry must be [{', '.join(COLUMNS)}]")
    return value


def check_language_names(langs: Sequence[str]) -> None:
    """A language whose set file would be :data:`FILE` (``top_tokens.json``): refused."""
    if FILE[:-len(".json")] in langs:
        raise ValueError(f"a language named {FILE[:-len('.json')]!r} would write its set over {FILE}; rename it")
