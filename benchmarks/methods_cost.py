"""What the statistics-based detection methods cost against a plain forward pass.

    python benchmarks/methods_cost.py --model gemma-3-270m --langs en,es,de,ru,zh --docs 8 \
        --max-length 128 --repeats 3 [--out benchmarks/results/methods_cost_gemma-3-270m]

On the same documents (XQuAD articles 0-23, the first ``--docs`` paragraphs of each language),
windows and batches, the phases run interleaved ``--repeats`` times in one process:

* ``forward``: the plain forward pass of the decoder body (``collect_statistics`` with nothing
  to collect: no hook at all);
* ``lape``: the pass LAPE needs (the count of ffn.act > 0 per language), then its scores;
* ``ap``: the pass activation AP needs (per-document sums at ffn.up.out, q.out, k.out, v.out),
  then its scores (the average precision of every neuron, per language);
* ``shared``: the one pass the comparison experiment makes for LAPE, AP and mean-patching
  together (the reads of both plus the per-language sums at the four neuron sites).

Each ``*_s`` is the median over the repeats; each ratio (``*_ratio``) the median of the
per-repeat ratios to that repeat's forward pass, robust on a machine shared with other work.
``*_pass_s`` is the pass alone, ``*_scores_s`` the computation of the scores from its
statistics. Prints one JSON object; with ``--out``, also writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mwork  # noqa: E402
from mwork.experiments.methods.detection import NEURON_SITES  # noqa: E402
from mwork.neurons.methods import get_detection_method  # noqa: E402
from mwork.neurons.methods.stats import StatsRequest, collect_statistics  # noqa: E402
from mwork.texts import read_texts  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--langs", default="en,es,de,ru,zh")
    p.add_argument("--docs", type=int, default=8, help="paragraphs per language")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", help="write <out>.json and <out>.md")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = mwork.load_model(args.model, device="cpu")
    langs = [x for x in args.langs.split(",") if x]
    docs = {lang: read_texts(f"xquad:{lang}[0:24]")[:args.docs] for lang in langs}
    lape, ap = get_detection_method("lape"), get_detection_method("ap")
    lape_cfg = lape.make_config(max_length=args.max_length, batch_size=args.batch_size)
    ap_cfg = ap.make_config(max_length=args.max_length, batch_size=args.batch_size)
    shared_request = lape.request(lape_cfg).merge(ap.request(ap_cfg)).merge(
        StatsRequest(site_means=tuple(NEURON_SITES.values())))

    def run_pass(request: StatsRequest):
        return collect_statistics(model, tok, docs, request, max_length=args.max_length, batch_size=args.batch_size,
                                  progress=False)

    tokens = sum(int(t.sum()) for t in run_pass(StatsRequest()).tokens.values())  # also a warm-up
    times: dict[str, list[float]] = {k: [] for k in ("forward", "lape_pass", "lape_scores", "ap_pass", "ap_scores",
                                                      "shared_pass")}
    for _ in range(args.repeats):
        start = time.perf_counter()
        run_pass(StatsRequest())
        times["forward"].append(time.perf_counter() - start)
        for name, method, cfg in (("lape", lape, lape_cfg), ("ap", ap, ap_cfg)):
            start = time.perf_counter()
            stats = run_pass(method.request(cfg))
            mid = time.perf_counter()
            method.from_stats(stats, cfg)
            times[f"{name}_pass"].append(mid - start)
            times[f"{name}_scores"].append(time.perf_counter() - mid)
        start = time.perf_counter()
        run_pass(shared_request)
        times["shared_pass"].append(time.perf_counter() - start)
    result = {"model": args.model, "langs": langs, "docs_per_lang": args.docs, "tokens": tokens,
              "max_length": args.max_length, "batch_size": args.batch_size, "repeats": args.repeats,
              "threads": torch.get_num_threads()}
    for key, values in times.items():
        result[f"{key}_s"] = statistics.median(values)
        result[f"{key}_s_all"] = values
    fwd = times["forward"]
    for name in ("lape", "ap"):
        total = [a + b for a, b in zip(times[f"{name}_pass"], times[f"{name}_scores"])]
        result[f"{name}_ratio"] = statistics.median(t / f for t, f in zip(total, fwd))
        result[f"{name}_pass_ratio"] = statistics.median(t / f for t, f in zip(times[f"{name}_pass"], fwd))
    result["shared_pass_ratio"] = statistics.median(t / f for t, f in zip(times["shared_pass"], fwd))
    result["forward_s_per_1k_tokens"] = 1000 * result["forward_s"] / tokens
    print(json.dumps(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        rows = [("forward pass", result["forward_s"], 1.0)]
        for name in ("lape", "ap"):
            rows.append((f"{name}: pass", result[f"{name}_pass_s"], result[f"{name}_pass_ratio"]))
            rows.append((f"{name}: pass + scores", result[f"{name}_pass_s"] + result[f"{name}_scores_s"],
                         result[f"{name}_ratio"]))
        rows.append(("shared pass (LAPE + AP + means)", result["shared_pass_s"], result["shared_pass_ratio"]))
        lines = [f"{args.model}, {len(langs)} languages x {args.docs} XQuAD paragraphs, {tokens} text tokens, "
                 f"max_length {args.max_length}, batch {args.batch_size}, {result['threads']} threads, median of "
                 f"{args.repeats}", "", "| phase | seconds | / forward |", "|---|---|---|"]
        lines += [f"| {name} | {s:.2f} | {r:.3f} |" for name, s, r in rows]
        out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
