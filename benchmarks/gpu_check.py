"""One-table check of mwork on a CUDA machine (runs on the CPU too, smaller): ``gpu_check.sh``.

Rows (one markdown table, then ``ALL OK`` or ``FAILED: n rows``; exit status 0 / 1):

* ``agreement``: exact importance (FFN, Q, K, V) of every channel of every layer of one
  document against brute force (zero ONE channel, rerun, measure: Eq. 1), on the tiny model of
  every family. The brute force runs in float64 on the same device and is the truth. float32:
  max relative error (max |exact - brute| / max |brute| per layer, worst layer and kind) must
  stay under 1e-3 (seen: ~3e-7 on the CPU). bfloat16 (the weights are rounded too, importance
  reduced in float32): relative error under 0.1 (seen: ~1e-2) and rank correlation (Spearman,
  per kind over layers x channels, worst kind) at least 0.98 (seen: 0.9995).
* ``deactivate exit``: logits before a ``mwork.deactivate`` context, inside (must differ) and
  after it (must be bit-identical to before), float32 and bfloat16.
* ``detect timing``: the plain forward pass (no LM head) and ``importance`` for all kinds
  (exact Q/K: on CUDA the torch path of the kernel) on one document of ``l`` tokens, median of
  3 after a warm-up, with CUDA's peak allocated memory; gemma-3-270m at l = 512 and 2048 on
  CUDA (``--bench-model``, ``--bench-lengths`` change it). Reported, not judged.

About 1-3 minutes on an H100, most of it loading; ``--device cpu`` (the default without CUDA)
with ``--families``/``--bench-model tiny-random-gemma3 --bench-lengths 32,64`` is what the
test runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

import torch

import mwork
from mwork.models.adapters import KINDS, get_adapter
from mwork.models.tiny import TINY_ALIASES
from mwork.neurons.brute_force import brute_force
from mwork.neurons.importance import importance, spearman
from mwork.neurons.neuronset import NeuronSet

TEXT = "The quick brown fox jumps over the lazy dog. Le renard brun saute par-dessus le chien."
FP32_MAX_REL = 1e-3
BF16_MAX_REL = 0.1
BF16_MIN_RANK = 0.98
COLUMNS = ("check", "model", "dtype", "size", "metric", "value", "limit", "ok")


@dataclass
class Row:
    check: str
    model: str
    dtype: str
    size: str
    metric: str
    value: str
    limit: str
    ok: bool | None  # None: reported, not judged

    def cells(self) -> list[str]:
        ok = "-" if self.ok is None else ("yes" if self.ok else "NO")
        return [self.check, self.model, self.dtype, self.size, self.metric, self.value, self.limit, ok]


def agreement_rows(alias: str, device: str) -> list[Row]:
    truth_model, tok = mwork.load_model(alias, dtype=torch.float64, device=device)
    ids = torch.tensor(tok(TEXT).input_ids, device=device)
    ad = get_adapter(truth_model)
    brute = {k: torch.stack([brute_force(truth_model, ids, layer, k) for layer in range(ad.num_layers)])
             for k in KINDS}
    del truth_model
    rows = []
    batch = {"input_ids": ids[None].cpu(), "attention_mask": torch.ones(1, ids.numel(), dtype=torch.long)}
    size = f"l={ids.numel()}"
    for dtype in (torch.float32, torch.bfloat16):
        model, _ = mwork.load_model(alias, dtype=dtype, device=device)
        got = importance(model, batch)
        del model
        rel = {k: max(float((got[k][0, i].double() - brute[k][i]).abs().max() / brute[k][i].abs().max().clamp_min(1e-30))
                      for i in range(ad.num_layers)) for k in KINDS}
        worst = max(rel.values())
        name = str(dtype).replace("torch.", "")
        value = f"{worst:.2e} ({', '.join(f'{k} {v:.1e}' for k, v in rel.items())})"
        if dtype == torch.float32:
            rows.append(Row("agreement", alias, name, size, "max rel err", value, f"< {FP32_MAX_REL:g}",
                            worst < FP32_MAX_REL))
        else:
            rho = {k: spearman(got[k][0].double(), brute[k]) for k in KINDS}
            rows.append(Row("agreement", alias, name, size, "max rel err", value, f"< {BF16_MAX_REL:g}",
                            worst < BF16_MAX_REL))
            low = min(rho.values())
            rows.append(Row("agreement", alias, name, size, "rank corr", f"{low:.4f} "
                            f"({', '.join(f'{k} {v:.3f}' for k, v in rho.items())})", f">= {BF16_MIN_RANK}",
                            low >= BF16_MIN_RANK))
    return rows


@torch.no_grad()
def deactivate_rows(alias: str, device: str) -> list[Row]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = mwork.load_model(alias, dtype=dtype, device=device)
        ad = get_adapter(model)
        counts = ad.neuron_counts()
        picks = {k: {i: list(range(0, counts[k], 3)) for i in range(ad.num_layers)} for k in KINDS}
        ns = NeuronSet.from_indices(model, picks, {"name": "every third"})
        batch = {k: v.to(device) for k, v in tok([TEXT, "Bonjour."], return_tensors="pt", padding=True).items()}
        before = model(**batch).logits
        with mwork.deactivate(model, ns):
            inside = model(**batch).logits
        after = model(**batch).logits
        ok = torch.equal(before, after) and not torch.equal(before, inside)
        rows.append(Row("deactivate exit", alias, str(dtype).replace("torch.", ""), f"{ns.count()} off",
                        "after == before (bits); inside differs",
                        f"{'equal' if torch.equal(before, after) else 'DIFFERENT'}; inside "
                        f"{'differs' if not torch.equal(before, inside) else 'SAME'}", "bit-identical", ok))
    return rows


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def detect_timing_rows(alias: str, lengths: list[int], device: str, repeats: int = 3) -> list[Row]:
    model, _ = mwork.load_model(alias, device=device)
    ad = get_adapter(model)
    vocab = model.get_input_embeddings().weight.shape[0]
    rows = []
    gen = torch.Generator().manual_seed(0)
    for n in lengths:
        ids = torch.randint(10, vocab, (1, n), generator=gen)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

        def forward() -> None:
            x = ids.to(device)
            with torch.inference_mode():
                ad.body(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False)

        def imp() -> None:
            importance(model, batch, backend="torch" if device.startswith("cuda") else "auto")

        times: dict[str, list[float]] = {"forward": [], "importance": []}
        peak: dict[str, float | None] = {}
        for name, fn in (("forward", forward), ("importance", imp)):
            fn()  # warm-up
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            for _ in range(repeats):
                _sync(device)
                t = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t)
            peak[name] = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
        fwd, imp_s = statistics.median(times["forward"]), statistics.median(times["importance"])
        mem = "" if peak["importance"] is None else f"; peak {peak['forward']:.0f} / {peak['importance']:.0f} MiB"
        rows.append(Row("detect timing", alias, str(next(model.parameters()).dtype).replace("torch.", ""), f"l={n}",
                        "forward / importance (all kinds)",
                        f"{fwd * 1e3:.1f} ms / {imp_s * 1e3:.1f} ms (x{imp_s / fwd:.1f}){mem}", "report", None))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--families", default=",".join(TINY_ALIASES), help="tiny aliases for the agreement and exit rows")
    p.add_argument("--bench-model", default=None, help="model of the timing rows (default: gemma-3-270m on CUDA, "
                   "tiny-random-gemma3 on the CPU)")
    p.add_argument("--bench-lengths", default=None, help="document lengths (default 512,2048 on CUDA, 64,128 on CPU)")
    p.add_argument("--no-bench", action="store_true", help="skip the timing rows")
    args = p.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device")
    cuda = device.startswith("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 for the agreement rows
    torch.backends.cudnn.allow_tf32 = False
    families = [f if f.startswith("tiny-random-") else f"tiny-random-{f}" for f in args.families.split(",") if f]
    start = time.time()
    rows: list[Row] = []
    for alias in families:
        rows += agreement_rows(alias, device)
        rows += deactivate_rows(alias, device)
        print(f"[gpu_check] {alias} done ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    if not args.no_bench:
        model = args.bench_model or ("gemma-3-270m" if cuda else "tiny-random-gemma3")
        lengths = [int(x) for x in (args.bench_lengths or ("512,2048" if cuda else "64,128")).split(",") if x]
        rows += detect_timing_rows(model, lengths, device)
    where = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"## mwork GPU check on {where} (torch {torch.__version__}, {time.time() - start:.0f} s)\n")
    print(markdown(rows))
    failed = [r for r in rows if r.ok is False]
    print(f"\n{'ALL OK' if not failed else f'FAILED: {len(failed)} rows'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
