"""``mwork lens``: layer-wise decoding by input language (the paper's Figure 1)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mwork.lens.langid import DEFAULT_LATIN_LANGUAGES
from mwork.lens.prompts import builtin_languages, builtin_prompts, read_prompts
from mwork.models.loading import DEFAULT_MODEL, add_device_map_argument

DEFAULT_LANGS = "zh,ru,fr,de,es"


def _codes(text: str | None) -> list[str]:
    return [c.strip() for c in (text or "").split(",") if c.strip()]


def _lens(args: argparse.Namespace) -> int:
    # imported here so that `mwork --help` does not load matplotlib
    from mwork.lens.langid import ScriptWordfreqIdentifier, TokenLabeler
    from mwork.lens.logit_lens import logit_lens
    from mwork.lens.plot import plot_shares
    from mwork.lens.regions import estimate_regions
    from mwork.lens.shares import language_shares, write_csv, write_json
    from mwork.models.loading import load_model, parse_device_map

    if args.max_prompts is not None and args.max_prompts < 1:
        raise ValueError(f"--max-prompts must be >= 1, got {args.max_prompts}")
    langs = _codes(args.langs)
    if args.prompts:
        prompts = read_prompts(args.prompts, langs or None, args.max_prompts)
    else:
        prompts = builtin_prompts(langs or _codes(DEFAULT_LANGS), args.max_prompts)
    identifier = ScriptWordfreqIdentifier(latin_languages=_codes(args.latin_langs))
    out = Path(args.out)

    start = time.time()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device, device_map=parse_device_map(args.device_map))
    load_s = time.time() - start
    result = logit_lens(model, tokenizer, prompts, top_k=args.top_k, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, template=args.template.replace("\\n", "\n"),
                        model_name=args.model)
    start = time.time()
    shares = language_shares(result, TokenLabeler(tokenizer, identifier), segment=args.positions)
    label_s = time.time() - start
    regions = estimate_regions(shares) if any(lang != "en" for lang in shares) else None

    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "lens_topk.safetensors")
    write_csv(shares, out / "lens.csv")
    write_json(result, shares, out / "lens.json", tokenizer=tokenizer, identifier_settings=identifier.settings(),
               segment=args.positions,
               extra={"timing": {"load_seconds": round(load_s, 2), "lens_seconds": round(result.seconds, 2),
                                 "label_seconds": round(label_s, 2)},
                      "regions": regions.to_dict() if regions else None})
    plot_shares(shares, out / "lens.png",
                title=f"{args.model}: language of top-{args.top_k} decoded tokens per layer")

    print(f"{'lang':>5} " + " ".join(f"{r.layer:>5d}" for r in next(iter(shares.values()))))
    for lang, rows in shares.items():
        print(f"{lang:>5} " + " ".join(f"{r.english_share:5.2f}" for r in rows) + "   (English share)")
    if regions is not None:
        print(regions.describe().splitlines()[-1])
    print(f"wrote {out / 'lens.csv'}, {out / 'lens.json'}, {out / 'lens.png'}, {out / 'lens_topk.safetensors'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lens", help="decode every layer to tokens and plot their language per layer (logit lens)",
        description="Layer-wise decoding: for prompts in each language, the share of English / non-English "
        "tokens among each layer's top-k decoded tokens. Writes lens.csv, lens.json, lens.png and "
        "lens_topk.safetensors to --out.",
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"alias, local folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--langs", default=None,
                   help=f"comma-separated input languages (default {DEFAULT_LANGS}); built-in prompt sets: "
                   f"{', '.join(builtin_languages())}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--prompts", default=None,
                   help="your prompts: plain text (one per line, language = the single --langs code) or "
                   "JSONL with text and lang")
    p.add_argument("--top-k", type=int, default=10, help="tokens decoded per layer and position (default 10)")
    p.add_argument("--max-new-tokens", type=int, default=8,
                   help="greedily generated tokens per prompt, decoded too (default 8; 0 = prompt only)")
    p.add_argument("--max-prompts", type=int, default=None, help="at most this many prompts per language")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per batch (default 64)")
    p.add_argument("--positions", choices=("all", "prompt", "generated"), default="all",
                   help="which decoded positions count in the shares (default all)")
    p.add_argument("--template", default="{prompt}",
                   help="prompt template; {prompt} is replaced, \\n is a newline (e.g. 'Q: {prompt}\\nA:')")
    p.add_argument("--latin-langs", default=",".join(DEFAULT_LATIN_LANGUAGES),
                   help="wordfreq languages for Latin-script tokens (default %(default)s)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    add_device_map_argument(p)
    p.set_defaults(func=_lens)
