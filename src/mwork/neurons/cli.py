"""``mwork detect`` / ``mwork specific`` / ``mwork stats``: language-specific neurons from the shell."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mwork.models.loading import DEFAULT_MODEL, add_device_map_argument
from mwork.neurons import detect as det
from mwork.texts import FORMATS, TextSource, parse_range


def _per_kind(text: str, cast: type) -> float | dict[str, float]:
    """``"0.1"`` -> 0.1; ``"ffn=12000,q=2000"`` -> {"ffn": 12000, "q": 2000}."""
    if "=" not in text:
        return cast(text)
    out = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        out[kind.strip()] = cast(value)
    return out


def _detect(args: argparse.Namespace) -> int:
    """Under torchrun (WORLD_SIZE > 1) the ranks share the corpus; rank 0 writes and prints."""
    from mwork import distributed

    created = distributed.init()
    try:
        return _detect_run(args)
    finally:
        if created:
            distributed.teardown()


def _detect_run(args: argparse.Namespace) -> int:
    from mwork import distributed
    from mwork.models.loading import load_model, parse_device_map

    corpus = TextSource(
        path=args.corpus, format=args.format, text_field=args.text_field, hf_dataset=args.hf_dataset,
        hf_config=args.hf_config, hf_split=args.hf_split,
        articles=parse_range(args.articles, "--articles") if args.articles else None, max_docs=args.max_docs,
    )
    rule = {"epsilon": None, "top_fraction": None, "top_k": None}
    if args.epsilon is not None:
        rule["epsilon"] = _per_kind(args.epsilon, float)
    if args.top_fraction is not None:
        rule["top_fraction"] = _per_kind(args.top_fraction, float)
    if args.top_k is not None:
        rule["top_k"] = _per_kind(args.top_k, int)
    if args.rule is not None:
        name = args.rule.replace("-", "_")
        given = [n for n, v in rule.items() if v is not None]
        if given and given != [name]:
            raise ValueError(f"--rule {args.rule} does not match the value given (--{given[0].replace('_', '-')})")
        if not given and name != "top_fraction":
            raise ValueError(f"--rule {args.rule} needs its value: --{args.rule} VALUE")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, device_map=parse_device_map(args.device_map))
    start = time.time()
    ns = det.detect(
        model, tokenizer, corpus, language=args.lang, **rule, min_doc_fraction=args.min_doc_fraction,
        kinds=args.kinds.split(","), max_length=args.max_length, truncate=args.truncate, batch_size=args.batch_size,
        buffer_docs=args.buffer_docs,
        reference_compat=args.reference_compat, qk_method=args.qk_method, model_id=args.model, corpus_info=corpus.describe(), out=args.out,
        checkpoint_every=args.checkpoint_every, resume=args.resume, progress=not args.quiet,
    )
    if distributed.rank() != 0:
        return 0
    path = Path(args.out)
    world = distributed.world_size()
    per_kind = ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds)
    label = " [REFERENCE-COMPAT]" if args.reference_compat else ""
    print(f"{args.lang}: {ns.count()} neurons ({ns.fraction():.4%} of all; {per_kind}) important in "
          f"{ns.meta['across_documents']['min_doc_count']}/{ns.meta['n_docs']} documents "
          f"({len(ns.meta['empty_documents'])} empty, {len(ns.meta['failed_documents'])} failed){label} "
          f"-> {path} ({time.time() - start:.0f} s{f', {world} processes' if world > 1 else ''})")
    return 0


def _specific(args: argparse.Namespace) -> int:
    from mwork.neurons.neuronset import NeuronSet, _resolve
    from mwork.neurons.specific import language_specific

    inputs = [_resolve(p) for p in args.sets]
    names = [p.name for p in inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"input file names must differ (outputs are written under the same names): {names}")
    out_dir = Path(args.out_dir)
    if any(out_dir.resolve() == p.parent.resolve() for p in inputs):
        raise ValueError("--out-dir is the inputs' folder: the results would overwrite the inputs; choose another")
    sets = [NeuronSet.load(p) for p in inputs]
    for path, ns in zip(inputs, language_specific(sets, rule=args.rule, english=args.english)):
        ns.save(out_dir / path.name)
        print(f"{ns.meta['name']}: {ns.count()} neurons ({ns.fraction():.4%} of all; "
              + ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds) + f") -> {out_dir / path.name}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from mwork.neurons.neuronset import NeuronSet, _resolve
    from mwork.neurons.stats import default_names, write_stats

    sets = [NeuronSet.load(p) for p in args.sets]
    names = [_resolve(p).stem for p in args.sets]
    if len(set(names)) != len(names):
        names = default_names(sets)
    paths = write_stats(sets, args.out, names)
    for name, ns in zip(names, sets):
        print(f"{name}: {ns.count()} neurons ({ns.fraction():.4%} of all)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect", help="detect the neurons important for a language's documents (PLND) and save a NeuronSet",
        description="Per document, the neurons important by a rule (default: top 20%% per layer and kind); kept if "
        "important in all documents (or a fraction q of them). Writes OUT.safetensors + OUT.json.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in alias, local folder or hub id")
    p.add_argument("--lang", required=True, help="language code recorded in the set (e.g. fr)")
    p.add_argument("--corpus", help="text file (one document per line), JSONL (.jsonl) or SQuAD JSON (.json)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="corpus file format (default: from the suffix)")
    p.add_argument("--text-field", default="text", help="JSONL / hub data set field holding the text")
    p.add_argument("--articles", help="SQuAD JSON only: articles START:STOP (e.g. 0:24)")
    p.add_argument("--hf-dataset", help="hub data set id or local data set folder instead of --corpus")
    p.add_argument("--hf-config")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--out", required=True, help="output NeuronSet path (.safetensors added if missing)")
    p.add_argument("--max-docs", type=int, help="use the first N documents (empty ones included)")
    p.add_argument("--batch-size", type=int, default=det.DEFAULT_BATCH_SIZE)
    p.add_argument("--buffer-docs", type=int, default=det.DEFAULT_BUFFER_DOCS,
                   help="documents per block: sorted by length inside a block for batching; checkpoints fall on "
                   "block ends; under torchrun block i goes to rank i %% N, so use at least N blocks "
                   "(default %(default)s)")
    p.add_argument("--max-length", type=int, default=det.DEFAULT_MAX_LENGTH,
                   help="tokens per window; longer documents are split into windows (default %(default)s)")
    p.add_argument("--truncate", action="store_true",
                   help="score only each document's first MAX_LENGTH tokens instead of all its windows (faster)")
    p.add_argument("--rule", choices=["top-fraction", "top-k", "epsilon"],
                   help="per-document rule (implied by the value option; default top-fraction)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epsilon", help="absolute importance threshold (the paper); E or per kind: ffn=E1,q=E2,...")
    g.add_argument("--top-fraction", help=f"fraction per layer and kind (default {det.DEFAULT_TOP_FRACTION}); "
                   "F or ffn=F1,q=F2,...")
    g.add_argument("--top-k", help="neurons per layer and kind; K or ffn=K1,q=K2,...")
    p.add_argument("--min-doc-fraction", type=float, default=1.0,
                   help="keep neurons important in at least this fraction of documents (default 1: all)")
    p.add_argument("--kinds", default="ffn,q,k,v", help="neuron kinds (default ffn,q,k,v)")
    p.add_argument("--checkpoint-every", type=int, default=det.DEFAULT_CHECKPOINT_EVERY,
                   help="write OUT.checkpoint.safetensors every N documents (default %(default)s)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from OUT's checkpoint if one exists with the same settings (default: yes)")
    p.add_argument("--reference-compat", action="store_true",
                   help="COMPARISON ONLY: the reference code's scores (sum|up_proj|, unscaled Q/K outer product, "
                   "|V output|) and its rule (top 12000 FFN / 2000 attention per layer, capped); not the paper's math")
    p.add_argument("--qk-method", choices=("exact", "approx"), default="exact",
                   help="Q/K scores: exact Eq. 8 (default) or its first-order approximation")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_device_map_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_detect)

    p = sub.add_parser("specific", help="language-specific sets: each language's set minus the shared neurons",
                       description="Writes each input's language-specific set under DIR/<input file name>.")
    p.add_argument("sets", nargs="+", help="NeuronSet files of several languages (same model)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--rule", default="shared", choices=["shared", "english", "others"],
                   help="shared: minus neurons in all sets (reference, default); english: minus the English set; "
                   "others: minus the union of the other sets")
    p.add_argument("--english", default="en", help="language code of the English set for --rule english")
    p.set_defaults(func=_specific)

    p = sub.add_parser("stats", help="counts per layer and kind, fraction of all neurons, Jaccard overlaps (CSV+PNG)")
    p.add_argument("sets", nargs="+", help="NeuronSet files")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_stats)
