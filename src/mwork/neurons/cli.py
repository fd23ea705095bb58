"""``mwork detect`` / ``mwork specific`` / ``mwork stats``: thin shims over the Python API.

``detect``'s settings are each registered method's config fields (``mwork.neurons.methods``;
PLND's: ``DetectConfig``), options and help generated from them; the rest says where the
documents and the model come from. A method says how it runs (``DetectionMethod.one_language``):
one language's corpus per run (PLND) or every language at once (LAPE, AP).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mwork.config import add_arguments, from_args, given
from mwork.models.loading import DEFAULT_MODEL, add_device_map_argument
from mwork.neurons.detect_config import RULE_VALUES, DetectConfig
from mwork.texts import FORMATS, TextSource, parse_range

if TYPE_CHECKING:
    from mwork.neurons.methods.base import DetectionMethod


def _detect(args: argparse.Namespace) -> int:
    """Every method alike: its options checked, then its way of running (``one_language``)."""
    from mwork.neurons.methods import get_detection_method

    method = get_detection_method(args.method)
    _refuse_options(args, args.method, method.config_class)
    return (_detect_one_language if method.one_language else _detect_languages)(args, method)


def _several_languages_methods() -> str:
    from mwork.neurons.methods import detection_methods, get_detection_method

    return ", ".join(m for m in detection_methods() if not get_detection_method(m).one_language)


def _detect_one_language(args: argparse.Namespace, method: DetectionMethod) -> int:
    """``--method plnd`` (default): one language's corpus, one set. Under torchrun (WORLD_SIZE >
    1) the ranks share the corpus; rank 0 writes and prints."""
    from mwork import distributed

    name = args.method
    if args.out_dir is not None:
        raise ValueError("--out-dir is for the methods that detect several languages at once (--method "
                         f"{_several_languages_methods()}); --method {name} writes one language's set to --out")
    if args.out is None:
        raise ValueError(f"--method {name} needs --out (the NeuronSet to write)")
    if args.lang is None:
        raise ValueError(f"--method {name} needs --lang LANG (the language of the corpus)")
    from mwork.files import check_name

    check_name(args.lang, "language code", "--lang")  # the one rule for language codes
    corpora = args.corpus or []
    if len(corpora) > 1:
        raise ValueError(f"--method {name} reads one corpus (--corpus FILE); the LANG=FILE corpora are for "
                         f"--method {_several_languages_methods()}")
    # bad settings fail here, before the model is loaded
    config = from_args(method.config_class, args, language=args.lang)
    corpus = TextSource(
        path=corpora[0] if corpora else None, format=args.format, text_field=args.text_field or "text",
        hf_dataset=args.hf_dataset, hf_config=args.hf_config, hf_split=args.hf_split,
        articles=parse_range(args.articles, "--articles") if args.articles else None, max_docs=args.max_docs,
    )
    _check_text_field(args, {args.lang: corpus})
    created = distributed.init()
    try:
        return _detect_run(args, config, corpus)
    finally:
        if created:
            distributed.teardown()


def _check_text_field(args: argparse.Namespace, corpora: dict[str, TextSource]) -> None:
    """``--text-field`` names a field of JSONL or hub rows; for any other corpus it would be ignored."""
    if args.text_field is None:
        return
    other = [f"{lang} ({source.kind()})" for lang, source in corpora.items() if source.kind() not in ("jsonl", "hf")]
    if other:
        raise ValueError(f"--text-field {args.text_field} names the text field of JSONL or hub data set rows; the "
                         f"corpus of {', '.join(other)} has no fields")


def _refuse_options(args: argparse.Namespace, method: str, config_class: type) -> None:
    """Options of the other methods given with ``--method method``: an error, not ignored."""
    from mwork.neurons.methods import detection_methods, get_detection_method

    mine = {f.name for f in dataclasses.fields(config_class)}
    for other in detection_methods():
        cls = get_detection_method(other).config_class
        stray = [name for name in given(args, cls) if name not in mine]
        if stray:
            flags = ", ".join(f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                              for f in dataclasses.fields(cls) if f.name in stray)
            raise ValueError(f"{flags} does not apply to --method {method}")


def _detect_languages(args: argparse.Namespace, method: DetectionMethod) -> int:
    """``--method lape`` / ``ap``: every language at once, one set per language."""
    from mwork.neurons.methods import detect_languages
    from mwork.neurons.methods.run import parse_corpus_specs
    from mwork.texts import DETECTION_ARTICLES

    if args.out is not None or args.lang is not None:
        raise ValueError(f"--method {args.method} writes one set per language: give --corpus LANG=FILE for each "
                         "language and --out-dir DIR (not --out / --lang)")
    if args.out_dir is None:
        raise ValueError(f"--method {args.method} needs --out-dir DIR (DIR/LANG.safetensors per language)")
    if args.hf_dataset or args.hf_config or args.articles or args.format != "auto":
        raise ValueError(f"with --method {args.method} name each corpus as LANG=SPEC (a file, FILE[A:B], "
                         "xquad:LANG[A:B], hf:DATASET[:CONFIG][@SPLIT]), not with --hf-dataset/--articles/--format")
    specs = parse_corpus_specs(args.corpus or [])
    config = from_args(method.config_class, args)  # bad settings fail here, before the model is loaded
    options = {"text_field": args.text_field or "text", "max_docs": args.max_docs}
    # a bad spec fails here, before the model is loaded
    _check_text_field(args, {lang: TextSource.parse(spec, articles=DETECTION_ARTICLES, **options)
                             for lang, spec in specs.items()})
    from mwork.models.loading import load_model, parse_device_map

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device,
                                  device_map=parse_device_map(args.device_map))
    start = time.time()
    sets = detect_languages(model, tokenizer, specs, args.method, config, out_dir=args.out_dir,
                            progress=not args.quiet, model_id=args.model, corpus_options=options)
    for lang, ns in sets.items():
        per_kind = ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds if ns.count(k))
        print(f"{lang}: {ns.count()} neurons ({ns.fraction():.4%} of all; {per_kind or 'none'}) by {args.method} "
              f"-> {Path(args.out_dir) / (lang + '.safetensors')}")
    print(f"({time.time() - start:.0f} s)")
    return 0


def _detect_run(args: argparse.Namespace, config: DetectConfig, corpus: TextSource) -> int:
    from mwork import distributed
    from mwork.models.loading import load_model, parse_device_map
    from mwork.neurons.detect import detect

    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device,
                                  device_map=parse_device_map(args.device_map))
    start = time.time()
    ns = detect(model, tokenizer, corpus, config, out=args.out, resume=args.resume, progress=not args.quiet,
                model_id=args.model, corpus_info=corpus.describe())
    if distributed.rank() != 0:
        return 0
    world = distributed.world_size()
    per_kind = ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds)
    across = ns.meta["across_documents"]
    need, n = across["min_doc_count"], ns.meta["n_docs"]
    fewer = {k: f"{across['min_doc_count_per_kind'][k]}/{m}" for k, m in across["n_docs_per_kind"].items() if m != n}
    label = " [REFERENCE-COMPAT]" if config.reference_compat else ""
    print(f"{config.language}: {ns.count()} neurons ({ns.fraction():.4%} of all; {per_kind}) important in "
          f"{need}/{n} documents"
          + ("".join(f", {k} in {v}" for k, v in fewer.items()) if fewer else "")
          + f" ({len(ns.meta['empty_documents'])} empty, {len(ns.meta['failed_documents'])} failed){label} "
          f"-> {Path(args.out)} ({time.time() - start:.0f} s{f', {world} processes' if world > 1 else ''})")
    return 0


def _specific(args: argparse.Namespace) -> int:
    from mwork.neurons.neuronset import NeuronSet
    from mwork.neurons.specific import save_language_specific

    for path in save_language_specific(args.sets, args.out_dir, rule=args.rule, english=args.english):
        ns = NeuronSet.load(path)
        print(f"{ns.meta['name']}: {ns.count()} neurons ({ns.fraction():.4%} of all; "
              + ", ".join(f"{k}={ns.count(k)}" for k in ns.kinds) + f") -> {path}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    if args.router:
        return _router_stats(args)
    from mwork.neurons.router_stats import RouterStatsConfig

    stray = [f"--{name.replace('_', '-')}" for name in given(args, RouterStatsConfig)] + (["--corpus"] if args.corpus
                                                                                          else [])
    if stray:
        raise ValueError(f"{', '.join(stray)}: only used for router statistics (--router); without it they would be "
                         "ignored")
    if not args.sets:
        raise ValueError("give NeuronSet files, or --router --model M --corpus LANG=SPEC ... for router statistics")
    from mwork.neurons.overlap import named_sets, write_stats

    sets, names = named_sets(args.sets)
    paths = write_stats(sets, args.out, names)
    for name, ns in zip(names, sets):
        print(f"{name}: {ns.count()} neurons ({ns.fraction():.4%} of all)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _router_stats(args: argparse.Namespace) -> int:
    from mwork.neurons.router_stats import RouterStatsConfig, router_statistics, write_router_stats

    if args.sets:
        raise ValueError("--router measures a model's routing on texts; it takes no NeuronSet files")
    config = from_args(RouterStatsConfig, args, corpora=tuple(args.corpus or ()))
    if not config.corpora:
        raise ValueError("--router needs --corpus LANG=SPEC for at least one language (e.g. --corpus en=xquad:en)")
    from mwork.models.loading import load_model
    from mwork.neurons.router_stats import parse_corpora

    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    stats = router_statistics(model, tokenizer, parse_corpora(config.corpora), config=config, progress=not args.quiet)
    paths = write_router_stats(stats, args.out, {"model": config.model})
    spec = stats.specificity()
    for lang, n in zip(stats.languages, stats.tokens.tolist()):
        print(f"{lang}: {n} tokens")
    if len(stats.languages) > 1:
        print(f"expert specificity: mean {float(spec.nanmean()):.4f}, max {float(spec.nan_to_num(-1).max()):.4f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.neurons.methods import detection_methods, get_detection_method

    methods = detection_methods()
    p = sub.add_parser(
        "detect", help="detect language-specific neurons (PLND, LAPE, activation AP) and save NeuronSets",
        description="--method plnd (default): per document, the neurons important by a rule (default: top 20% per "
        "layer and kind); kept if important in all documents (or a fraction q of them); writes OUT.safetensors + "
        "OUT.json for --lang. --method lape / ap: every language at once from --corpus LANG=FILE (repeat it), by the "
        "method's own rule; writes OUT_DIR/LANG.safetensors + .json. Methods: "
        + "; ".join(f"{m}: {get_detection_method(m).description}" for m in methods) + ".",
    )
    p.add_argument("--method", default="plnd", choices=methods, help="detection method (default: plnd)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="built-in alias, local folder or hub id")
    p.add_argument("--corpus", action="append",
                   help="plnd: text file (one document per line), JSONL (.jsonl) or SQuAD JSON (.json); lape/ap: "
                   "LANG=SPEC, once per language (SPEC: a file, FILE[A:B], xquad:LANG[A:B], hf:DATASET...)")
    p.add_argument("--format", default="auto", choices=FORMATS, help="corpus file format (default: from the suffix)")
    p.add_argument("--text-field", default=None, help="JSONL / hub data set field holding the text (default: text)")
    p.add_argument("--articles", help="SQuAD JSON only: articles START:STOP (e.g. 0:24)")
    p.add_argument("--hf-dataset", help="hub data set id or local data set folder instead of --corpus")
    p.add_argument("--hf-config")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--out", help="plnd: output NeuronSet path (.safetensors added if missing)")
    p.add_argument("--out-dir", help="lape / ap: output folder (LANG.safetensors per language)")
    p.add_argument("--lang", metavar="LANG", help="plnd: " + DetectConfig.__dataclass_fields__["language"].metadata["help"])
    p.add_argument("--max-docs", type=int, help="use the first N documents (empty ones included)")
    add_arguments(p, DetectConfig, exclude=("language", *RULE_VALUES))
    add_arguments(p.add_mutually_exclusive_group(), DetectConfig,
                  exclude=[f for f in DetectConfig.__dataclass_fields__ if f not in RULE_VALUES])
    added = set(DetectConfig.__dataclass_fields__)
    for m in methods:
        cls = get_detection_method(m).config_class
        if cls is DetectConfig:
            continue
        fresh = [f.name for f in dataclasses.fields(cls) if f.name not in added]
        add_arguments(p, cls, exclude=[f.name for f in dataclasses.fields(cls) if f.name not in fresh])
        added.update(fresh)
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="plnd: continue from OUT's checkpoint if one exists with the same settings (default: yes)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    add_device_map_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_detect, output_kinds={"out": None})  # --out X writes X.safetensors (checked there)

    p = sub.add_parser("specific", help="language-specific sets: each language's set minus the shared neurons",
                       description="Writes each input's language-specific set under DIR/<input file name>.")
    p.add_argument("sets", nargs="+", help="NeuronSet files of several languages (same model)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--rule", default="shared", choices=["shared", "english", "others"],
                   help="shared: minus neurons in all sets (reference, default); english: minus the English set; "
                   "others: minus the union of the other sets")
    p.add_argument("--english", default="en", help="language code of the English set for --rule english")
    p.set_defaults(func=_specific)

    p = sub.add_parser("stats", help="counts per layer and kind, fraction of all neurons, Jaccard overlaps (CSV+PNG); "
                       "with --router: how often a mixture-of-experts model's router picks each expert per language",
                       description="NeuronSet statistics, or (--router) per-language router statistics of a "
                       "mixture-of-experts model: selection frequency per language, layer and expert, and an "
                       "expert-level specificity score (see docs/moe.md).")
    p.add_argument("sets", nargs="*", help="NeuronSet files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--router", action="store_true", help="router statistics of --model on --corpus texts instead")
    p.add_argument("--corpus", nargs="+", action="extend", metavar="LANG=SPEC",
                   help="with --router: texts per language (a file, xquad:LANG[A:B], builtin:LANG ...)")
    from mwork.neurons.router_stats import RouterStatsConfig

    add_arguments(p.add_argument_group("router statistics (--router)"), RouterStatsConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_stats)
