"""What a setting of ``mwork experiment control`` costs, against plain batched ``generate``, as ratios.

The same items (``xquad-text`` en -> es from ``--data``, rendered as the experiment renders them)
are generated greedily in one left-padded batch with the KV cache, exactly ``--max-new-tokens``
tokens each (no stop string, ``min_new_tokens``), so that every phase generates the same tokens:

* ``plain``: no lever (the reference);
* ``neurons-set`` / ``vectors-add`` / ``vectors-add-norm`` / ``vectors-swap``: inside the lever's
  ``mwork.steer`` context (a seeded random neuron set of 0.5 % of the FFN neurons with a random
  statistic; random directions of norm 1 at every layer): the cost of the edit itself;
* ``cell``: a whole cell of the experiment with the ``vectors-add`` lever
  (``mwork.experiments.control.measure.measure_cell``: the experiment's generation through
  ``mwork.tasks.generation.generate``, here without stop strings, then the unsteered model's
  log-likelihood of each output, distinct-2 and the language of each output), against
  ``generate`` alone with no lever (``cell_plain``); an output that ends at EOS early makes the
  two generate different token counts, so read this ratio as the measures' overhead;
* ``stacked``: plain generation of ``--settings`` copies of the items in one call, against
  ``--settings`` separate calls: what batching the settings into the rows of one batch would
  save, which the edit primitive does not allow today (one strength per edit, not per row).

Each phase runs interleaved ``--repeats`` times; each time is the median over repeats and each
ratio the median of the per-repeat ratios (robust on a shared machine). The experiment's cost is
``pairs x (1 + settings)`` cells (``settings``: the levers' variants x layer ranges x positions x
strengths, plus the prompt variants), each about ``cell`` seconds for its pair's items::

    PYTHONPATH=src python benchmarks/control_speed.py --model gemma-3-270m --data tests/data [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import mwork
from mwork.control import items_of_split, load_items
from mwork.experiments.control.measure import measure_cell
from mwork.experiments.control.prompts import Prompt, render
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet
from mwork.tasks.generation import generate
from mwork.units.directions import Directions


def random_neurons(model, fraction: float = 0.005, seed: int = 0) -> NeuronSet:
    ns = NeuronSet.empty_for(model)
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for k, m in ns.masks.items():
        if k == "ffn":
            m[:] = torch.rand(m.shape, generator=gen) < fraction
        values[k] = torch.where(m, torch.randn(m.shape, generator=gen), torch.full(m.shape, float("nan")))
    return ns.with_statistics({"mean": values}, {"language": "random (benchmark)"})


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
    ap.add_argument("--settings", type=int, default=4, help="copies stacked in one call for 'stacked'")
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
    neurons, target, source = random_neurons(model), random_vectors(model, 1), random_vectors(model, 2)
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

    def stacked() -> None:
        gen(texts * args.settings)

    unstopped = [Prompt(p.text, ()) for p in prompts]

    def cell() -> None:
        measure_cell(model, tok, unstopped, mwork.steer(model, target, "add", 1.0),
                     max_new_tokens=args.max_new_tokens, batch_size=len(unstopped))

    def cell_plain() -> None:
        generate(model, tok, texts, max_new_tokens=args.max_new_tokens, batch_size=len(texts), progress=False)

    gen(texts)  # warm up
    times: dict[str, list[float]] = {"plain": [], **{k: [] for k in levers}, "cell_plain": [], "cell": [],
                                     "separate": [], "stacked": []}
    for _ in range(args.repeats):
        times["plain"].append(timed(lambda: gen(texts)))
        for name, make in levers.items():
            times[name].append(timed(lambda make=make: _in(make(), gen, texts)))
        times["cell_plain"].append(timed(cell_plain))
        times["cell"].append(timed(cell))
        times["separate"].append(timed(separate))
        times["stacked"].append(timed(stacked))
    ratios = {k: statistics.median(t / p for t, p in zip(times[k], times["plain"])) for k in levers}
    ratios["cell_vs_cell_plain"] = statistics.median(c / p for c, p in zip(times["cell"], times["cell_plain"]))
    ratios["stacked_vs_separate"] = statistics.median(s / p for s, p in zip(times["stacked"], times["separate"]))
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
