"""``mwork enhance``: tune only a language's neurons; ``enhance apply`` / ``enhance compare``.

A thin shim: the training options are the fields of :class:`EnhanceSettings`, the comparison's
those of :class:`CompareConfig` (help and defaults written once, there); texts are read by
:func:`mwork.texts.read_texts`.

Texts (``--texts``, ``--eval``): a file (.txt one document per line, .jsonl field ``text``,
SQuAD-format .json) or ``xquad:LANG``; for training ``xquad:LANG`` means articles 0-23, for
evaluation 24-47 (``--articles`` / ``--eval-articles`` choose others). A trailing ``[A:B]``
keeps documents A..B-1 (Python slice), e.g. ``french.txt[0:200]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mwork.config import add_arguments, from_args
from mwork.models.loading import DEFAULT_MODEL, load_model
from mwork.texts import is_empty, read_texts


def _add_training_options(p: argparse.ArgumentParser) -> None:
    from mwork.experiments.training import EnhanceSettings

    g = p.add_argument_group("training (defaults: the paper's settings)")
    add_arguments(g, EnhanceSettings)
    g.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    g.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_cmd(args: argparse.Namespace) -> int:
    from mwork.experiments.enhance import enhance
    from mwork.experiments.training import EnhanceSettings, check_run_options
    from mwork.neurons.neuronset import NeuronSet

    missing = [o for o, v in (("--neurons", args.neurons), ("--texts", args.texts), ("--out", args.out)) if not v]
    if missing:
        raise ValueError(f"mwork enhance needs {', '.join(missing)} (or a subcommand: apply, compare)")
    settings = from_args(EnhanceSettings, args)  # validated before anything is loaded
    check_run_options(args.stop_after, args.checkpoint_every)
    texts = read_texts(args.texts, articles=args.articles)
    if not texts:
        raise ValueError(f"--texts {args.texts} gives no documents")
    if all(is_empty(t) for t in texts):
        raise ValueError(f"--texts {args.texts} has no non-empty document: nothing to train on")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    neurons: NeuronSet | str = args.neurons
    extra = {"texts": args.texts, "articles": args.articles}
    if args.random_like is not None:
        chosen = NeuronSet.load(args.neurons, model)
        neurons = chosen.random_like(args.random_like, exclude=chosen)
        extra["random_like"] = {"of": args.neurons, "seed": args.random_like}
    result = enhance(model, tokenizer, neurons, texts, args.out, settings=settings, resume=args.resume,
                     stop_after=args.stop_after, checkpoint_every=args.checkpoint_every,
                     progress=not args.no_progress, model_id=args.model, meta=extra)
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
    from mwork.experiments.compare import CompareConfig, compare, named_specs, tasks_for
    from mwork.experiments.training_methods import method_names
    from mwork.experiments.training import EnhanceSettings

    lrs = {m: getattr(args, _lr_dest(m)) for m in method_names() if getattr(args, _lr_dest(m), None) is not None}
    config = from_args(CompareConfig, args, lrs=lrs or None, tasks=tasks_for(args.task, args.task_langs))
    settings = from_args(EnhanceSettings, args)
    rows = compare(args.model, args.neurons, read_texts(args.texts, articles=args.articles), named_specs(args.eval),
                   args.out, config=config, settings=settings, dtype=args.dtype, device=args.device,
                   progress=not args.no_progress)
    print(Path(args.out, "compare.md").read_text(), end="")
    print(json.dumps({"out": str(args.out), "rows": len(rows)}))
    return 0


def _lr_dest(method: str) -> str:
    return f"lr_of_{method}"


def register(sub: argparse._SubParsersAction) -> None:
    from mwork.experiments.compare import CompareConfig
    from mwork.experiments.training_methods import method_names

    p = sub.add_parser(
        "enhance",
        help="fine-tune only a language's neurons (writes DIR/delta.safetensors + delta.json)",
        description="Fine-tune only the parameters of the neurons in --neurons (FFN: rows of W_gate/W_up and the "
        "column of W_down; Q/K/V: their rows) on --texts; everything else stays frozen. Writes DIR/delta.safetensors "
        "and DIR/delta.json, and DIR/checkpoint.safetensors for --resume. Subcommands: apply (merge a delta and save "
        "a full model), compare (the method against random neurons, LoRA and full fine-tuning).",
    )
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--neurons", help="NeuronSet file (.safetensors) whose neurons are trained")
    p.add_argument("--texts", help="training documents: FILE or xquad:LANG (articles 0-23); FILE[A:B] slices")
    p.add_argument("--articles", metavar="START:STOP", help="XQuAD articles for --texts, e.g. 0:24")
    p.add_argument("--out", help="output folder")
    p.add_argument("--random-like", type=int, metavar="SEED",
                   help="train random neurons instead, same count per layer and kind (a baseline)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
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
    c.add_argument("--articles", metavar="START:STOP", help="XQuAD articles for --texts (default 0:24)")
    c.add_argument("--eval", action="append", required=True, metavar="NAME=SPEC",
                   help="evaluation texts, repeatable: zh=xquad:zh (articles 24-47), en=xquad:en, fr=french.txt[9000:9200]")
    c.add_argument("--task", action="append", metavar="NAME",
                   help="also score this task before and after (repeatable): xquad, xcsqa, mgsm, xlsum")
    c.add_argument("--task-langs", help="languages of --task, comma-separated, e.g. zh,en")
    c.add_argument("--out", required=True)
    add_arguments(c, CompareConfig)
    for m in method_names():
        c.add_argument(f"--{m}-lr", dest=_lr_dest(m), type=float, metavar="LR", help=f"learning rate of {m} (default: --lr)")
    _add_training_options(c)
    c.set_defaults(func=_compare_cmd)

