"""``lens_explorer.json``: what the report's layer explorer draws, so ``mwork report`` needs no
model and no tokenizer.

For every prompt: the token strings of its input and generated positions and, per lens layer
and decoded position, the top-k decoded tokens with their probabilities (softmax over the whole
vocabulary of that layer's logits: final norm + LM head, see :mod:`mwork.lens.logit_lens`) and
each token's language label (the labeller of the lens's shares, :class:`~mwork.lens.langid.TokenLabeler`).

Compact layout (one JSON object, no indentation)::

    {"format": "mwork-lens-explorer", "version": 1, "model": ..., "num_layers": n, "top_k": k,
     "vocab": [[token_id, text, label], ...],          # every token the prompts use, once
     "prompts": [{"lang": "zh", "text": ..., "n_prompt": 6,
                  "tokens": [v, ...],                  # vocab index of every token (input + generated)
                  "positions": [0, 1, ...],            # decoded positions (indices into tokens)
                  "top": [v, ...],                     # vocab indices, flat (layer, position, rank)
                  "prob": [p, ...]}, ...]}             # probabilities, same order, 4 significant digits

``top[(layer * len(positions) + j) * k + r]`` is the rank-``r`` token of lens layer ``layer``
at ``positions[j]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mwork.lens.langid import TokenLabeler
from mwork.lens.logit_lens import LensResult

FORMAT = "mwork-lens-explorer"
VERSION = 1
PROBABILITY = ("softmax over the whole vocabulary of the lens layer's logits (the lens named in 'lens': logit = "
               "final norm + LM head, tuned = a tuned lens's translator first, patchscope = patched into an "
               "identity prompt), 4 significant digits")


def _prob(x: float) -> float:
    return float(f"{x:.4g}")


def explorer_data(result: LensResult, labeler: TokenLabeler) -> dict[str, Any]:
    """The explorer's JSON value for ``result`` (which must carry the log-sum-exp, i.e. come
    from :func:`~mwork.lens.logit_lens.logit_lens`, not from ``LensResult.load``)."""
    index: dict[int, int] = {}
    vocab: list[list[Any]] = []

    def ref(token_id: int) -> int:
        token_id = int(token_id)
        if token_id not in index:
            index[token_id] = len(vocab)
            vocab.append([token_id, labeler.token_text(token_id), labeler.label(token_id)])
        return index[token_id]

    prompts = []
    for p in result.prompts:
        probs = p.topk_probs()
        prompts.append({
            "lang": p.lang, "text": p.text, "n_prompt": p.n_prompt,
            "tokens": [ref(t) for t in p.token_ids],
            "positions": list(p.positions),
            "top": [ref(t) for t in p.topk_ids.flatten().tolist()],
            "prob": [_prob(x) for x in probs.flatten().tolist()],
        })
    return {"format": FORMAT, "version": VERSION, "model": result.model_name, "num_layers": result.num_layers,
            "top_k": result.top_k, "lens": result.settings.get("lens", {"lens": "logit"}),
            "lens_layers": "0 = input of decoder layer 0 (embedding output); "
            "i = output of decoder layer i-1", "probability": PROBABILITY, "vocab": vocab, "prompts": prompts}


def write_explorer(result: LensResult, labeler: TokenLabeler, path: str | Path) -> Path:
    """Write ``lens_explorer.json`` (atomically); returns its path."""
    from mwork.files import write_text

    path = Path(path)
    write_text(path, json.dumps(explorer_data(result, labeler), ensure_ascii=False, separators=(",", ":")))
    return path


def read_explorer(path: str | Path) -> dict[str, Any]:
    """Read and check a ``lens_explorer.json``; a ValueError names the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a readable lens_explorer.json ({err}); run `mwork lens` again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a lens_explorer.json written by mwork (no format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"{path} has explorer format version {data.get('version')!r}; this mwork reads {VERSION}")
    try:
        n_layers, k, n_vocab = int(data["num_layers"]) + 1, int(data["top_k"]), len(data["vocab"])
        for i, p in enumerate(data["prompts"]):
            size = n_layers * len(p["positions"]) * k
            if len(p["top"]) != size or len(p["prob"]) != size:
                raise ValueError(f"prompt {i} has {len(p['top'])} top-k entries, expected {size}")
            if any(not 0 <= v < n_vocab for v in (*p["top"], *p["tokens"])):
                raise ValueError(f"prompt {i} refers to a token outside the vocab table")
            if any(not 0 <= pos < len(p["tokens"]) for pos in p["positions"]):
                raise ValueError(f"prompt {i} decodes a position outside its tokens")
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path} lacks a field of the explorer format ({err})") from None
    except ValueError as err:
        raise ValueError(f"{path} is inconsistent: {err}") from None
    return data
