"""Language identification from units: a selectivity measure every unit kind gets (issue #25).

A language's units should fire on that language's texts. For each held-out text (one text = one
document) and each language l, the score of l's set is the mean over l's units of the unit's
*firing probability on the document*: the share of the document's counted tokens at which the
unit's value is > 0 (``doc_firing`` of ``mwork.corpus_statistics``, the rule of LAPE's
``firing_probability`` kept per document). The predicted language is the one of highest score;
a tie goes to the language named first (``--corpus`` order) and is counted (``ties``). Chance
is 1 / the number of languages.

Where a unit is read (``UnitSource``): FFN neurons at ``ffn.act`` (the output of the FFN's
non-linearity, LAPE's site: in gated MLPs channel j of ``ffn.in`` fires when its gate does),
Q/K/V neurons at their projections' outputs. Another unit kind (dictionary features) plugs in
as another ``UnitSource`` (``feature_source``): the site its encoder reads and, per layer, the
encoder; everything after the per-document firing (scores, predictions, the table) is the same.
With several unit kinds every row names its kind (``unit_kind``: ``units`` already holds the
count of units).

One pass over the held-out texts reads the union of every set's units (``measure_doc_firing``),
with the detection's token rule (text tokens only, windows of ``eval_max_length`` tokens, the
whole text). fastText (``mwork.sentence_langid.default_identifier``) labels the same texts; its
label is compared as it is with the language's code, so ``unknown`` is wrong.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from mwork.fingerprints import texts_digest
from mwork.config import digest
from mwork.corpus_pass import PassOptions, Request, corpus_pass
from mwork.experiments.methods.detection import ScoreCache
from mwork.experiments.methods.units import NEURONS, Arm, feature_parts
from mwork.sentence_langid import default_identifier
from mwork.units.base import widen

if TYPE_CHECKING:
    from mwork.neurons.neuronset import NeuronSet

FIRING_RULE = ("per document: the share of its counted tokens (text tokens, windows of eval_max_length tokens, the "
               "whole text) at which the unit's value is > 0 (doc_firing); a set's score = the mean over its units")
TIE_RULE = "the highest score wins; a tie goes to the language named first (--corpus order) and is counted in ties"
FASTTEXT_RULE = "fastText's label compared as it is with the language's code; unknown is wrong"

#: (kind, layer) -> the sorted unit ids of that kind in that layer
Parts = dict[tuple[str, int], torch.Tensor]


@dataclass(frozen=True)
class UnitSource:
    """Where the units of one kind are read: a hook site, and per layer a transform of the
    site's channels into unit values (None: the channels are the units, as for neurons);
    ``digest``: what the transform is made of (a dictionary's weights), part of a cache key."""

    site: str
    read: Callable[[int], Callable[[torch.Tensor], torch.Tensor]] | None = None
    digest: str | None = None


#: neurons: FFN at LAPE's site (the activation's output), Q/K/V at their projections' outputs
NEURON_SOURCES: dict[str, UnitSource] = {"ffn": UnitSource("ffn.act"), "q": UnitSource("q.out"),
                                         "k": UnitSource("k.out"), "v": UnitSource("v.out")}


def feature_source(dictionary: Any, digest: str | None = None) -> UnitSource:
    """Where a dictionary's features are read: the site its encoder reads, through each layer's
    encoder (values widened to float32 first, as in its edits); ``digest``: the dictionary's."""
    def read(layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
        book = dictionary.books[layer]
        return lambda x: book.encode(widen(x))

    return UnitSource(dictionary.read_site or dictionary.site, read, digest)


def neuron_parts(ns: NeuronSet) -> Parts:
    """A neuron set as (kind, layer) -> sorted neuron ids (only where it has some)."""
    parts: Parts = {}
    for kind in ns.kinds:
        for layer in range(ns.num_layers):
            ids = ns.indices(kind, layer)
            if ids.numel():
                parts[kind, layer] = ids
    return parts


def union_parts(sets: Sequence[Parts]) -> Parts:
    """Every unit of any of ``sets``, in (kind, layer) order."""
    merged: dict[tuple[str, int], list[torch.Tensor]] = {}
    for parts in sets:
        for key, ids in parts.items():
            merged.setdefault(key, []).append(ids)
    return {key: torch.unique(torch.cat(merged[key])) for key in sorted(merged)}


def _select(read: Callable[[torch.Tensor], torch.Tensor] | None, ids: torch.Tensor) -> Callable:
    def pick(values: torch.Tensor) -> torch.Tensor:
        units = values if read is None else read(values)
        return units.index_select(-1, ids.to(units.device))

    return pick


@dataclass
class DocFiring:
    """The firing of the units ``parts`` on every language's documents: per language,
    ``counts`` (documents run, units) int64 -- tokens at which the unit fired, units in the
    order of ``parts`` -- ``tokens`` (documents run,) counted tokens, ``docs`` (documents run,)
    their positions in the language's texts (empty texts are not run)."""

    parts: Parts
    counts: dict[str, torch.Tensor]
    tokens: dict[str, torch.Tensor]
    docs: dict[str, torch.Tensor]

    def probability(self, lang: str) -> torch.Tensor:
        """(documents run, units) the firing probability of each unit on each document."""
        return self.counts[lang].to(torch.float64) / self.tokens[lang].to(torch.float64)[:, None]

    def columns(self, parts: Parts) -> torch.Tensor:
        """The columns of the units ``parts`` (each must be in this firing's units)."""
        out, offset = [], 0
        for key, ids in self.parts.items():
            if key in parts:
                pos = torch.searchsorted(ids, parts[key])
                if (pos >= ids.numel()).any() or not torch.equal(ids[pos.clamp(max=ids.numel() - 1)], parts[key]):
                    raise ValueError(f"units of {key[0]} in layer {key[1]} were not measured")
                out.append(pos + offset)
            offset += ids.numel()
        missing = set(parts) - set(self.parts)
        if missing:
            kind, layer = sorted(missing)[0]
            raise ValueError(f"units of {kind} in layer {layer} were not measured")
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def set_score(self, lang: str, parts: Parts) -> torch.Tensor:
        """(documents run,) the mean over the set's units of their firing probability."""
        cols = self.columns(parts)
        if not cols.numel():
            raise ValueError("a set with no unit has no score")
        return self.probability(lang)[:, cols].mean(1)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensors for a safetensors file (``from_tensors`` reads them back)."""
        out = {f"ids.{kind}.{layer}": ids.contiguous() for (kind, layer), ids in self.parts.items()}
        for lang in self.counts:
            out[f"counts.{lang}"] = self.counts[lang].contiguous()
            out[f"tokens.{lang}"] = self.tokens[lang].contiguous()
            out[f"docs.{lang}"] = self.docs[lang].contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], langs: Sequence[str]) -> "DocFiring":
        parts = {}
        for name, ids in tensors.items():
            if name.startswith("ids."):
                kind, layer = name[4:].rsplit(".", 1)
                parts[kind, int(layer)] = ids
        return cls({key: parts[key] for key in sorted(parts)}, {lang: tensors[f"counts.{lang}"] for lang in langs},
                   {lang: tensors[f"tokens.{lang}"] for lang in langs}, {lang: tensors[f"docs.{lang}"] for lang in langs})


def measure_doc_firing(model: torch.nn.Module, tokenizer: Any, texts: Mapping[str, Sequence[str]], parts: Parts,
                       options: PassOptions, *, sources: Mapping[str, UnitSource] = NEURON_SOURCES,
                       progress: bool = False) -> DocFiring:
    """The firing of the units ``parts`` on every document of ``texts`` ({lang: documents}), in
    one corpus pass (each kind read at its ``sources`` site, only the layers with units)."""
    kinds = list(dict.fromkeys(kind for kind, _ in parts))
    unknown = [k for k in kinds if k not in sources]
    if unknown:
        raise ValueError(f"no source says where units of kind {unknown[0]!r} are read")
    requests = []
    for kind in kinds:
        source = sources[kind]
        layers = {layer: ids for (k, layer), ids in parts.items() if k == kind}
        reads = {layer: _select(None if source.read is None else source.read(layer), ids)
                 for layer, ids in layers.items()}
        requests.append(Request("doc_firing", source.site, sorted(layers), read=reads,
                                width={layer: ids.numel() for layer, ids in layers.items()}, key=f"doc_firing@{kind}"))
    run = corpus_pass(model, tokenizer, texts, requests, options, progress=progress, desc="unit firing {lang}")
    counts, tokens, docs = {}, {}, {}
    for lang in texts:
        measured = run.corpora[lang].measured
        per_key = [run.statistics[f"doc_firing@{kind}"][lang][layer] for kind, layer in parts]
        counts[lang] = (torch.cat([s.counts for s in per_key], 1) if per_key
                        else torch.zeros(len(measured), 0, dtype=torch.int64))
        tokens[lang] = run.doc_tokens[lang].clone()
        docs[lang] = torch.tensor(measured, dtype=torch.int64)
    return DocFiring(dict(parts), counts, tokens, docs)


# ---- scores, predictions, the table ------------------------------------------------------------


def predict(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(documents, languages) scores -> the predicted language's column per document (the
    highest; a tie to the first column) and whether the best score was tied."""
    best = scores.max(1, keepdim=True).values
    top = scores == best
    first = torch.arange(scores.shape[1]).expand_as(scores).masked_fill(~top, scores.shape[1]).min(1).values
    return first, top.sum(1) > 1


def accuracy_rows(scores: Mapping[str, torch.Tensor], langs: Sequence[str],
                  fasttext: Mapping[str, Sequence[bool]]) -> list[dict[str, Any]]:
    """Per language of the texts and over all texts (``all``): n, correct, accuracy, ties and
    fastText's accuracy on the same texts. ``scores[lang]``: (lang's documents, languages), the
    columns in ``langs`` order; ``fasttext[lang]``: whether fastText was right, per document."""
    rows, total = [], {"n": 0, "correct": 0, "ties": 0, "fasttext": 0}
    for i, lang in enumerate(langs):
        s = scores[lang]
        if len(fasttext[lang]) != s.shape[0]:
            raise ValueError(f"{lang}: {s.shape[0]} scored documents but {len(fasttext[lang])} fastText labels")
        pred, tied = predict(s)
        n, correct, ties, ft = s.shape[0], int((pred == i).sum()), int(tied.sum()), sum(map(bool, fasttext[lang]))
        rows.append(_row(lang, n, correct, ties, ft))
        for key, v in (("n", n), ("correct", correct), ("ties", ties), ("fasttext", ft)):
            total[key] += v
    rows.append(_row("all", total["n"], total["correct"], total["ties"], total["fasttext"]))
    return rows


def _row(lang: str, n: int, correct: int, ties: int, fasttext: int) -> dict[str, Any]:
    return {"lang": lang, "n": n, "correct": correct, "accuracy": correct / n if n else None, "ties": ties,
            "fasttext_accuracy": fasttext / n if n else None}


def identifier_settings() -> dict[str, Any]:
    """What labelled the texts beside the units (fastText: its version and rule)."""
    return default_identifier().settings()


def fasttext_right(texts: Mapping[str, Sequence[str]], docs: Mapping[str, torch.Tensor],
                   identifier: Any = None) -> dict[str, list[bool]]:
    """Per language, per document run, whether fastText labels the text with the language's code."""
    if identifier is None:
        identifier = default_identifier()
    return {lang: [identifier.label(texts[lang][int(d)]) == lang for d in docs[lang]] for lang in docs}


@dataclass(frozen=True)
class SetFamily:
    """One row group of ``langid.csv``: every language's set of one method, size and variant
    (``specific`` or ``random<seed>``)."""

    method: str
    size: str
    variant: str
    sets: Mapping[str, Parts]
    units: str = NEURONS


def langid_rows(firing: DocFiring, families: Sequence[SetFamily], langs: Sequence[str],
                fasttext: Mapping[str, Sequence[bool]]) -> list[dict[str, Any]]:
    """``langid.csv``'s rows: fastText alone, then per family, each language and ``all``."""
    chance = 1 / len(langs)
    rows = []
    for lang in [*langs, "all"]:
        right = [x for e in langs for x in fasttext[e]] if lang == "all" else list(fasttext[lang])
        n, correct = len(right), sum(map(bool, right))
        rows.append({"unit_kind": "", "method": "fasttext", "size": "", "variant": "",
                     **_row(lang, n, correct, 0, correct),
                     "units": "", "chance": chance})
    for fam in families:
        scores = {e: torch.stack([firing.set_score(e, fam.sets[lang]) for lang in langs], 1) for e in langs}
        units = {lang: sum(int(ids.numel()) for ids in fam.sets[lang].values()) for lang in langs}
        for r in accuracy_rows(scores, langs, fasttext):
            n_units = units.get(r["lang"], statistics.fmean(units.values()))
            rows.append({"unit_kind": fam.units, "method": fam.method, "size": fam.size, "variant": fam.variant, **r,
                         "units": int(n_units) if float(n_units).is_integer() else n_units, "chance": chance})
    return rows


def set_families(sets: Mapping[tuple[Arm, str, str], Any], randoms: Mapping[tuple[Arm, str, str, int], Any], *,
                 arms: Sequence[Arm], tags: Mapping[str, str], sizes: Sequence[str], langs: Sequence[str],
                 seeds: Sequence[int]) -> list[SetFamily]:
    """The comparison's sets as families: per arm (a method on a unit kind) and size, the specific
    sets and each seed's random sets (``sets[arm, size, lang]``, ``randoms[arm, size, lang, seed]``);
    a dictionary's features are parts of the kind ``tags[arm.units]``."""
    def parts(units: Any, arm: Arm) -> Parts:
        return neuron_parts(units) if arm.units == NEURONS else feature_parts(units, tags[arm.units])

    families = []
    for arm in arms:
        for size in sizes:
            families.append(SetFamily(arm.method, size, "specific",
                                      {lang: parts(sets[arm, size, lang], arm) for lang in langs}, arm.units))
            families += [SetFamily(arm.method, size, f"random{seed}",
                                   {lang: parts(randoms[arm, size, lang, seed], arm) for lang in langs}, arm.units)
                         for seed in seeds]
    return families


def cached_doc_firing(model: torch.nn.Module, tokenizer: Any, texts: Mapping[str, Sequence[str]],
                      families: Sequence[SetFamily], options: PassOptions, cache: ScoreCache, *,
                      progress: bool = False,
                      sources: Mapping[str, UnitSource] = NEURON_SOURCES) -> DocFiring:
    """``measure_doc_firing`` of the union of every family's units, kept in ``cache`` as
    ``doc_firing`` under the digest of the model, the texts, the units and the
    pass settings: a rerun with the same inputs reads the file instead of running the pass.
    ``sources``: where each kind is read (the ``digest`` of what reads a kind that is not neurons,
    a dictionary's weights, is part of the key)."""
    parts = union_parts([p for fam in families for p in fam.sets.values()])
    sources_key = {k: src.digest for k, src in sources.items() if src.digest is not None}
    extra = {"sources": sources_key} if sources_key else {}
    key = cache.key("doc_firing", heldout={lang: texts_digest(docs) for lang, docs in texts.items()},
                    options=asdict(options), rule=FIRING_RULE,
                    units=digest({f"{kind}.{layer}": ids.tolist() for (kind, layer), ids in parts.items()}), **extra)
    loaded = cache.load("doc_firing", key)
    if loaded is not None:
        firing = DocFiring.from_tensors(loaded[0], list(texts))
        if firing.parts.keys() == parts.keys() and all(torch.equal(firing.parts[k], parts[k]) for k in parts):
            return firing
    firing = measure_doc_firing(model, tokenizer, texts, parts, options, sources=sources, progress=progress)
    cache.save("doc_firing", key, firing.to_tensors(), {"rule": FIRING_RULE})
    return firing
