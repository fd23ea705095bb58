"""Overhead of ``mwork eval`` (lm-eval through mwork's backend) against lm-eval's plain HFLM on the
same model and task: one ratio per setting, measured in one run, runs interleaved.

    PYTHONPATH=src python benchmarks/eval_bench.py --model gemma-3-270m --limit 40 --repeats 3

The task is the local ``mwork_xquad_mc_en`` (built from ``--data`` or ``$MWORK_DATA``, offline). Timed: lm-eval's
``simple_evaluate`` on an already loaded model (the same object for both), so the ratio is the
cost of the backend itself: ``mwork, no neurons`` should be 1.00 (target: within 1.05x);
``mwork, set off`` adds the deactivation hooks (for information). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--data", default=os.environ.get("MWORK_DATA"),
                        help="folder with xquad/xquad.en.json (default: $MWORK_DATA)")
    parser.add_argument("--limit", type=int, default=40, help="documents of the task")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--neurons", default=None, help="a NeuronSet for the 'set off' row (default: none)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    if not args.data:
        parser.error("give the XQuAD data: --data FOLDER (holding xquad/xquad.en.json) or set MWORK_DATA")

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    import mwork
    from mwork.tasks.lm_eval_backend import MworkLM
    from mwork.tasks.lm_eval_local import make_local_tasks
    from mwork.tasks.lm_eval_run import task_manager

    model, tok = mwork.load_model(args.model, device=args.device)
    folder = tempfile.mkdtemp(prefix="eval_bench_")
    make_local_tasks(folder, args.data, langs=["en"], limit=args.limit)
    manager = task_manager(folder, lambda m: "mwork_xquad_mc_en" in m.all_tasks)
    lms = {"hflm": HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size),
           "mwork, no neurons": MworkLM(model, tokenizer=tok, batch_size=args.batch_size)}
    if args.neurons:
        lms["mwork, set off"] = MworkLM(model, tokenizer=tok, neurons=args.neurons, batch_size=args.batch_size)
    times: dict[str, list[float]] = {name: [] for name in lms}
    scores = {}
    for _ in range(args.repeats):
        for name, lm in lms.items():
            start = time.perf_counter()
            res = lm_eval.simple_evaluate(model=lm, tasks=["mwork_xquad_mc_en"], task_manager=manager, limit=args.limit,
                                          bootstrap_iters=0, log_samples=False)
            times[name].append(time.perf_counter() - start)
            scores[name] = res["results"]["mwork_xquad_mc_en"]["acc,none"]
    base = statistics.median(times["hflm"])
    print(json.dumps({"model": args.model, "task": "mwork_xquad_mc_en", "limit": args.limit, "repeats": args.repeats,
                      "runs_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
                      "median_s": {k: round(statistics.median(v), 3) for k, v in times.items()},
                      "ratio_to_hflm": {k: round(statistics.median(v) / base, 4) for k, v in times.items()},
                      "acc": scores}, indent=2))


if __name__ == "__main__":
    main()
