"""The scores of a confusion run: the benchmark's rates per lever, with the fluency of the
completions beside them, so that "fixed" cannot mean "answers in the right language with nothing
left to say".

Per lever, the completions are scored as ``mwork confusion score`` scores a file
(:func:`mwork.confusion.lcb.score_completions`: the cells, the per-source, per-language and
overall averages, task ``all``), and each row gets ``lever`` and two fluency measures:

* ``distinct2``: distinct token bigrams over all bigrams of a completion (its generated tokens),
  averaged over the cell's completions that have a bigram;
* ``ppl``: the unmodified model's perplexity of the completions given their prompts,
  ``exp(sum of NLL / sum of tokens)`` over the cell (empty when not measured).

An average row's fluency is averaged as its rates are: per source and per language, the mean
over the cells; overall, the mean over the per-language averages; task ``all``, the mean over the
tasks' overall rows.

Beside the rows, a few sample completions per (lever, task, language), the confused ones first,
each line with the label the scorer gives it (``samples.jsonl``: what the report highlights), and
``lcb.png``: per language, each lever's LPR (bars), one panel per task."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from pathlib import Path

from mwork.confusion.lcb import ALL, LcbResult, Scorer, score_completions
from mwork.confusion.tables import FLUENCY, LCB_PNG, RUN_COLUMNS, SAMPLES_JSONL

#: sample completions kept per (lever, task, language)
SAMPLES = 2

Cell = tuple[str, str, str]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def cell_fluency(completions: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """``distinct2`` and ``ppl`` of one cell's completions (``distinct2``, ``nll``, ``new_tokens``)."""
    scored = [c for c in completions if c.get("nll") is not None and c.get("new_tokens")]
    tokens = sum(int(c["new_tokens"]) for c in scored)
    ppl = math.exp(sum(float(c["nll"]) for c in scored) / tokens) if tokens else None
    return {"distinct2": _mean([c.get("distinct2") for c in completions]),
            "ppl": ppl if ppl is not None and math.isfinite(ppl) else None}


class FluencyAverages:
    """The fluency of any lcb.csv row from the cells' (module docstring)."""

    def __init__(self, cells: Mapping[Cell, Mapping[str, float | None]]) -> None:
        self.cells = cells

    def row(self, task: str, source: str, language: str) -> dict[str, float | None]:
        return {m: self.value(m, task, source, language) for m in FLUENCY}

    def value(self, metric: str, task: str, source: str, language: str) -> float | None:
        if task == ALL:
            tasks = sorted({t for t, _, _ in self.cells})
            return _mean([self.value(metric, t, ALL, ALL) for t in tasks])
        if source != ALL and language != ALL:
            cell = self.cells.get((task, source, language))
            return None if cell is None else cell.get(metric)
        if source == ALL and language == ALL:
            langs = sorted({lang for t, _, lang in self.cells if t == task})
            return _mean([self.value(metric, task, ALL, lang) for lang in langs])
        return _mean([v.get(metric) for (t, s, lang), v in self.cells.items()
                      if t == task and (source == ALL or s == source) and (language == ALL or lang == language)])


def score_run(completions: Sequence[Mapping[str, Any]], levers: Sequence[str], scorer: Scorer,
              model: str) -> LcbResult:
    """lcb.csv's rows for a run's completions (``lever``, ``task``, ``source``, ``language``,
    ``completion`` and the fluency inputs), lever by lever in ``levers``' order; the metadata
    holds the scorer's settings and each lever's overall rates."""
    rows: list[dict] = []
    samples: list[dict] = []
    overall: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for lever in levers:
        mine = [c for c in completions if c["lever"] == lever]
        if not mine:
            continue
        result = score_completions([{"model": model, "task": c["task"], "source": c["source"],
                                     "language": c["language"], "completion": c["completion"]} for c in mine],
                                   scorer=scorer, where=f"{lever} completion")
        groups: dict[Cell, list[Mapping[str, Any]]] = {}
        for c in mine:
            groups.setdefault((c["task"], c["source"], c["language"]), []).append(c)
        fluency = FluencyAverages({k: cell_fluency(v) for k, v in groups.items()})
        for row in result.rows:
            rows.append({**row, "lever": lever, **fluency.row(row["task"], row["source"], row["language"])})
        overall[lever] = result.overall()
        samples += pick_samples(mine, scorer)
        meta = {k: v for k, v in result.metadata.items() if k not in ("completions", "empty_completions",
                                                                       "unscored_completions")}
    meta["completions"] = len(completions)
    meta["empty_completions"] = sum(not str(c["completion"]).strip() for c in completions)
    return RunScores(rows, meta, overall, samples)


def pick_samples(completions: Sequence[Mapping[str, Any]], scorer: Scorer, per: int = SAMPLES) -> list[dict]:
    """Up to ``per`` completions per (lever, task, language), in file order, those with a line not
    in the expected language first: each with its lines and their labels (None: not scored)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for c in completions:
        lines = scorer.line_labels(str(c["completion"]), c["language"])
        confused = any(label is not None and label != c["language"] for _, label in lines)
        groups.setdefault((c["lever"], c["task"], c["language"]), []).append(
            {"lever": c["lever"], "task": c["task"], "source": c["source"], "language": c["language"],
             "prompt_number": c.get("prompt_number"), "lines": [list(x) for x in lines], "confused": confused})
    out = []
    for items in groups.values():
        out += sorted(items, key=lambda x: not x["confused"])[:per]
    return out


def plot_languages(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Per language, each lever's LPR (bars; one panel per task); None when there is no rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mwork.plotting import plain_text, save_figure

    per_lang = [r for r in rows if r["task"] != ALL and r["source"] == ALL and r["language"] != ALL]
    tasks = list(dict.fromkeys(r["task"] for r in per_lang))
    levers = list(dict.fromkeys(r["lever"] for r in per_lang))
    if not tasks or all(r["lpr"] is None for r in per_lang):
        return None

    @plain_text
    def draw() -> Any:
        fig, axes = plt.subplots(1, len(tasks), figsize=(1.6 + 1.2 * max(len({r["language"] for r in per_lang}), 2)
                                                          * len(tasks), 3.6), squeeze=False)
        width = 0.8 / len(levers)
        for ax, task in zip(axes[0], tasks):
            langs = sorted({r["language"] for r in per_lang if r["task"] == task})
            value = {(r["lever"], r["language"]): r["lpr"] for r in per_lang if r["task"] == task}
            for j, lever in enumerate(levers):
                ax.bar([i + (j - (len(levers) - 1) / 2) * width for i in range(len(langs))],
                       [value.get((lever, lang)) or 0.0 for lang in langs], width, label=lever)
            ax.set_xticks(range(len(langs)), langs)
            ax.set_ylim(0, 1)
            ax.set_title(task)
            ax.set_ylabel("LPR")
        axes[0][-1].legend(fontsize="small")
        fig.tight_layout()
        return fig

    return save_figure(draw(), path, metadata={"Software": None})


class RunScores(LcbResult):
    """A run's lcb.csv rows (with ``lever`` and fluency), lcb.json's record, sample completions;
    ``overall()``: ``{lever: {task: {lpr, wpr, lcpr, n}}}``."""

    def __init__(self, rows: list[dict], metadata: dict, overall: dict[str, Any], samples: list[dict]) -> None:
        super().__init__(rows, metadata)
        self._overall = overall
        self.samples = samples

    def overall(self) -> dict[str, Any]:  # type: ignore[override]
        return self._overall

    def write(self, out: Any) -> dict:
        """lcb.csv, lcb.json, samples.jsonl and lcb.png (when there is a rate to draw) in ``out``."""
        import json

        from mwork.confusion.tables import write_result
        from mwork.files import write_text

        csv_path, json_path = write_result(self, out, RUN_COLUMNS)
        samples = Path(out) / SAMPLES_JSONL
        write_text(samples, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in self.samples))
        png = plot_languages(self.rows, Path(out) / LCB_PNG)
        if png is None:
            (Path(out) / LCB_PNG).unlink(missing_ok=True)  # an older run's bars would not be these
        files = {"csv": csv_path, "json": json_path, "samples": samples}
        return {**files, "png": png} if png is not None else files
