"""Detection (PLND over a corpus): documents of one language -> a NeuronSet.

For each document, every neuron gets its importance (``mwork.neurons.importance``); a
per-document rule marks the important ones; a neuron is kept if it is important in every
document (the paper) or in at least a fraction q of them. Per-neuron document counts are kept
in ``extra["doc_count.<kind>"]`` so a researcher can re-threshold without rerunning.

Windows. A document longer than ``max_length`` tokens is cut into consecutive windows of
at most ``max_length`` tokens (the tokenizer's special tokens, e.g. BOS, are added to every
window); each window is scored as its own sequence, and the document's importance of a neuron
is the norm over all its tokens, sqrt(sum over windows of the squared window importance). This
is exactly the norm of Eq. 1 over the whole document as the model sees it in windows (for
Q/K: the Frobenius norm over the windows' attention matrices).

Determinism. Documents are read in blocks of ``buffer_docs``; inside a block, windows are
sorted by length (longest first, ties by document and window number) and batched. The blocks
depend only on document numbers, so the same arguments give bit-identical results, and a run
resumed from a checkpoint (written after whole blocks, atomically) ends with exactly the same
NeuronSet as an uninterrupted one. Other batch sizes change padding, hence float rounding
only.

Data parallel. Inside a torch.distributed group (``torchrun ... mwork detect``, see
``mwork.distributed``), block i is scored by rank i % world_size; every rank still reads and
hashes every document. The per-neuron counts and ``scored`` are summed over ranks, the empty and
failed documents gathered, and rank 0 writes the result: the same NeuronSet as one process
(same batches, so the same floats), with ``meta["data_parallel"]`` added. Each rank checkpoints
to its own file (``<out>.rank<r>of<w>.checkpoint.safetensors``) and resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mwork import distributed
from mwork.models.adapters import KINDS, get_adapter
from mwork.models.loading import input_device
from mwork.texts import TextHasher
from mwork.neurons.neuronset import NeuronSet, _resolve

# Default per-document rule: the top 20 % of each layer's neurons of each kind. The paper's
# absolute epsilon depends on the model, the layer and the kind (norms grow with depth and
# differ between FFN and attention), so no single value works out of the box; a per-layer,
# per-kind fraction is scale-free and gives every layer the same budget. 20 % is about the
# reference code's budget for 7B models (2000 of 11008 FFN and 1000 of 4096 attention
# channels per layer).
DEFAULT_TOP_FRACTION = 0.2
# --reference-compat: the reference code's per-layer top-k (capped at the layer's size).
REFERENCE_TOP_K: dict[str, int] = {"ffn": 12000, "q": 2000, "k": 2000, "v": 2000}
DEFAULT_MAX_LENGTH = 512
DEFAULT_BATCH_SIZE = 8
DEFAULT_BUFFER_DOCS = 64
DEFAULT_CHECKPOINT_EVERY = 100

WINDOW_RULE = (
    "documents longer than max_length tokens are cut into consecutive windows of at most max_length "
    "tokens (special tokens added to each window); each window is scored separately and a document's "
    "importance is sqrt(sum over its windows of the squared window importance), the norm over all its tokens"
)
TRUNCATE_RULE = "truncate: only the first max_length tokens (special tokens included) of each document are scored"

Scorer = Callable[..., Mapping[str, torch.Tensor]]


def _log(msg: str) -> None:
    tqdm.write(f"[mwork detect] {msg}", file=sys.stderr)


# ---- the per-document rule ---------------------------------------------------------------


@dataclass(frozen=True)
class DocumentRule:
    """Which neurons count as important in one document.

    ``top_fraction``: the ceil(F * n) highest-scoring of the n neurons of each layer and kind;
    ``top_k``: the K highest of each layer and kind (capped at n); ``epsilon``: importance > E
    (the paper). ``value`` may be one number or one per kind. Ties go to the lower index.
    """

    name: str
    value: float | Mapping[str, float]

    def __post_init__(self) -> None:
        if self.name not in ("top_fraction", "top_k", "epsilon"):
            raise ValueError(f"unknown per-document rule {self.name!r}; use top_fraction, top_k or epsilon")
        values = self.value.values() if isinstance(self.value, Mapping) else [self.value]
        for v in values:
            if self.name == "top_fraction" and not 0 < v <= 1:
                raise ValueError(f"top fraction must be in (0, 1], got {v}")
            if self.name == "top_k" and (int(v) != v or v < 1):
                raise ValueError(f"top-k must be a positive integer, got {v}")
            if self.name == "epsilon" and not math.isfinite(v):
                raise ValueError(f"epsilon must be a finite number, got {v}")

    def for_kind(self, kind: str) -> float:
        if isinstance(self.value, Mapping):
            if kind not in self.value:
                raise ValueError(f"the {self.name} rule gives no value for kind {kind!r}")
            return self.value[kind]
        return self.value

    def select(self, scores: torch.Tensor, kind: str) -> torch.Tensor:
        """(docs, layers, n) scores -> boolean masks of the same shape."""
        v = self.for_kind(kind)
        if self.name == "epsilon":
            return scores > v
        n = scores.shape[-1]
        k = min(int(v), n) if self.name == "top_k" else min(n, math.ceil(v * n - 1e-9))
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
        mask = torch.zeros(scores.shape, dtype=torch.bool)
        return mask.scatter_(-1, order, True)

    def describe(self) -> dict[str, Any]:
        value = dict(self.value) if isinstance(self.value, Mapping) else self.value
        return {"rule": self.name, self.name: value}


def document_rule(
    *,
    epsilon: float | Mapping[str, float] | None = None,
    top_fraction: float | Mapping[str, float] | None = None,
    top_k: int | Mapping[str, int] | None = None,
    reference_compat: bool = False,
) -> DocumentRule:
    """The per-document rule from at most one of ``epsilon`` / ``top_fraction`` / ``top_k``;
    none: ``top_fraction=0.2``, or the reference's top-k with ``reference_compat``."""
    given = {n: v for n, v in (("epsilon", epsilon), ("top_fraction", top_fraction), ("top_k", top_k)) if v is not None}
    if len(given) > 1:
        raise ValueError(f"give at most one per-document rule, got {', '.join(given)}")
    if given:
        name, value = next(iter(given.items()))
        return DocumentRule(name, value)
    if reference_compat:
        return DocumentRule("top_k", dict(REFERENCE_TOP_K))
    return DocumentRule("top_fraction", DEFAULT_TOP_FRACTION)


# ---- checkpoints ---------------------------------------------------------------------------


@dataclass
class _Progress:
    """Everything a run has accumulated; what a checkpoint stores."""

    counts: dict[str, torch.Tensor]
    consumed: int = 0  # documents read (empty and failed included)
    scored: int = 0
    empty: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    corpus_sha256: str = ""  # of the documents consumed so far


def checkpoint_path_for(out: str | Path) -> Path:
    """``x.safetensors`` -> ``x.checkpoint.safetensors`` (beside the result)."""
    st = _resolve(out)
    return st.with_name(st.stem + ".checkpoint.safetensors")


def rank_checkpoint_path(path: str | Path, rank: int, world: int) -> Path:
    """One rank's checkpoint beside ``path``: ``x.checkpoint.safetensors`` ->
    ``x.rank1of2.checkpoint.safetensors`` (``path`` itself for a single process)."""
    path = Path(path)
    if world <= 1:
        return path
    stem = path.name[:-len(".checkpoint.safetensors")] if path.name.endswith(".checkpoint.safetensors") else path.stem
    return path.with_name(f"{stem}.rank{rank}of{world}.checkpoint.safetensors")


def _save_checkpoint(path: Path, progress: _Progress, settings: dict[str, Any], settings_sha: str) -> None:
    state = {"settings_sha256": settings_sha, "settings": settings, "consumed": progress.consumed,
             "scored": progress.scored, "empty": progress.empty, "failed": progress.failed,
             "corpus_sha256": progress.corpus_sha256}
    tensors = {f"count.{k}": v.contiguous() for k, v in progress.counts.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"mwork_checkpoint": json.dumps(state, sort_keys=True)})
    os.replace(tmp, path)  # atomic: a kill leaves the old checkpoint or the new one, never half of one


def _load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if "mwork_checkpoint" not in header:
        raise ValueError(f"{path} is not an mwork detection checkpoint; delete it or rerun with --no-resume")
    state = json.loads(header["mwork_checkpoint"])
    counts = {k[len("count."):]: v for k, v in load_file(str(path)).items()}
    return state, counts


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _resume(
    ckpt: Path, docs: Iterator[str], hasher: TextHasher, settings: dict[str, Any], settings_sha: str
) -> _Progress:
    """Load ``ckpt``, check it was made with ``settings`` and the same first documents (read
    again from ``docs`` and hashed), and return its progress."""
    saved, counts = _load_checkpoint(ckpt)
    if saved["settings_sha256"] != settings_sha:
        diff = _settings_diff(saved["settings"], settings)
        raise ValueError(f"checkpoint {ckpt} was made with other settings ({diff}); "
                         "rerun with the same arguments to resume, or with --no-resume (resume=False) to start over")
    for n in range(saved["consumed"]):
        doc = next(docs, None)
        if doc is None:
            raise ValueError(f"checkpoint {ckpt} has read {saved['consumed']} documents but the corpus now has only "
                             f"{n}; rerun with --no-resume to start over")
        hasher.update(doc)
    if hasher.hexdigest() != saved["corpus_sha256"]:
        raise ValueError(f"the first {saved['consumed']} documents differ from those checkpoint {ckpt} was made with; "
                         "rerun with --no-resume to start over")
    _log(f"resuming from {ckpt}: {saved['consumed']} documents already read")
    return _Progress(counts, saved["consumed"], saved["scored"], saved["empty"], saved["failed"],
                     saved["corpus_sha256"])


# ---- tokenisation into windows ------------------------------------------------------------


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a text (e.g. [BOS], [])."""
    probe = "a b"
    with_sp = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for i in range(len(with_sp) - len(plain) + 1):
        if with_sp[i:i + len(plain)] == plain:
            return list(with_sp[:i]), list(with_sp[i + len(plain):])
    return [], []


@dataclass
class _Window:
    doc: int  # document number in the corpus
    part: int  # window number inside the document
    ids: list[int]


def _windows(doc: int, ids: list[int], prefix: list[int], suffix: list[int], max_length: int) -> list[_Window]:
    step = max_length - len(prefix) - len(suffix)
    return [_Window(doc, p, prefix + ids[s:s + step] + suffix) for p, s in enumerate(range(0, len(ids), step))]


def _pad(windows: Sequence[_Window], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    length = max(len(w.ids) for w in windows)
    ids = torch.full((len(windows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), length), dtype=torch.long)
    for row, w in enumerate(windows):
        n = len(w.ids)
        cols = slice(length - n, length) if side == "left" else slice(0, n)
        ids[row, cols] = torch.tensor(w.ids, dtype=torch.long)
        mask[row, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


# ---- detection -------------------------------------------------------------------------------


def _default_scorer(reference_compat: bool, qk_method: str = "exact") -> tuple[Scorer, str]:
    if qk_method not in ("exact", "approx"):
        raise ValueError(f"qk_method must be 'exact' or 'approx', got {qk_method!r}")
    if reference_compat and qk_method != "exact":
        raise ValueError("qk_method='approx' is for mwork's own scores; the reference-compat scores have no approximation")
    if reference_compat:
        from mwork.neurons.reference import reference_importance

        def ref(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], kinds: Sequence[str]) -> Mapping:
            return reference_importance(model, batch)

        return ref, "reference code's scores (sum |up_proj(x)| for FFN, unscaled outer product for Q/K, |V output|)"
    from mwork.neurons.importance import importance

    if qk_method == "approx":
        def approx(model: torch.nn.Module, batch: Mapping[str, torch.Tensor], kinds: Sequence[str]) -> Mapping:
            return importance(model, batch, kinds=kinds, method="approx")

        return approx, "mwork.importance: exact Eq. 1 (FFN, V), first-order approximation of Eq. 8 (Q, K)"
    return importance, "mwork.importance: exact Eq. 1 (FFN, V) and Eq. 8 (Q, K)"


def detect(
    model: torch.nn.Module,
    tokenizer: Any,
    documents: Iterable[str],
    *,
    language: str,
    epsilon: float | Mapping[str, float] | None = None,
    top_fraction: float | Mapping[str, float] | None = None,
    top_k: int | Mapping[str, int] | None = None,
    min_doc_fraction: float = 1.0,
    kinds: Sequence[str] = KINDS,
    max_length: int = DEFAULT_MAX_LENGTH,
    truncate: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    buffer_docs: int = DEFAULT_BUFFER_DOCS,
    reference_compat: bool = False,
    qk_method: str = "exact",
    model_id: str | None = None,
    corpus_info: Mapping[str, Any] | None = None,
    out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    resume: bool = True,
    progress: bool = True,
    scorer: Scorer | None = None,
) -> NeuronSet:
    """Detect the neurons of ``model`` important for the ``documents`` of ``language``.

    Per document (at most one of): ``top_fraction`` (default 0.2 per layer and kind, see
    ``DEFAULT_TOP_FRACTION``), ``top_k`` (per layer and kind), ``epsilon`` (absolute, the
    paper). Across documents: important in at least ``ceil(min_doc_fraction * n)`` of the n
    successfully scored documents (1.0: all of them, the paper). Empty documents and documents
    whose scoring raised are reported by number and listed in ``meta``; they do not count in n.

    ``truncate``: score only each document's first ``max_length`` tokens instead of all its
    windows (faster, e.g. on a CPU; recorded in ``meta["window_rule"]``).
    ``reference_compat``: the reference code's scores and its top-k (12000 FFN / 2000
    attention per layer, capped at the layer size), for comparison only.
    ``qk_method="approx"``: the first-order approximation of the Q/K scores (about as fast as
    the exact kernel on a CPU, no C compiler needed; see ``benchmarks/README.md`` for its agreement).
    ``out``: save the result there (and checkpoint to ``<out>.checkpoint.safetensors`` every
    ``checkpoint_every`` documents, removed at the end); ``checkpoint`` overrides that path.
    With ``resume``, an existing checkpoint with the same settings is continued, one with
    other settings is refused. ``scorer(model, batch, kinds)`` replaces the importance function.
    """
    kinds = tuple(kinds)
    if not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if not 0 < min_doc_fraction <= 1:
        raise ValueError(f"min_doc_fraction must be in (0, 1], got {min_doc_fraction}")
    if batch_size < 1 or buffer_docs < 1 or checkpoint_every < 1:
        raise ValueError("batch_size, buffer_docs and checkpoint_every must be at least 1")
    rule = document_rule(epsilon=epsilon, top_fraction=top_fraction, top_k=top_k, reference_compat=reference_compat)
    adapter = get_adapter(model)
    counts_per_layer = adapter.neuron_counts()
    for kind in kinds:
        rule.for_kind(kind)  # fails early if a per-kind rule misses a kind
    prefix, suffix = _special_tokens(tokenizer)
    if max_length - len(prefix) - len(suffix) < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text after the {len(prefix) + len(suffix)} "
                         "special tokens")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
    if scorer is None:
        scorer, scores_label = _default_scorer(reference_compat, qk_method)
    else:
        scores_label = f"custom scorer {getattr(scorer, '__qualname__', repr(scorer))}"
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    model_id = model_id or getattr(model.config, "_name_or_path", None) or "unknown"
    capped = {k: rule.for_kind(k) for k in kinds
              if rule.name == "top_k" and rule.for_kind(k) >= counts_per_layer[k]}
    if capped:
        _log(f"top-k {capped} is at least the layer size for {', '.join(capped)}: every neuron of those kinds "
             "is selected in every document")

    # what the per-document counts depend on: a checkpoint made with anything else is refused
    settings = {
        "model_id": model_id, "fingerprint": adapter.fingerprint(), "dtype": dtype, "language": language,
        "kinds": list(kinds), "scores": scores_label, "reference_compat": reference_compat,
        "document_rule": rule.describe(), "max_length": max_length, "truncate": truncate, "batch_size": batch_size,
        "buffer_docs": buffer_docs, "special_tokens": {"prefix": prefix, "suffix": suffix},
        "padding_side": tokenizer.padding_side, "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab_size": len(tokenizer),
    }
    settings_sha = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    rank, world = distributed.rank(), distributed.world_size()
    # a rank's checkpoint also depends on which blocks it owns; one process keeps the plain settings
    ckpt_settings = settings if world == 1 else {**settings, "shard": {"rank": rank, "world_size": world}}
    ckpt_sha = hashlib.sha256(json.dumps(ckpt_settings, sort_keys=True).encode()).hexdigest()

    if checkpoint is None and out is not None:
        checkpoint = checkpoint_path_for(out)
    ckpt = rank_checkpoint_path(checkpoint, rank, world) if checkpoint is not None else None
    state = _Progress({k: torch.zeros(adapter.num_layers, counts_per_layer[k], dtype=torch.int32) for k in kinds})
    hasher = TextHasher()
    docs: Iterator[str] = iter(documents)
    resumed_partial = False
    if ckpt is not None and ckpt.exists() and resume:
        state = _resume(ckpt, docs, hasher, ckpt_settings, ckpt_sha)
        resumed_partial = state.consumed % buffer_docs != 0
    elif ckpt is not None and ckpt.exists():
        ckpt.unlink()

    total = getattr(documents, "max_docs", None) or (len(documents) if hasattr(documents, "__len__") else None)
    bar = tqdm(total=total, initial=state.consumed, unit="doc", desc=f"detect {language}",
               disable=not progress or rank != 0, file=sys.stderr, dynamic_ncols=True)
    last_saved = state.consumed
    try:
        while True:
            block = list(islice(docs, buffer_docs))
            if not block:
                break
            if resumed_partial:
                raise ValueError(f"checkpoint {ckpt} ended on the corpus's last (partial) block, but the corpus now "
                                 "has more documents (a larger max_docs?); rerun with --no-resume to start over")
            for doc in block:
                hasher.update(doc)
            if distributed.owns(state.consumed // buffer_docs):  # every block is this rank's in one process
                _score_block(model, tokenizer, block, state, rule, scorer, kinds, prefix, suffix, max_length,
                             truncate, batch_size, pad_id)
            state.consumed += len(block)
            state.corpus_sha256 = hasher.hexdigest()
            bar.update(len(block))
            bar.set_postfix(scored=state.scored, empty=len(state.empty), failed=len(state.failed))
            if ckpt is not None and state.consumed - last_saved >= checkpoint_every:
                _save_checkpoint(ckpt, state, ckpt_settings, ckpt_sha)
                last_saved = state.consumed
    finally:
        bar.close()

    if world > 1:  # every rank read the same documents; each scored its own blocks
        if rank == 0 and math.ceil(state.consumed / buffer_docs) < world:
            _log(f"only {math.ceil(state.consumed / buffer_docs)} block(s) of {buffer_docs} documents for {world} "
                 "processes: some ranks had nothing to do; a smaller buffer_docs (--buffer-docs) spreads the work")
        summed = distributed.all_reduce_sum({**{f"count.{k}": state.counts[k] for k in kinds},
                                             "scored": torch.tensor([state.scored], dtype=torch.int64)})
        state.counts = {k: summed[f"count.{k}"] for k in kinds}
        state.scored = int(summed["scored"].item())
        state.empty = sorted(distributed.gather_lists(state.empty))
        state.failed = sorted(distributed.gather_lists(state.failed), key=lambda f: f["index"])

    if state.scored == 0:
        raise ValueError(f"no document could be scored ({state.consumed} read: {len(state.empty)} empty, "
                         f"{len(state.failed)} failed); check the corpus and the text field")
    need = max(1, math.ceil(min_doc_fraction * state.scored - 1e-9))
    excluded = f"{len(state.empty)} empty and {len(state.failed)} failed documents excluded"
    meta = {
        "fingerprint": adapter.fingerprint(),
        "name": language,
        "language": language,
        "model_id": model_id,
        "dtype": dtype,
        "kinds": list(kinds),
        "scores": scores_label,
        "reference_compat": reference_compat,
        "document_rule": rule.describe(),
        "across_documents": {
            "rule": "all" if min_doc_fraction == 1 else "min_fraction",
            "min_doc_fraction": min_doc_fraction,
            "min_doc_count": need,
            "counted_over": f"the {state.scored} successfully scored documents only ({excluded})",
        },
        "corpus": dict(corpus_info or (documents.describe() if hasattr(documents, "describe") else {})),
        "corpus_sha256": state.corpus_sha256,
        "corpus_sha256_rule": TextHasher.RULE,
        "n_docs_read": state.consumed,
        "n_docs": state.scored,
        "empty_documents": state.empty,
        "failed_documents": state.failed,
        "document_numbering": "0-based position in the corpus (text/JSONL: line number - 1)",
        "window_rule": TRUNCATE_RULE if truncate else WINDOW_RULE,
        "max_length": max_length,
        "truncate": truncate,
        "batch_size": batch_size,
        "buffer_docs": buffer_docs,
        "settings_sha256": settings_sha,
    }
    if world > 1:
        meta["data_parallel"] = {"world_size": world, "sharding": "block i of buffer_docs documents scored by "
                                 "rank i % world_size; counts summed over ranks"}
    if reference_compat:
        meta["label"] = ("REFERENCE-COMPAT: reproduces the reference code's scores and top-k rule, "
                         "not the paper's equations")
    masks = {k: state.counts[k] >= need for k in kinds}
    result = NeuronSet(masks, meta, {f"doc_count.{k}": state.counts[k].clone() for k in kinds})
    if out is not None:
        if rank == 0:
            result.save(out)
        distributed.barrier()  # the result exists before any rank drops its checkpoint
        if ckpt is not None and ckpt.exists():
            ckpt.unlink()
    return result


def _score_block(
    model: torch.nn.Module, tokenizer: Any, block: list[str], state: _Progress, rule: DocumentRule, scorer: Scorer,
    kinds: tuple[str, ...], prefix: list[int], suffix: list[int], max_length: int, truncate: bool, batch_size: int,
    pad_id: int,
) -> None:
    """Score one block of documents and add their per-document masks to ``state.counts``."""
    start = state.consumed
    windows: list[_Window] = []
    errors: dict[int, str] = {}
    for j, text in enumerate(block):
        doc = start + j
        if not text.strip():
            state.empty.append(doc)
            _log(f"document {doc} is empty; it is not counted")
            continue
        try:
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        except Exception as err:  # noqa: BLE001 - reported by number, the run goes on
            errors[doc] = f"tokenizer: {type(err).__name__}: {err}"
            continue
        if not ids:
            state.empty.append(doc)
            _log(f"document {doc} has no tokens; it is not counted")
            continue
        if truncate:
            ids = ids[:max_length - len(prefix) - len(suffix)]
        windows.extend(_windows(doc, ids, prefix, suffix, max_length))
    windows.sort(key=lambda w: (-len(w.ids), w.doc, w.part))

    sumsq: dict[int, dict[str, torch.Tensor]] = {}
    device = input_device(model)

    def run(batch_windows: list[_Window]) -> dict[str, torch.Tensor]:
        batch = {k: v.to(device) for k, v in _pad(batch_windows, pad_id, tokenizer.padding_side).items()}
        scores = scorer(model, batch, kinds=kinds)
        return {k: scores[k].detach().to("cpu", torch.float64) for k in kinds}

    for b in range(0, len(windows), batch_size):
        group = [w for w in windows[b:b + batch_size] if w.doc not in errors]
        if not group:
            continue
        alone: list[_Window] = []
        try:
            scores = run(group)
            finite = torch.stack([torch.isfinite(scores[k]).flatten(1).all(dim=1) for k in kinds]).all(dim=0)
            if len(group) > 1 and not finite.all():
                # some models give NaN for real tokens of padded batches (e.g. eager attention in
                # float64 with fully masked padding rows): score those windows without padding
                alone = [w for w, ok in zip(group, finite.tolist()) if not ok]
                keep = [i for i, ok in enumerate(finite.tolist()) if ok]
                group, scores = [group[i] for i in keep], {k: v[keep] for k, v in scores.items()}
            results = [(group, scores)]
        except Exception:  # noqa: BLE001 - retry one by one to find the failing documents
            results, alone = [], group
        for w in alone:
            try:
                results.append(([w], run([w])))
            except Exception as err:  # noqa: BLE001 - reported by number, the run goes on
                errors[w.doc] = f"{type(err).__name__}: {err}"
        for ws, scores in results:
            for row, w in enumerate(ws):
                acc = sumsq.setdefault(w.doc, {k: 0.0 for k in kinds})
                for k in kinds:
                    acc[k] = acc[k] + scores[k][row] ** 2

    done = []
    for doc in sorted(sumsq):
        if doc in errors:
            continue
        scores = {k: sumsq[doc][k].sqrt() for k in kinds}
        if not all(torch.isfinite(s).all() for s in scores.values()):
            errors[doc] = "importance is not finite (NaN or inf; try float32 or a shorter max_length)"
            continue
        done.append(scores)
    for doc in sorted(errors):
        message = errors[doc][:500]
        state.failed.append({"index": doc, "error": message})
        _log(f"document {doc} failed and is not counted: {message}")
    if done:
        for k in kinds:
            masks = rule.select(torch.stack([d[k] for d in done]), k)
            state.counts[k] += masks.sum(dim=0, dtype=torch.int32)
        state.scored += len(done)
