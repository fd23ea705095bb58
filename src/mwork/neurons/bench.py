"""``mwork bench detect``: what neuron importance costs next to a plain forward pass.

On the same documents and batches it times (a) the plain forward pass without the LM head,
(b) ``importance`` for all kinds (exact Q/K), (c) FFN + V only, (d) the reference code's way
of computing its scores (batch of one, the full (heads, head_dim, l, l) tensor, per-layer
``.tolist()``; skipped when its estimated memory exceeds what is available), and, optionally,
the first-order Q/K approximation with its agreement with the exact scores.

Timing: the phases run interleaved ``repeats`` times in one process; each figure is the median
over repeats, and each ratio the median of the per-repeat ratios (robust to a machine shared
with other work). Memory: each phase runs once more in a fresh subprocess; after loading the
model and preparing its inputs the subprocess resets the kernel's peak-RSS mark
(``/proc/self/clear_refs``) and reads ``VmHWM`` after the phase. ``peak_mem_*_mb`` is that peak
resident set of the whole process (weights included); ``*_extra_mb`` is the peak minus the
resident set just before the phase. Linux only; elsewhere the memory fields are null.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mwork.config import option
from mwork.jobs import Job, ModelOptions, RunOptions
from mwork.models.adapters import get_adapter
from mwork.neurons.importance import importance, spearman, top_overlap
from mwork.neurons.qk_kernel import native_error, native_library
from mwork.neurons.reference import reference_way, reference_way_bytes

PHASES = ("forward", "ffn_v", "importance", "reference")


@dataclass(frozen=True, kw_only=True)
class BenchConfig(ModelOptions, RunOptions, Job):
    """What ``mwork bench detect`` measures (module docstring); always on the CPU (memory is the
    process's resident set). ``progress``: the ``[bench]`` lines as the phases finish."""

    command = "detect"
    summary = "time and peak memory of neuron importance vs. the plain forward pass and the reference code's way"

    device: str | None = option("cpu", "the CPU: memory is measured as the process's resident set", cli=False,
                                record=False)
    device_map: str | None = option(None, "none: one CPU process", cli=False, record=False)
    seq_len: int = option(512, "tokens per document")
    docs: int = option(1, "number of documents")
    batch_size: int | None = option(None, "documents per batch (default: all)")
    texts: str | None = option(None, "text file, one document per line (default: the paper's English corpus at "
                               "$MWORK_DATA/corpora/english.txt if there, else random token ids)")
    repeats: int = option(3, "interleaved timing repeats (median reported)")
    reference: bool = option(True, "time the reference code's way (d)")
    approx: bool = option(True, "time the first-order Q/K approximation")
    memory: bool = option(True, "measure peak memory, one subprocess per phase")

    def check(self) -> None:
        if self.seq_len < 2 or self.docs < 1 or self.repeats < 1:
            raise ValueError("--seq-len must be at least 2, --docs and --repeats at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.texts is not None and not Path(self.texts).is_file():
            what = "a folder, not a text file" if Path(self.texts).is_dir() else "no such file"
            raise FileNotFoundError(f"--texts {self.texts}: {what}")
        self.check_model_options()

    def compute(self, model: Any, tokenizer: Any) -> "BenchResult":
        log = (lambda msg: print(msg, flush=True)) if self.progress else (lambda msg: None)
        return BenchResult(run_bench(self, log=log, model=model, tokenizer=tokenizer))


@dataclass
class BenchResult:
    """The benchmark's numbers (``data``, module docstring); ``write(out)``: ``out/bench.json``."""

    data: dict[str, Any]

    def write(self, out: str | Path) -> dict[str, Path]:
        from mwork.files import make_folder, write_json

        path = make_folder(out) / "bench.json"
        write_json(path, self.data, indent=2)
        return {"json": path}


# ---- documents -------------------------------------------------------------------------------


def default_texts() -> Path | None:
    """The paper's English detection corpus, ``corpora/english.txt`` under ``$MWORK_DATA``, if there."""
    root = os.environ.get("MWORK_DATA")
    if root and (Path(root) / "corpora" / "english.txt").is_file():
        return Path(root) / "corpora" / "english.txt"
    return None


def make_documents(tokenizer, seq_len: int, docs: int, texts: str | Path | None) -> tuple[torch.Tensor, str]:
    """``docs`` documents of exactly ``seq_len`` tokens: consecutive windows of the texts (lines
    joined by spaces, cycled if too short), each starting with the BOS token if the tokenizer has
    one; random token ids when there is no text. Returns (ids, description)."""
    path = Path(texts) if texts else default_texts()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    body = seq_len - len(bos)
    if path is None:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(10, tokenizer.vocab_size, (docs, seq_len), generator=g)
        if bos:
            ids[:, 0] = bos[0]
        return ids, "random token ids (seed 0)"
    stream: list[int] = []
    need = docs * body
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                stream += tokenizer(line.strip() + " ", add_special_tokens=False).input_ids
            if len(stream) >= need:
                break
    if not stream:
        raise ValueError(f"{path} holds no text")
    while len(stream) < need:
        stream += stream[: need - len(stream)]
    rows = [bos + stream[i * body : (i + 1) * body] for i in range(docs)]
    return torch.tensor(rows, dtype=torch.long), f"{path.name}: consecutive {seq_len}-token windows"


def _batches(ids: torch.Tensor, batch_size: int | None) -> list[dict[str, torch.Tensor]]:
    size = batch_size or ids.shape[0]
    return [{"input_ids": ids[i : i + size], "attention_mask": torch.ones_like(ids[i : i + size])} for i in range(0, ids.shape[0], size)]


# ---- phases ----------------------------------------------------------------------------------


def _phase(name: str, model, batches, ids: torch.Tensor):
    ad = get_adapter(model)
    if name == "forward":
        with torch.inference_mode():
            for b in batches:
                ad.body(**b, use_cache=False, **ad.forward_kwargs(b["attention_mask"]))
        return None
    if name == "ffn_v":
        return [importance(model, b, kinds=("ffn", "v")) for b in batches]
    if name == "importance":
        return [importance(model, b) for b in batches]
    if name == "approx":
        return [importance(model, b, kinds=("q", "k"), method="approx") for b in batches]
    if name == "reference":
        return [reference_way(model, ids[i : i + 1]) for i in range(ids.shape[0])]
    raise ValueError(name)


def _timed(name: str, model, batches, ids) -> tuple[float, object]:
    start = time.perf_counter()
    result = _phase(name, model, batches, ids)
    return time.perf_counter() - start, result


def _available_bytes() -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
        return int(re.search(r"MemAvailable:\s+(\d+) kB", text).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def _status_kb(field: str) -> int | None:
    try:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return None


def measure_memory_phase(cfg: BenchConfig, phase: str) -> dict:
    """Run one phase in this (fresh) process and report its peak resident memory."""
    model, tok = cfg.load()
    ids, _ = make_documents(tok, cfg.seq_len, cfg.docs, cfg.texts)
    batches = _batches(ids, cfg.batch_size)
    native_library()  # build/load the kernel before the measurement
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    except OSError:
        return {"phase": phase, "peak_mb": None, "extra_mb": None}
    before = _status_kb("VmRSS")
    _phase(phase, model, batches, ids)
    peak = _status_kb("VmHWM")
    return {"phase": phase, "peak_mb": peak / 1024, "extra_mb": (peak - before) / 1024}


def _memory_in_subprocess(cfg: BenchConfig, phase: str) -> dict:
    cmd = [sys.executable, "-m", "mwork.neurons.bench", "--memory-phase", phase, "--config", json.dumps(asdict(cfg))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"phase": phase, "peak_mb": None, "extra_mb": None, "error": proc.stderr.strip()[-300:]}
    return json.loads(lines[-1])


def _agreement(exact: list[dict], approx: list[dict], kind: str) -> tuple[float, float]:
    """Mean Spearman correlation and top-1% overlap per (document, layer) of approx vs exact."""
    rhos, overlaps = [], []
    for e, a in zip(exact, approx):
        for doc in range(e[kind].shape[0]):
            for layer in range(e[kind].shape[1]):
                x, y = a[kind][doc, layer], e[kind][doc, layer]
                rhos.append(spearman(x, y))
                overlaps.append(top_overlap(x, y, max(1, x.numel() // 100)))
    return statistics.fmean(rhos), statistics.fmean(overlaps)


def run_bench(cfg: BenchConfig, log: Callable[[str], Any] = print, model: Any = None, tokenizer: Any = None) -> dict:
    """Run the benchmark on ``model`` (default: ``cfg``'s, loaded on the CPU); returns the result
    dict (see the module docstring)."""
    cfg.check()
    model, tok = (model, tokenizer) if model is not None else cfg.load()
    ids, source = make_documents(tok, cfg.seq_len, cfg.docs, cfg.texts)
    batches = _batches(ids, cfg.batch_size)
    native = native_library() is not None
    _phase("forward", model, _batches(ids[:1, : min(cfg.seq_len, 64)], None), ids)  # warm-up

    ref_bytes = reference_way_bytes(model, cfg.seq_len)
    avail = _available_bytes()
    ref_ok = cfg.reference and (avail is None or ref_bytes < 0.6 * avail)
    ref_status = "measured" if ref_ok else ("disabled" if not cfg.reference else
                                            f"skipped: needs about {ref_bytes / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available")
    phases = ["forward", "ffn_v", "importance"] + (["approx"] if cfg.approx else [])
    times: dict[str, list[float]] = {p: [] for p in phases}
    exact = approx = None
    for r in range(cfg.repeats):
        for p in phases:
            t, res = _timed(p, model, batches, ids)
            times[p].append(t)
            exact = res if p == "importance" else exact
            approx = res if p == "approx" else approx
            log(f"[bench] repeat {r + 1}/{cfg.repeats} {p}: {t:.2f} s")
    ref_s = None
    if ref_ok:
        ref_s, _ = _timed("reference", model, batches, ids)
        log(f"[bench] reference way: {ref_s:.2f} s")

    med = {p: statistics.median(v) for p, v in times.items()}
    ratio = lambda p: statistics.median([a / f for a, f in zip(times[p], times["forward"])])  # noqa: E731
    ad = get_adapter(model)
    out = {
        "model": cfg.model,
        "seq_len": cfg.seq_len,
        "docs": cfg.docs,
        "batch_size": cfg.batch_size or cfg.docs,
        "threads": torch.get_num_threads(),
        "documents": source,
        "qk_method": "exact",
        "qk_kernel": "native C" if native else f"torch ({native_error()})",
        "repeats": cfg.repeats,
        "forward_s": med["forward"],
        "importance_s": med["importance"],
        "ffn_v_s": med["ffn_v"],
        "reference_s": ref_s,
        "reference_status": ref_status,
        "reference_mem_estimate_mb": ref_bytes / 2**20,
        "overhead": ratio("importance"),
        "ffn_v_overhead": ratio("ffn_v"),
        "speedup_vs_reference": (ref_s / med["importance"]) if ref_s else None,
        "forward_s_all": times["forward"],
        "importance_s_all": times["importance"],
        "ffn_v_s_all": times["ffn_v"],
        "neurons_per_layer": ad.neuron_counts(),
    }
    if cfg.approx:
        out["approx_s"] = med["approx"]
        out["approx_overhead"] = ratio("approx")  # Q/K only, on top of its own forward
        for kind in ("q", "k"):
            rho, overlap = _agreement(exact, approx, kind)
            out[f"approx_{kind}_spearman"] = rho
            out[f"approx_{kind}_top1pct_overlap"] = overlap
    mem = {}
    if cfg.memory:
        for p in ("forward", "importance", "ffn_v") + (("reference",) if ref_ok else ()):
            mem[p] = _memory_in_subprocess(cfg, p)
            log(f"[bench] memory {p}: {mem[p]}")
    get = lambda p, k: mem.get(p, {}).get(k)  # noqa: E731
    out.update(
        peak_mem_forward_mb=get("forward", "peak_mb"),
        peak_mem_importance_mb=get("importance", "peak_mb"),
        peak_mem_ffn_v_mb=get("ffn_v", "peak_mb"),
        peak_mem_reference_mb=get("reference", "peak_mb"),
        forward_extra_mb=get("forward", "extra_mb"),
        importance_extra_mb=get("importance", "extra_mb"),
        ffn_v_extra_mb=get("ffn_v", "extra_mb"),
        reference_extra_mb=get("reference", "extra_mb"),
        memory_method="peak RSS (VmHWM) of a fresh process per phase, reset after loading" if cfg.memory else None,
    )
    if out["peak_mem_forward_mb"] and out["peak_mem_importance_mb"]:
        out["peak_mem_ratio"] = out["peak_mem_importance_mb"] / out["peak_mem_forward_mb"]
    return out


def _main(argv: list[str]) -> int:  # the memory subprocess
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--memory-phase", required=True, choices=PHASES)
    p.add_argument("--config", required=True)
    args = p.parse_args(argv)
    cfg = BenchConfig(**json.loads(args.config))
    print(json.dumps(measure_memory_phase(cfg, args.memory_phase)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
