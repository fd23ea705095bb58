#!/usr/bin/env python
"""Regenerate the README's figures and tables (``docs/figures/``) from an ``mwork demo`` run.

    python scripts/readme_figures.py               # full-size demo into runs/readme-demo, then the figures
    python scripts/readme_figures.py --quick       # the quick demo instead
    python scripts/readme_figures.py --from DIR    # reuse a finished demo folder (runs nothing)
    python scripts/readme_figures.py --from DIR --screenshot-only   # only explorer.png (DIR needs its lens stage)

Nothing is drawn by hand: the PNGs are the demo's own plots, copied; the markdown tables and
the headline sentences are rendered from the demo's CSV/JSON files (the headline facts by the
same functions as the report's findings); ``explorer.png`` is a screenshot (Playwright driving
Chromium) of the report's layer explorer, on a page rendered from the demo folder.
``docs/figures/README.md`` records the commands, the versions and the run time. The demo caches
every stage, so running this again on the same folder only redraws.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mwork.report.kinds.lens import lens_facts
from mwork.report.kinds.neurons import neuron_facts

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIGURES = ROOT / "docs" / "figures"
DEFAULT_OUT = Path("runs") / "readme-demo"  # relative to where the script runs, like any --out

# docs/figures name <- file of the demo folder
PLOTS = {
    "lens.png": "lens/lens.png",
    "neurons_per_layer.png": "neurons/per_layer.png",
    "neurons_jaccard.png": "neurons/jaccard.png",
    "deactivation.png": "deactivation/deactivation.png",
}
TABLES = ("lens.md", "neurons.md", "deactivation.md", "enhance.md", "headline.md")
SCREENSHOTS = ("explorer.png",)  # of the report page rendered from the demo folder
NEEDED = ("run.json", "lens/lens.csv", "lens/lens.json", "lens/lens_explorer.json", "neurons/summary.csv",
          "deactivation/table.md", "deactivation/headline.csv", "enhance/compare.csv", "enhance/compare.json",
          *PLOTS.values())
LENS_NEEDED = ("lens/lens.csv", "lens/lens.json", "lens/lens_explorer.json")  # what explorer.png reads
# the explorer's prompt in the screenshot: the first of these languages the demo has (scripts a
# headless server may lack fonts for, such as Han, are not first choices)
EXPLORER_LANGS = ("fr", "de", "es", "ru")


# ---- small helpers ---------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(x: float) -> str:
    """Perplexity-like numbers: 3 significant digits, thousands separated."""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 100 else f"{x:.1f}"


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f} %"


def _share(x: Any) -> str:
    return f"{100 * float(x):g} %" if isinstance(x, (int, float)) else "?"


def _change(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f} %"  # + 0.0: no "-0.0"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _specific_meta(demo: Path) -> dict[str, Any]:
    """Detection settings as recorded in the first language-specific set (all share them)."""
    for path in sorted((demo / "neurons" / "specific").glob("*.json")):
        return json.loads(path.read_text(encoding="utf-8"))
    return {}


# ---- the tables -----------------------------------------------------------------------------
def lens_table(demo: Path) -> tuple[str, dict[str, Any]]:
    """English share of the decoded tokens per layer (rows) and input language (columns)."""
    info = json.loads((demo / "lens" / "lens.json").read_text(encoding="utf-8"))
    rows = _rows(demo / "lens" / "lens.csv")
    langs = list(dict.fromkeys(r["input_lang"] for r in rows))
    layers = sorted({int(r["layer"]) for r in rows})
    share = {(r["input_lang"], int(r["layer"])): float(r["english_share"]) for r in rows}
    body = [[str(layer)] + [f"{share[(lang, layer)]:.2f}" if (lang, layer) in share else "" for lang in langs]
            for layer in layers]
    reg = info.get("regions", {})
    if reg.get("found"):
        regions = (f"Layer regions estimated from this curve: the first U = {reg['understanding']} layers "
                   f"(understanding) and the last G = {reg['generation']} layers (generation) of "
                   f"{reg['num_layers']}.")
    else:
        regions = f"No layer regions estimated from this curve ({reg.get('reason', 'no estimate')})."
    text = (f"# Layer-wise decoding (logit lens): English share per layer\n\n"
            f"Model `{info.get('model')}`. Each cell: the share of English among the top-{info.get('top_k')} tokens "
            f"decoded at that layer whose language is known, over every position of the prompts in the column's "
            f"language, averaged over the prompts "
            f"(lens layer 0 = the embeddings, layer i = the output of decoder layer i-1). {regions}\n\n"
            + _table(["layer", *langs], body))
    facts = {**lens_facts(rows), "regions": reg}  # the report's findings use the same facts
    return text, facts


def neurons_table(demo: Path) -> tuple[str, dict[str, Any]]:
    """Language-specific neurons per language and kind, and their share of all neurons."""
    rows = _rows(demo / "neurons" / "summary.csv")
    langs = list(dict.fromkeys(r["set"] for r in rows))
    kinds = list(dict.fromkeys(r["kind"] for r in rows if r["kind"] != "all"))
    cell = {(r["set"], r["kind"]): r for r in rows}
    body, shares = [], {}
    for lang in langs:
        total = cell.get((lang, "all"))
        shares[lang] = float(total["fraction_of_model"]) if total else float("nan")
        body.append([lang, *(cell[(lang, k)]["count"] if (lang, k) in cell else "" for k in kinds),
                     total["count"] if total else "", _pct(shares[lang])])
    mean = neuron_facts(rows)["mean_share"]  # as the report's findings
    body.append(["mean", *([""] * len(kinds)), "", _pct(mean)])
    meta = _specific_meta(demo)
    how = []
    if meta:
        rule = meta.get("document_rule", {})
        across = meta.get("across_documents", {})
        how.append(f"Detected on {meta.get('n_docs')} documents per language (at most {meta.get('max_length')} "
                   f"tokens per window); per document the top {_share(rule.get('top_fraction'))} of each layer and "
                   f"kind by importance; kept if important in at least {_share(across.get('min_doc_fraction', 1))} "
                   f"of the documents; then {meta.get('specific', {}).get('description', 'language-specific')}.")
    total_neurons = next((int(r["total"]) for r in rows if r["kind"] == "all"), None)
    if total_neurons:
        how.append(f"All neurons of the model (FFN + Q + K + V channels, every layer): {total_neurons:,}.")
    text = ("# Language-specific neurons (PLND)\n\n" + " ".join(how) + "\n\n"
            + _table(["language", *(k.upper() for k in kinds), "all",
                      "share of all neurons"], body))
    return text, {"shares": shares, "mean_share": mean, "total": total_neurons}


def deactivation_table(demo: Path) -> tuple[str, list[dict[str, float]]]:
    """The experiment's own markdown (region grid + per-language headline), and its headline rows."""
    text = (demo / "deactivation" / "table.md").read_text(encoding="utf-8")
    head = []
    for r in _rows(demo / "deactivation" / "headline.csv"):
        head.append({"lang": r["lang"], **{k: float(r[k]) for k in ("original", "random_mean", "specific",
                                                                     "neurons_off", "share_off")}})
    return text, head


def enhance_table(demo: Path) -> tuple[str, list[dict[str, str]]]:
    """Before/after held-out perplexity of each trained method (compare.csv, without the memory columns)."""
    rows = _rows(demo / "enhance" / "compare.csv")
    langs = [c[len("ppl_"):-len("_before")] for c in rows[0] if c.startswith("ppl_") and c.endswith("_before")]
    head = ["method", "trainable parameters", "steps"]
    for lang in langs:
        head += [f"{lang} before", f"{lang} after", f"{lang} change"]
    body = []
    for r in rows:
        line = [r["method"], f"{int(float(r['trainable_parameters'])):,}", r["steps"]]
        for lang in langs:
            line += [_num(float(r[f"ppl_{lang}_before"])), _num(float(r[f"ppl_{lang}_after"])),
                     _change(float(r[f'ppl_{lang}_change_pct']))]
        body.append(line)
    info = json.loads((demo / "enhance" / "compare.json").read_text(encoding="utf-8"))
    lang = info.get("neurons", {}).get("meta", {}).get("language", "one language")
    text = (f"# Enhancement: fine-tuning only the `{lang}` neurons\n\n"
            f"Held-out perplexity (lower is better) before and after training on {info.get('n_docs', '?')} `{lang}` "
            f"documents (learning rate {info.get('settings', {}).get('lr', '?')})"
            + ("; `random` trains as many random neurons, same count per layer and kind" if any(
                r["method"] == "random" for r in rows) else "") + ".\n\n"
            + _table(head, body))
    return text, rows


def headline(lens: dict[str, Any], neurons: dict[str, Any], deact: list[dict[str, float]],
             enhance: list[dict[str, str]]) -> str:
    """One generated sentence per finding, for the README's summary (numbers from the files only)."""
    out = ["# Headline numbers (generated)\n"]
    out.append(f"- Layer-wise decoding, mean over {', '.join(lens['langs'])}: English share {lens['first']:.2f} at "
               f"layer 0, {lens['peak']:.2f} at its peak (layer {lens['peak_layer']}), {lens['last']:.2f} at the "
               f"last layer ({lens['last_layer']}).")
    out.append(f"- Language-specific neurons: {_pct(neurons['mean_share'])} of all neurons per language on "
               f"average (the paper: about 0.13 %).")
    for r in deact:
        out.append(f"- `{r['lang']}` with its {int(r['neurons_off'])} language-specific neurons off "
                   f"({_pct(r['share_off'])}): perplexity {_num(r['original'])} -> {_num(r['specific'])}; "
                   f"as many random neurons off: {_num(r['random_mean'])}.")
    for r in enhance:
        langs = [c[len("ppl_"):-len("_before")] for c in r if c.startswith("ppl_") and c.endswith("_before")]
        parts = [f"{lang} {_num(float(r[f'ppl_{lang}_before']))} -> {_num(float(r[f'ppl_{lang}_after']))} "
                 f"({_change(float(r[f'ppl_{lang}_change_pct']))})" for lang in langs]
        out.append(f"- Enhancement, `{r['method']}` ({int(float(r['trainable_parameters'])):,} trained parameters, "
                   f"{r['steps']} steps): perplexity " + ", ".join(parts) + ".")
    return "\n".join(out) + "\n"


# ---- the explorer screenshot ----------------------------------------------------------------
def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def explorer_screenshot(demo: Path, target: Path, width: int = 1280) -> Path:
    """Render the report of ``demo`` (into a temporary file; the folder is not touched), open it
    in headless Chromium at ``width`` px, choose a prompt of the first of
    :data:`EXPLORER_LANGS` the demo has, hover the cell of the curve's peak layer at the last input
    position (its top-k shows) and save a PNG of ``#layer-explorer``."""
    import tempfile

    from mwork.report import render_report

    if chromium() is None:
        raise FileNotFoundError("explorer.png needs Chromium (Debian: apt-get install chromium) and the playwright "
                                "package (pip install playwright); or pass --no-screenshot")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise FileNotFoundError("explorer.png needs the playwright package (pip install playwright); or pass "
                                "--no-screenshot") from None
    with tempfile.TemporaryDirectory() as tmp:
        page_path = render_report(demo, out=Path(tmp) / "index.html")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=["--headless", "--no-sandbox",
                                                                          "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": width, "height": 1000})
                page.goto(page_path.resolve().as_uri())
                page.wait_for_load_state("load")
                explorer = page.locator("#layer-explorer")
                if explorer.count() == 0:
                    raise ValueError(f"the report of {demo} has no layer explorer (lens/lens_explorer.json missing?)")
                offered = explorer.locator(".lx-lang option").evaluate_all("os => os.map(o => o.value)")
                lang = next((x for x in EXPLORER_LANGS if x in offered), None)
                if lang:
                    explorer.locator(".lx-lang").select_option(lang)
                facts = lens_facts(_rows(demo / "lens" / "lens.csv"))
                last_input = explorer.locator(".lx-grid .h:not(.gen):not(.corner)").count() - 1
                cell = explorer.locator(f".lx-cell[data-l='{facts['peak_index']}'][data-j='{max(last_input, 0)}']")
                explorer.scroll_into_view_if_needed()
                if cell.count():
                    cell.hover()
                explorer.screenshot(path=str(target))
            finally:
                browser.close()
    return target


# ---- provenance -----------------------------------------------------------------------------
def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def provenance(demo: Path, script_command: str, demo_seconds: float | None) -> str:
    run = json.loads((demo / "run.json").read_text(encoding="utf-8"))
    stages = run.get("stages", [])
    times = ", ".join(f"{st['name']} {st.get('seconds', 0):.0f} s" for st in stages)
    lines = [
        "# README figures",
        "",
        "Generated by `scripts/readme_figures.py`; do not edit by hand, rerun it:",
        "",
        "```bash",
        script_command,
        "```",
        "",
        f"- Demo command: `{run.get('command', '?')}` (demo folder `{_rel(demo)}`)",
        f"- Generated: {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}, git commit {_git_commit()}",
        f"- Demo compute time: {run.get('total_seconds', 0):.0f} s ({times})",
    ]
    if demo_seconds is not None:
        lines.append(f"- This invocation ran the demo in {demo_seconds:.0f} s wall time on {os.cpu_count()} CPU cores "
                     "(cached stages are not recomputed)")
    else:
        lines.append("- This invocation reused the finished demo folder (`--from`)")
    lines += ["", "| package | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in run.get("versions", {}).items()]
    lines += ["", "Files (name <- demo file):", ""]
    lines += [f"- `{name}` <- `{src}`" for name, src in PLOTS.items()]
    lines += ["- `explorer.png` <- screenshot of `#layer-explorer` in the report page rendered from the demo folder "
              "(headless Chromium, 1280 px wide; `lens/lens_explorer.json`)"]
    lines += ["- `lens.md` <- `lens/lens.csv`, `lens/lens.json`",
              "- `neurons.md` <- `neurons/summary.csv`, `neurons/specific/*.json`",
              "- `deactivation.md` <- `deactivation/table.md`",
              "- `enhance.md` <- `enhance/compare.csv`, `enhance/compare.json`",
              "- `headline.md` <- all of the above", "",
              "Demo settings:", "", "```json", json.dumps(run.get("settings", {}), indent=2), "```", ""]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------
def demo_command(out: Path, quick: bool, model: str | None) -> list[str]:
    """The ``mwork demo`` command line this script runs (the venv's ``mwork`` next to this Python)."""
    exe = Path(sys.executable).parent / "mwork"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mwork.cli"]
    return [*cmd, "demo", *(["--quick"] if quick else []), *(["--model", model] if model else []), "--out", str(out)]


def check_demo_folder(demo: Path) -> None:
    if not demo.is_dir():
        raise FileNotFoundError(f"no demo folder at {demo}; run `mwork demo --out {demo}` first or drop --from")
    missing = [name for name in NEEDED if not (demo / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{demo} is not a finished demo folder (missing {', '.join(missing)}); "
                                f"run `mwork demo --out {demo}` to finish it")


def write_figures(demo: Path, figures: Path, script_command: str, demo_seconds: float | None = None,
                  screenshot: bool = True) -> list[Path]:
    """Copy the plots, render the tables and (with ``screenshot``) take the explorer screenshot of
    the finished demo folder ``demo`` into ``figures``."""
    check_demo_folder(demo)
    if screenshot and chromium() is None:
        raise FileNotFoundError("explorer.png needs Chromium (Debian: apt-get install chromium) and the playwright "
                                "package; or pass --no-screenshot")
    figures.mkdir(parents=True, exist_ok=True)
    written = []
    if screenshot:
        written.append(explorer_screenshot(demo, figures / "explorer.png"))
    for name, src in PLOTS.items():
        shutil.copyfile(demo / src, figures / name)
        written.append(figures / name)
    lens_md, lens_facts = lens_table(demo)
    neurons_md, neuron_facts = neurons_table(demo)
    deact_md, deact_rows = deactivation_table(demo)
    enhance_md, enhance_rows = enhance_table(demo)
    texts = {"lens.md": lens_md, "neurons.md": neurons_md, "deactivation.md": deact_md, "enhance.md": enhance_md,
             "headline.md": headline(lens_facts, neuron_facts, deact_rows, enhance_rows),
             "README.md": provenance(demo, script_command, demo_seconds)}
    for name, text in texts.items():
        (figures / name).write_text(text, encoding="utf-8")
        written.append(figures / name)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="run the quick demo (default: full size)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"demo folder to run into (default {DEFAULT_OUT})")
    p.add_argument("--from", dest="source", type=Path, help="reuse this finished demo folder; runs nothing")
    p.add_argument("--model", help="demo model (default: the demo's, gemma-3-270m)")
    p.add_argument("--figures", type=Path, default=DEFAULT_FIGURES, help=f"where to write (default {DEFAULT_FIGURES})")
    p.add_argument("--no-screenshot", action="store_true", help="skip explorer.png (needs Chromium and playwright)")
    p.add_argument("--screenshot-only", action="store_true",
                   help="with --from: only retake explorer.png (the folder needs only its lens stage); the other "
                        "figures and tables are left as they are")
    args = p.parse_args(argv)
    script_command = " ".join(["python scripts/readme_figures.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        if args.screenshot_only:
            if args.source is None or args.no_screenshot:
                raise ValueError("--screenshot-only retakes explorer.png from a demo folder: give --from DIR "
                                 "(and not --no-screenshot)")
            missing = [n for n in LENS_NEEDED if not (args.source / n).is_file()]
            if missing:
                raise FileNotFoundError(f"{args.source} has no finished lens stage (missing {', '.join(missing)})")
            args.figures.mkdir(parents=True, exist_ok=True)
            print(f"wrote {explorer_screenshot(args.source, args.figures / 'explorer.png')}")
            return 0
        if args.source is not None:
            if args.quick or args.model:
                raise ValueError("--from reuses a finished demo: drop --quick/--model")
            demo, seconds = args.source, None
            check_demo_folder(demo)
        else:
            cmd = demo_command(args.out, args.quick, args.model)
            print("running:", " ".join(cmd), flush=True)
            start = time.time()
            if subprocess.run(cmd).returncode != 0:
                raise ValueError(f"the demo failed (see above): {' '.join(cmd)}")
            demo, seconds = args.out, time.time() - start
        written = write_figures(demo, args.figures, script_command, seconds, screenshot=not args.no_screenshot)
    except (ValueError, FileNotFoundError) as err:
        print(f"readme_figures: error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    print((args.figures / "headline.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
