"""``mwork enhance``: tune only a language's neurons; ``enhance apply`` / ``enhance compare``.

Texts (``--texts``, ``--eval``): a file (.txt one document per line, .jsonl field ``text``,
SQuAD-format .json) or ``xquad:LANG``; for training ``xquad:LANG`` means articles 0-23, for
evaluation 24-47 (``--articles`` / ``--eval-articles`` choose others). A trailing ``[A:B]``
keeps documents A..B-1 (Python slice), e.g. ``french.txt[0:200]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mwork.models.loading import DEFAULT_MODEL, load_model
from mwork.texts import DETECTION_ARTICLES, EVALUATION_ARTICLES
from mwork.texts import read_texts as texts_of

TRAIN_ARTICLES = DETECTION_ARTICLES
EVAL_ARTICLES = EVALUATION_ARTICLES


def read_texts(spec: str, articles: str | None = None, default_articles: range = TRAIN_ARTICLES) -> list[str]:
    """Documents from ``spec`` (``mwork.texts``); ``articles``: the --articles option (START:STOP)."""
    texts = texts_of(spec, articles=articles, default_articles=default_articles)
    if not texts:
        raise ValueError(f"{spec} gives no documents")
    return texts


def _settings_from(args: argparse.Namespace) -> dict:
    keys = {"lr": "lr", "epochs": "epochs", "batch_size": "batch_size", "grad_accum": "grad_accum",
            "warmup_ratio": "warmup_ratio", "schedule": "schedule", "max_grad_norm": "max_grad_norm",
            "max_length": "max_length", "weight_decay": "weight_decay", "seed": "seed", "steps": "max_steps",
            "max_docs": "max_docs", "micro_batch_size": "micro_batch_size"}
    return {dest: getattr(args, arg) for arg, dest in keys.items() if getattr(args, arg, None) is not None}


def _add_training_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training (defaults: the paper's settings)")
    g.add_argument("--max-docs", type=int, help="use only the first N documents")
    g.add_argument("--steps", type=int, help="optimiser steps (overrides --epochs; data cycles as needed)")
    g.add_argument("--epochs", type=int, help="epochs (default 1)")
    g.add_argument("--lr", type=float, help="learning rate (default 2e-6)")
    g.add_argument("--batch-size", type=int, help="documents per batch (default 8)")
    g.add_argument("--grad-accum", type=int, help="batches per optimiser step (default 4)")
    g.add_argument("--micro-batch-size", type=int, help="documents per forward pass, for memory (default: batch size)")
    g.add_argument("--warmup-ratio", type=float, help="share of steps for linear warm-up (default 0.05)")
    g.add_argument("--schedule", choices=("cosine", "linear", "constant"), help="after warm-up (default cosine)")
    g.add_argument("--max-grad-norm", type=float, help="gradient clipping (default 0.3)")
    g.add_argument("--max-length", type=int, help="tokens per document, truncated (default 512)")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    g.add_argument("--seed", type=int, help="data order, dropout and baselines (default 0)")
    g.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_cmd(args: argparse.Namespace) -> int:
    from mwork.experiments.enhance import enhance
    from mwork.neurons.neuronset import NeuronSet

    missing = [o for o, v in (("--neurons", args.neurons), ("--texts", args.texts), ("--out", args.out)) if not v]
    if missing:
        raise ValueError(f"mwork enhance needs {', '.join(missing)} (or a subcommand: apply, compare)")
    texts = read_texts(args.texts, args.articles)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    neurons: NeuronSet | str = args.neurons
    extra = {"texts": args.texts, "articles": args.articles}
    if args.random_like is not None:
        chosen = NeuronSet.load(args.neurons, model)
        neurons = chosen.random_like(args.random_like, exclude=chosen)
        extra["random_like"] = {"of": args.neurons, "seed": args.random_like}
    result = enhance(model, tokenizer, neurons, texts, args.out, resume=args.resume, stop_after=args.stop_after,
                     checkpoint_every=args.checkpoint_every, progress=not args.no_progress, model_id=args.model,
                     meta=extra, **_settings_from(args))
    m = result.meta
    print(json.dumps({"out": str(args.out), "finished": m["finished"], "steps": m["steps"]["done"],
                      "trainable_parameters": m["trainable_parameters"], "final_loss": m["losses"][-1] if m["losses"] else None,
                      "wall_time_s": m["wall_time_s"]}))
    return 0


def _apply_cmd(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, dtype=args.dtype, device="cpu", delta=args.delta)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; choose a new folder for the merged model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(json.dumps({"out": str(out), "model": args.model, "delta": args.delta}))
    return 0


def _compare_cmd(args: argparse.Namespace) -> int:
    from mwork.experiments.enhance import METHODS, compare

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    eval_sets = {}
    for item in args.eval:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            raise ValueError(f"--eval takes NAME=SPEC (e.g. zh=xquad:zh), got {item!r}")
        texts = read_texts(spec, args.eval_articles, EVAL_ARTICLES)
        eval_sets[name] = texts[:args.eval_max_texts] if args.eval_max_texts else texts
    texts = read_texts(args.texts, args.articles)
    lrs = {m: getattr(args, f"{m}_lr") for m in METHODS if getattr(args, f"{m}_lr") is not None}
    tasks = _tasks_from(args)
    task_kwargs = {"max_new_tokens": args.task_max_new_tokens} if args.task_max_new_tokens else None
    rows = compare(args.model, args.neurons, texts, eval_sets, args.out, methods=methods, lrs=lrs,
                   lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, random_seed=args.random_seed,
                   dtype=args.dtype, device=args.device, eval_batch_size=args.eval_batch_size,
                   eval_max_length=args.eval_max_length, tasks=tasks, task_source=args.task_source,
                   task_limit=args.task_limit, task_kwargs=task_kwargs, progress=not args.no_progress,
                   **_settings_from(args))
    print(Path(args.out, "compare.md").read_text(), end="")
    print(json.dumps({"out": str(args.out), "rows": len(rows)}))
    return 0


def _tasks_from(args: argparse.Namespace) -> dict[str, list[str]] | None:
    """``--task NAME`` (repeatable) x ``--task-langs zh,en`` -> ``{"xquad": ["zh", "en"]}``."""
    langs = [x.strip() for x in (args.task_langs or "").split(",") if x.strip()]
    if not args.task:
        if langs or args.task_limit or args.task_source or args.task_max_new_tokens:
            raise ValueError("--task-langs / --task-limit / --task-source / --task-max-new-tokens need --task NAME")
        return None
    if not langs:
        raise ValueError("--task needs --task-langs, e.g. --task-langs zh,en")
    return {name: list(langs) for name in dict.fromkeys(args.task)}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "enhance",
        help="fine-tune only a language's neurons (writes DIR/delta.safetensors + delta.json)",
        description="Fine-tune only the parameters of the neurons in --neurons (FFN: rows of W_gate/W_up and the "
        "column of W_down; Q/K/V: their rows) on --texts; everything else stays frozen. Writes DIR/delta.safetensors "
        "and DIR/delta.json, and DIR/checkpoint.pt for --resume. Subcommands: apply (merge a delta and save a full "
        "model), compare (the method against random neurons, LoRA and full fine-tuning).",
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--neurons", help="NeuronSet file (.safetensors) whose neurons are trained")
    p.add_argument("--texts", help="training documents: FILE or xquad:LANG (articles 0-23); FILE[A:B] slices")
    p.add_argument("--articles", help="XQuAD articles for --texts, e.g. 0-23")
    p.add_argument("--out", help="output folder")
    p.add_argument("--random-like", type=int, metavar="SEED",
                   help="train random neurons instead, same count per layer and kind (a baseline)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-after", type=int, help="stop after N steps of this call (resume later)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="checkpoint every N steps (default 10; 0: at the end)")
    _add_training_options(p)
    p.set_defaults(func=_train_cmd)
    commands = p.add_subparsers(dest="enhance_command", metavar="{apply,compare}")

    a = commands.add_parser("apply", help="merge a delta into the base model and save the full model")
    a.add_argument("--model", default=DEFAULT_MODEL)
    a.add_argument("--delta", required=True, help="folder written by `mwork enhance`")
    a.add_argument("--out", required=True, help="new folder for the merged model (save_pretrained + tokenizer)")
    a.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16")
    a.set_defaults(func=_apply_cmd)

    c = commands.add_parser("compare", help="neurons vs random neurons vs LoRA vs full fine-tuning: one table",
                            description="Train each method from a fresh copy of the model on the same texts with the "
                            "same settings; perplexity on each --eval set, and each --task's score, before and "
                            "after. Writes OUT/compare.csv, compare.json, compare.md.")
    c.add_argument("--model", default=DEFAULT_MODEL)
    c.add_argument("--neurons", required=True)
    c.add_argument("--texts", required=True, help="training documents (as for mwork enhance)")
    c.add_argument("--articles", help="XQuAD articles for --texts (default 0-23)")
    c.add_argument("--eval", action="append", required=True, metavar="NAME=SPEC",
                   help="evaluation texts, repeatable: zh=xquad:zh (articles 24-47), en=xquad:en, fr=french.txt[9000:9200]")
    c.add_argument("--eval-articles", help="XQuAD articles for --eval (default 24-47)")
    c.add_argument("--eval-max-texts", type=int, help="first N texts of each evaluation set")
    c.add_argument("--eval-max-length", type=int, default=512)
    c.add_argument("--eval-batch-size", type=int, default=8)
    c.add_argument("--task", action="append", metavar="NAME",
                   help="also score this task before and after (repeatable): xquad, xcsqa, mgsm, xlsum")
    c.add_argument("--task-langs", help="languages of --task, comma-separated, e.g. zh,en")
    c.add_argument("--task-limit", type=int, help="first N examples per language (default: all)")
    c.add_argument("--task-source", help="task data: a file or folder, or 'hub' (default: $MWORK_DATA, else the hub)")
    c.add_argument("--task-max-new-tokens", type=int, help="generation length of generative tasks (default: the task's)")
    c.add_argument("--out", required=True)
    c.add_argument("--methods", default="neurons,random,lora,full", help="comma-separated subset of the four")
    for m in ("neurons", "random", "lora", "full"):
        c.add_argument(f"--{m}-lr", type=float, help=f"learning rate of {m} (default --lr)")
    c.add_argument("--lora-rank", type=int, help="LoRA rank (default: matches the neurons' trainable parameters)")
    c.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 2 x rank)")
    c.add_argument("--random-seed", type=int, default=0, help="seed of the random-neuron baseline")
    _add_training_options(c)
    c.set_defaults(func=_compare_cmd)
