"""The lens pipeline: prompts -> logit lens -> token languages -> shares -> layer regions -> files.

What ``mwork lens`` and the demo's lens stage both do, callable from Python::

    run = run_lens(model, tokenizer, config=LensConfig(langs=("zh", "ro")), out="out/lens")
    run.shares["ro"][-1].english_share, run.regions.understanding, run.warnings

With ``out`` it writes ``lens.csv`` (per-layer shares), ``lens.json`` (settings, shares with the
per-language detail, generations, the region estimate and any warnings), ``lens.png`` (the
paper's Figure 1), ``lens_topk.safetensors`` (every layer's top-k tokens, reloadable with
:meth:`LensResult.load`) and ``lens_explorer.json`` (the top-k tokens as strings with their
probabilities and language labels, for the report's layer explorer; :mod:`mwork.lens.explorer`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mwork.config import fingerprint
from mwork.lens.config import DEFAULT_LANGS, LensConfig
from mwork.lens.langid import LanguageIdentifier, ScriptWordfreqIdentifier, TokenLabeler, coverage_warnings
from mwork.lens.logit_lens import LensResult, logit_lens
from mwork.lens.prompts import Prompt, builtin_prompts, read_prompts
from mwork.lens.regions import RegionEstimate, estimate_regions
from mwork.lens.shares import LayerShares, language_shares

FILES = ("lens.csv", "lens.json", "lens.png", "lens_topk.safetensors", "lens_explorer.json")


def lens_prompts(config: LensConfig) -> list[Prompt]:
    """The prompts a config names: its ``prompts`` file, else the built-in sets of ``langs``
    (default zh, ru, fr, de, es), at most ``max_prompts`` per language."""
    langs = list(config.langs or ())
    if config.prompts:
        return read_prompts(config.prompts, langs or None, config.max_prompts)
    return builtin_prompts(langs or list(DEFAULT_LANGS), config.max_prompts)


def make_identifier(config: LensConfig) -> ScriptWordfreqIdentifier:
    """The token language identifier of a config (checks its wordfreq languages exist)."""
    return ScriptWordfreqIdentifier(latin_languages=config.latin_langs)


def default_title(model_name: str, top_k: int) -> str:
    return f"{model_name}: language of top-{top_k} decoded tokens per layer"


@dataclass
class LensRun:
    """Everything one lens run produced: the raw decodings, the shares, the region estimate
    (None without a non-English input language), the identifier's settings, warnings about
    input languages the identifier cannot label, and the files written (when ``out`` was given)."""

    config: LensConfig
    result: LensResult
    shares: dict[str, list[LayerShares]]
    regions: RegionEstimate | None
    identifier: dict[str, Any]
    warnings: list[str]
    timing: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)
    labeler: TokenLabeler | None = None  # the labeller of the shares (the explorer file reuses it)

    def english_table(self) -> str:
        """The English share per layer of each input language, as ``mwork lens`` prints it."""
        rows = next(iter(self.shares.values()))
        lines = [f"{'lang':>5} " + " ".join(f"{r.layer:>5d}" for r in rows)]
        for lang, rows in self.shares.items():
            lines.append(f"{lang:>5} " + " ".join(f"{r.english_share:5.2f}" for r in rows) + "   (English share)")
        return "\n".join(lines)

    def write(self, out: str | Path, tokenizer, title: str | None = None) -> dict[str, Path]:
        """Write the lens files (:data:`FILES`) into ``out`` (created); returns name -> path."""
        from mwork.lens.explorer import write_explorer
        from mwork.lens.plot import plot_shares
        from mwork.lens.shares import write_csv, write_json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = {name: out / name for name in FILES}
        self.result.save(files["lens_topk.safetensors"])
        write_csv(self.shares, files["lens.csv"])
        write_json(self.result, self.shares, files["lens.json"], tokenizer=tokenizer,
                   identifier_settings=self.identifier, segment=self.config.positions,
                   extra={"timing": self.timing, "regions": self.regions.to_dict() if self.regions else None,
                          "warnings": self.warnings, "config": fingerprint(self.config)})
        plot_shares(self.shares, files["lens.png"],
                    title=title or default_title(self.result.model_name, self.result.top_k))
        labeler = self.labeler or TokenLabeler(tokenizer, make_identifier(self.config))
        write_explorer(self.result, labeler, files["lens_explorer.json"])
        self.files = files
        return files


def run_lens(
    model,
    tokenizer,
    prompts: Sequence[Prompt | str] | None = None,
    config: LensConfig | None = None,
    out: str | Path | None = None,
    *,
    model_name: str | None = None,
    identifier: LanguageIdentifier | None = None,
    title: str | None = None,
    load_seconds: float | None = None,
) -> LensRun:
    """Run the logit lens over ``prompts`` (default: those ``config`` names, see
    :func:`lens_prompts`), label every decoded token's language, compute the per-layer shares and
    the understanding / task-solving / generation estimate, and write the lens files to ``out``.

    ``identifier`` replaces the config's wordfreq identifier (any ``label(text) -> str``).
    Warnings (an input language the identifier cannot label) are printed to stderr, kept in
    ``LensRun.warnings`` and written to ``lens.json``."""
    config = config or LensConfig()
    prompts = lens_prompts(config) if prompts is None else list(prompts)
    identifier = identifier if identifier is not None else make_identifier(config)
    as_prompts = [p if isinstance(p, Prompt) else Prompt(str(p), "?") for p in prompts]
    warnings = coverage_warnings(as_prompts, identifier)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    lens = None
    if config.lens != "logit":  # the logit lens is logit_lens's own decode
        from mwork.lens.make import make_lens

        lens = make_lens(config.lens, model, tokenizer, tuned_lens=config.tuned_lens)
    result = logit_lens(model, tokenizer, as_prompts, top_k=config.top_k, max_new_tokens=config.max_new_tokens,
                        batch_size=config.batch_size, template=config.template,
                        include_special=config.include_special, decode_chunk=config.decode_chunk,
                        progress=config.progress, model_name=model_name, lens=lens)
    start = time.time()
    labeler = TokenLabeler(tokenizer, identifier)
    shares = language_shares(result, labeler, segment=config.positions)
    label_s = time.time() - start
    regions = estimate_regions(shares) if any(lang != "en" for lang in shares) else None
    timing = {"lens_seconds": round(result.seconds, 2), "label_seconds": round(label_s, 2)}
    if load_seconds is not None:
        timing = {"load_seconds": round(load_seconds, 2), **timing}
    settings = identifier.settings() if callable(getattr(identifier, "settings", None)) else \
        {"identifier": type(identifier).__name__}
    run = LensRun(config, result, shares, regions, settings, warnings, timing, labeler=labeler)
    if out is not None:
        run.write(out, tokenizer, title=title)
    return run
