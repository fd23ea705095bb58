"""What a setting of ``mwork experiment control`` costs, against plain batched ``generate``, as ratios.

The same items (``xquad-text`` en -> es from ``--data``, rendered as the experiment renders them)
are generated greedily in one left-padded batch with the KV cache, exactly ``--max-new-tokens``
tokens each (no stop string, ``min_new_tokens``), so that every phase generates the same tokens:

* ``plain``: no lever (the reference);
* ``neurons-set`` / ``vectors-add`` / ``vectors-add-norm`` / ``vectors-swap``: inside the lever's
  ``mwork.steer`` context (a seeded random neuron set of 0.5 % of the FFN neurons with a random
  statistic; random directions of norm 1 at every layer): the cost of the edit itself;
* ``cell``: a whole cell of the experiment with the ``vectors-add`` lever
  (``mwork.experiments.control.measure``: the experiment's generation, ``generate_stacked`` of
  the one cell, here without stop strings, then ``measure_cell``: the unsteered model's
  log-likelihood of each output, distinct-2 and the language of each output), against
  ``generate`` alone with no lever (``cell_plain``); an output that ends at EOS early makes the
  two generate different token counts, so read this ratio as the measures' overhead;
* ``stacked_edits``: ``--settings`` settings (``vectors-add`` at strengths 1, 2, ...) stacked
  as the experiment stacks them (``--stack``): one call of ``--settings`` copies of the items,
  each setting's ``Steering`` on its own rows, against the same call with no edit
  (``stacked_plain``, the same rows and tokens): what a stacked setting costs over plain
  batched ``generate``;
* ``stacked_cells``: the experiment's own path, ``generate_stacked`` of those settings (one
  batch of every row, stop strings and EOS as the experiment has them) against plain
  ``generate`` of the same rows in one batch (``stacked_cells_plain``);
* ``separate``: the plain rows of ``stacked_plain`` in ``--settings`` separate calls, against
  ``stacked_plain``: what stacking saves over generating each setting alone (``--stack 1``).

Each phase runs interleaved ``--repeats`` times; each time is the median over repeats and each
ratio the median of the per-repeat ratios (robust on a shared machine). The experiment runs
``pairs x (1 + settings)`` cells (``settings``: the levers' variants x layer ranges x positions x
strengths, plus the prompt variants); stacked, it costs about plain batched ``generate`` of
``pairs x (1 + settings) x items`` rows in batches of ``--batch-size``, times ``stacked_edits``,
plus each cell's measures::

    PYTHONPATH=src python benchmarks/control_speed.py --model gemma-3-270m --data tests/data [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack

import torch

import mwork
from mwork.control import items_of_split, load_items
from mwork.experiments.control.measure import Stacked, generate_stacked, measure_cell
from mwork.experiments.control.prompts import Prompt, render
from mwork.models.adapters import get_adapter
from mwork.steering import Steering
from mwork.tasks.generation import generate
from mwork.units.directions import Directions
from steer_bench import random_steer_set  # the same random steered set as the steering benchmark


def random_vectors(model, seed: int) -> Directions:
    n = get_adapter(model).num_layers
    gen = torch.Generator().manual_seed(seed)
    write = torch.randn(n, model.config.hidden_size, generator=gen)
    return Directions(write / write.norm(dim=-1, keepdim=True), list(range(n)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", default="tests/data", help="XQuAD folder (as the tasks read)")
    ap.add_argument("--items", type=int, default=8, help="items generated per call")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--settings", type=int, default=4, help="settings stacked in one call (the stacked phases)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", help="append the result as a JSON line to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = mwork.load_model(args.model, device=args.device)
    items = load_items("xquad-text", "en", "es", data=args.data)
    items = (items_of_split(items, "dev") + items_of_split(items, "test"))[: args.items]
    prompts = [render(it) for it in items]
    texts = [p.text for p in prompts]
    neurons, target, source = random_steer_set(model, 0.005), random_vectors(model, 1), random_vectors(model, 2)
    levers = {
        "neurons-set": lambda: mwork.steer(model, neurons, "set", 1.0),
        "vectors-add": lambda: mwork.steer(model, target, "add", 1.0),
        "vectors-add-norm": lambda: mwork.steer(model, target, "add", 1.0, keep_norm=True),
        "vectors-swap": lambda: mwork.steer(model, target, "add", 1.0, off=source),
    }

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def gen(rows: list[str]) -> None:
        tok.padding_side = "left"
        enc = {k: v.to(model.device) for k, v in tok(rows, return_tensors="pt", padding=True).items()}
        model.generate(**enc, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                       do_sample=False, pad_token_id=pad)

    def timed(fn) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        return time.perf_counter() - start

    def separate() -> None:
        for _ in range(args.settings):
            gen(texts)

    stacked_rows = texts * args.settings
    strengths = [float(k + 1) for k in range(args.settings)]

    def stacked_edits() -> None:
        with ExitStack() as stack:
            for k, a in enumerate(strengths):
                rows = range(k * len(texts), (k + 1) * len(texts))
                stack.enter_context(Steering(model, target, "add", a, rows=rows))
            gen(stacked_rows)

    unstopped = [Prompt(p.text, ()) for p in prompts]

    def lever(a: float):
        return lambda rows: Steering(model, target, "add", a, rows=rows)

    def stacked_cells() -> None:
        generate_stacked(model, tok, [Stacked(unstopped, lever(a)) for a in strengths],
                         max_new_tokens=args.max_new_tokens, batch_size=len(stacked_rows))

    def stacked_cells_plain() -> None:
        generate(model, tok, stacked_rows, max_new_tokens=args.max_new_tokens, batch_size=len(stacked_rows),
                 progress=False)

    def cell() -> None:
        outputs, = generate_stacked(model, tok, [Stacked(unstopped, lever(1.0))],
                                    max_new_tokens=args.max_new_tokens, batch_size=len(unstopped))
        measure_cell(model, tok, unstopped, outputs, batch_size=len(unstopped))

    def cell_plain() -> None:
        generate(model, tok, texts, max_new_tokens=args.max_new_tokens, batch_size=len(texts), progress=False)

    gen(texts)  # warm up
    times: dict[str, list[float]] = {"plain": [], **{k: [] for k in levers}, "cell_plain": [], "cell": [],
                                     "stacked_plain": [], "stacked_edits": [], "separate": [],
                                     "stacked_cells_plain": [], "stacked_cells": []}
    for _ in range(args.repeats):
        times["plain"].append(timed(lambda: gen(texts)))
        for name, make in levers.items():
            times[name].append(timed(lambda make=make: _in(make(), gen, texts)))
        times["cell_plain"].append(timed(cell_plain))
        times["cell"].append(timed(cell))
        times["stacked_plain"].append(timed(lambda: gen(stacked_rows)))
        times["stacked_edits"].append(timed(stacked_edits))
        times["separate"].append(timed(separate))
        times["stacked_cells_plain"].append(timed(stacked_cells_plain))
        times["stacked_cells"].append(timed(stacked_cells))
    ratios = {k: statistics.median(t / p for t, p in zip(times[k], times["plain"])) for k in levers}
    ratios["cell_vs_cell_plain"] = statistics.median(c / p for c, p in zip(times["cell"], times["cell_plain"]))
    for name, base in (("stacked_edits", "stacked_plain"), ("separate", "stacked_plain"),
                       ("stacked_cells", "stacked_cells_plain")):
        ratios[f"{name}_vs_{base}"] = statistics.median(t / p for t, p in zip(times[name], times[base]))
    result = {"model": args.model, "device": str(next(model.parameters()).device), "items": len(texts),
              "max_new_tokens": args.max_new_tokens, "settings": args.settings,
              "repeats": args.repeats, "threads": torch.get_num_threads(),
              "seconds": {k: round(statistics.median(v), 4) for k, v in times.items()},
              "ratio_to_plain": {k: round(v, 3) for k, v in ratios.items()}}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")


def _in(context, fn, rows) -> None:
    with context:
        fn(rows)


if __name__ == "__main__":
    main()
