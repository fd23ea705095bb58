"""``run_latent``: word tasks x target languages x lenses -> per-layer P(target) and P(English).

:class:`LatentConfig` holds the settings and is the job ``mwork latent`` runs::

    run = LatentConfig(model="tiny-random-llama", targets=("zh", "de")).run()   # loads the model
    run = run_latent(model, tokenizer, LatentConfig(tasks=("translation",), source="fr",
                                                    targets=("zh", "de"), lenses=("logit",)), out="out/latent")
    run.rows[0]["p_english"], run.summary, run.survival
    run.write("out/latent")

Files (with ``out``): ``latent.csv`` (one row per task, pair, lens and lens layer: means and 95 %
confidence intervals over items), ``latent_summary.csv`` (per task, pair and lens: the layer
where English peaks, where the target overtakes it for good, the peak values), ``latent.json``
(settings, survival counts per pair, the summary, timing) and ``latent_<task>.png`` (Wendler
et al.'s figure: a panel per lens, per target language its P(target) and P(English) curves).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mwork.config import fingerprint, option
from mwork.files import csv_text, float_cell
from mwork.jobs import RunOptions
from mwork.latent.measure import last_states, layer_probs
from mwork.latent.tasks import TASKS, WordPrompt, build_prompts
from mwork.latent.words import load_words
from mwork.lens.job import LensModelOptions, TimedJob, check_at_least
from mwork.lens.lenses import IDENTITY_PROMPT, LENSES
from mwork.lens.make import make_lens
from mwork.lens.tuned import TunedLens

DEFAULT_TARGETS: tuple[str, ...] = ("zh", "de", "fr", "ru", "ja")


def _names(value, flag: str) -> tuple[str, ...]:
    from mwork.files import parse_names

    return parse_names(value, flag=flag)


def _choices(value, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"{what} must be a comma-separated choice of {', '.join(allowed)}; got {value!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{what} names one twice: {value!r}")
    return items


def _paths(value) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip())


@dataclass(frozen=True, kw_only=True)
class LatentConfig(LensModelOptions, RunOptions, TimedJob):
    """Word tasks x target languages x lenses: P(target word) against P(English word) per layer."""

    command = "latent"
    summary = "latent language as Wendler et al. measure it: word tasks, P(target) vs P(English) per layer"

    tasks: tuple[str, ...] = option(("translation",), f"comma-separated tasks: {', '.join(TASKS)}", flag="--task",
                                    parse=lambda v: _choices(v, TASKS, "--task"))
    source: str = option("fr", "input language of the translation task (repetition and cloze use the target)")
    targets: tuple[str, ...] = option(DEFAULT_TARGETS, "comma-separated target languages (not en)",
                                      parse=lambda v: _names(v, "--targets"))
    lenses: tuple[str, ...] = option(("logit",), f"comma-separated lenses: {', '.join(LENSES)}", flag="--lens",
                                     parse=lambda v: _choices(v, LENSES, "--lens"))
    tuned_lens: str | None = option(None, "folder of a tuned lens written by `mwork lens train` (for --lens tuned)",
                                    metavar="DIR")
    limit: int | None = option(None, "at most this many items per task and language pair (default: all that survive)")
    shots: int = option(4, "few-shot examples per prompt (cloze: at most 2, its sentences are few)")
    words: tuple[str, ...] = option((), "your own word lists or cloze files (TSV, see docs/latent.md), "
                                    "comma-separated, merged into the built-in ones", parse=_paths, metavar="TSV")
    patchscope_prompt: str = option(IDENTITY_PROMPT, "the patchscope's identity prompt; the last '?' is the patched "
                                    "position")
    batch_size: int = option(16, "prompts per forward pass")
    seed: int = option(0, "seed of the few-shot example choice")

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", _choices(self.tasks, TASKS, "tasks"))
        object.__setattr__(self, "lenses", _choices(self.lenses, LENSES, "lenses"))
        object.__setattr__(self, "targets", _names(self.targets, "--targets"))
        object.__setattr__(self, "source", _names(self.source, "--source")[0])
        object.__setattr__(self, "words", _paths(self.words))
        if "en" in self.targets:
            raise ValueError("--targets must not include en: the measure compares each target word with English")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"--targets names a language twice: {','.join(self.targets)}")
        if "tuned" in self.lenses and not self.tuned_lens:
            raise ValueError("--lens tuned needs --tuned-lens DIR (write one with `mwork lens train`)")
        check_at_least(self, {"limit": 1, "shots": 0, "batch_size": 1})

    def check(self) -> None:
        """A bad word list (or loading option) is refused before the model loads."""
        super().check()
        load_words(self.words)
        if self.tuned_lens:
            TunedLens.path(self.tuned_lens)

    def compute(self, model: Any, tokenizer: Any, load_seconds: float | None = None) -> LatentRun:
        """:func:`run_latent`; the result's ``write(out)`` writes the files."""
        from mwork.models.adapters import model_name

        run = run_latent(model, tokenizer, self, model_name=model_name(model))
        run.load_seconds = load_seconds
        return run


COLUMNS = ("task", "source", "target", "lens", "layer", "p_target", "p_target_lo", "p_target_hi", "p_english",
           "p_english_lo", "p_english_hi", "target_share", "log_ratio", "entropy", "n_items")
SUMMARY_COLUMNS = ("task", "source", "target", "lens", "n_items", "english_peak_layer", "english_peak",
                   "target_overtakes_layer", "target_peak_layer", "target_peak", "p_target_last", "p_english_last")
Z95 = 1.959963984540054
EPS = 1e-12


def mean_ci(values: torch.Tensor) -> tuple[float, float, float]:
    """Mean and normal-approximation 95 % interval (mean ± 1.96 · sd / √n) over dim 0."""
    n = values.shape[0]
    m = float(values.mean())
    if n < 2:
        return m, m, m
    half = Z95 * float(values.std(unbiased=True)) / math.sqrt(n)
    return m, m - half, m + half


def overtakes(p_target: list[float], p_english: list[float]) -> int | None:
    """The first layer from which the target's probability stays above English's to the last
    layer (None when it is not above at the last layer)."""
    layer = None
    for i in range(len(p_target) - 1, -1, -1):
        if p_target[i] > p_english[i]:
            layer = i
        else:
            break
    return layer


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["source"], r["target"], r["lens"]), []).append(r)
    out = []
    for (task, source, target, lens), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["layer"])
        pt, pe = [r["p_target"] for r in rs], [r["p_english"] for r in rs]
        e_peak = max(range(len(pe)), key=lambda i: pe[i])
        t_peak = max(range(len(pt)), key=lambda i: pt[i])
        out.append({"task": task, "source": source, "target": target, "lens": lens, "n_items": rs[0]["n_items"],
                    "english_peak_layer": e_peak, "english_peak": pe[e_peak],
                    "target_overtakes_layer": overtakes(pt, pe), "target_peak_layer": t_peak, "target_peak": pt[t_peak],
                    "p_target_last": pt[-1], "p_english_last": pe[-1]})
    return out


_fmt = float_cell(".6g")


def to_csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    return csv_text(rows, columns, _fmt)


@dataclass
class LatentRun:
    """Per-layer rows, their summary and the survival counts of one run; ``write(out)`` writes
    the files (module docstring)."""

    config: LatentConfig
    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    survival: list[dict[str, Any]]
    lens_settings: dict[str, Any]
    timing: dict[str, float]
    model_name: str
    files: dict[str, Path] = field(default_factory=dict)
    load_seconds: float | None = None  # the model's load, when the job loaded it (not in latent.json)

    def table(self) -> str:
        """The summary as ``mwork latent`` prints it."""
        lines = [f"{'task':<12}{'pair':<8}{'lens':<11}{'n':>4} {'EN peak (layer)':>16} {'target overtakes':>17} "
                 f"{'P(target) last':>15}"]
        for s in self.summary:
            over = "-" if s["target_overtakes_layer"] is None else str(s["target_overtakes_layer"])
            lines.append(f"{s['task']:<12}{s['source'] + '>' + s['target']:<8}{s['lens']:<11}{s['n_items']:>4} "
                         f"{s['english_peak']:>9.3f} ({s['english_peak_layer']:>2d}) {over:>17} {s['p_target_last']:>15.3f}")
        return "\n".join(lines)

    def write(self, out: str | Path, title: str | None = None) -> dict[str, Path]:
        from mwork.files import make_folder, write_json, write_text
        from mwork.latent.plot import plot_latent

        out = make_folder(out)
        files = {"latent.csv": out / "latent.csv", "latent_summary.csv": out / "latent_summary.csv",
                 "latent.json": out / "latent.json"}
        write_text(files["latent.csv"], to_csv(self.rows, COLUMNS))
        write_text(files["latent_summary.csv"], to_csv(self.summary, SUMMARY_COLUMNS))
        write_json(files["latent.json"], {
            "format": "mwork-latent", "version": 1, "model": self.model_name, "config": fingerprint(self.config),
            "lenses": self.lens_settings, "survival": self.survival, "summary": self.summary, "timing": self.timing,
            "measure": "P(word) = probability mass of the tokens that can start the word (with or without a leading "
                       "space), tokens shared by the target and English word removed from both; at the prompt's last "
                       "position; means and normal 95% intervals over items; entropy in nats; log_ratio = mean "
                       "log(P(target)/P(English)) with 1e-12 added to both",
        }, indent=1)
        for task in self.config.tasks:
            rows = [r for r in self.rows if r["task"] == task]
            if rows:
                name = f"latent_{task}.png"
                files[name] = out / name
                plot_latent(rows, files[name], title=title or f"{self.model_name}: {task}")
        self.files = files
        return files


def run_latent(model, tokenizer, config: LatentConfig | None = None, out: str | Path | None = None, *,
               model_name: str | None = None) -> LatentRun:
    """Build the word-task prompts of every task and target language, read each prompt's lens
    hidden states once, decode them with every lens and aggregate per layer (module docstring)."""
    config = config or LatentConfig()
    words = load_words(config.words)
    name = model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    timing: dict[str, float] = {}
    start = time.time()
    lenses = {lens: make_lens(lens, model, tokenizer, tuned_lens=config.tuned_lens,
                              patchscope_prompt=config.patchscope_prompt) for lens in config.lenses}
    timing["lens_load_seconds"] = round(time.time() - start, 2)

    pairs: list[tuple[str, str, str]] = []
    for task in config.tasks:
        for target in config.targets:
            if task == "translation" and target == config.source:
                continue  # that is the repetition task
            pairs.append((task, config.source if task == "translation" else target, target))
    survival, prompts_of = [], {}
    for task, source, target in pairs:
        shots = min(config.shots, 2) if task == "cloze" else config.shots
        prompts, counts = build_prompts(words, tokenizer, task, source, target, limit=config.limit, shots=shots,
                                        seed=config.seed)
        survival.append({"task": task, "source": source, "target": target, **counts})
        prompts_of[(task, source, target)] = prompts
    all_prompts: list[WordPrompt] = [p for ps in prompts_of.values() for p in ps]
    if not all_prompts:
        raise ValueError("no word-task item survives for these tasks and languages (see the survival counts); "
                         "add words with --words")

    start = time.time()
    states = last_states(model, tokenizer, [p.prompt for p in all_prompts], config.batch_size)
    timing["forward_seconds"] = round(time.time() - start, 2)
    rows: list[dict[str, Any]] = []
    for lens_name, lens in lenses.items():
        start = time.time()
        probs = layer_probs(lens, states, all_prompts)
        timing[f"{lens_name}_seconds"] = round(time.time() - start, 2)
        offset = 0
        for (task, source, target), ps in prompts_of.items():
            n = len(ps)
            if not n:
                continue
            sl = slice(offset, offset + n)
            offset += n
            pt, pe, ent = probs.p_target[sl], probs.p_english[sl], probs.entropy[sl]
            share = pt / (pt + pe).clamp_min(EPS)
            log_ratio = torch.log(pt + EPS) - torch.log(pe + EPS)
            for layer in range(pt.shape[1]):
                t, tlo, thi = mean_ci(pt[:, layer])
                e, elo, ehi = mean_ci(pe[:, layer])
                rows.append({"task": task, "source": source, "target": target, "lens": lens_name, "layer": layer,
                             "p_target": t, "p_target_lo": tlo, "p_target_hi": thi, "p_english": e,
                             "p_english_lo": elo, "p_english_hi": ehi, "target_share": float(share[:, layer].mean()),
                             "log_ratio": float(log_ratio[:, layer].mean()), "entropy": float(ent[:, layer].mean()),
                             "n_items": n})
    run = LatentRun(config, rows, summarise(rows), survival, {k: v.settings() for k, v in lenses.items()}, timing, name)
    if out is not None:
        run.write(out)
    return run
