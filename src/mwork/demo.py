"""``mwork demo``: from nothing to the paper's findings on the default model, on a CPU, offline.

Stages (each cached under ``out/``: a stage whose ``stage.json`` records the same settings is
skipped, so a second run only redraws the report):

1. ``lens``: layer-wise decoding of built-in prompts in several languages (paper Figure 1).
2. ``neurons``: language-specific neuron detection (PLND) on built-in text of each language
   (the ``dataset-build`` package; the user's own files with ``--corpus-dir``), then the
   language-specific sets and their statistics (paper §2.2).
3. ``deactivation``: each language's neurons switched off, held-out perplexity against random
   neurons of the same count, and the layer-region grid (paper Tables 1-2, on perplexity).
4. ``enhance``: one language's neurons fine-tuned, before/after perplexity against random
   neurons of the same count (paper §5, Table 7).
5. ``index.html``: every result in one page (``mwork report``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from mwork.models.loading import DEFAULT_MODEL


STAGES = ("lens", "neurons", "deactivation", "enhance")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of every stage; ``quick()`` fits about 5 minutes on two CPU cores, the default
    about 20."""

    model: str = DEFAULT_MODEL
    lens_langs: tuple[str, ...] = ("en", "zh", "ru", "fr", "de", "es")
    lens_prompts: int = 10
    lens_new_tokens: int = 8
    langs: tuple[str, ...] = ("en", "zh", "fr", "es", "ru", "de")  # detection
    deact_langs: tuple[str, ...] | None = ("en", "zh", "fr", "ru")  # deactivation (None: all of langs)
    detect_kinds: tuple[str, ...] = ("ffn", "q", "k", "v")
    detect_docs: int = 64
    detect_max_length: int = 192
    detect_top_fraction: float = 0.02
    detect_min_doc_fraction: float = 0.9
    eval_texts: int = 6
    eval_max_length: int = 128
    seeds: tuple[int, ...] = (0, 1, 2)
    enhance_lang: str = "zh"
    enhance_docs: int = 48
    enhance_steps: int = 12
    enhance_lr: float = 1e-4
    enhance_baselines: tuple[str, ...] = ("random",)
    corpus_dir: str | None = None
    xquad: bool = False  # detect on XQuAD articles 0-23, evaluate on 24-47 (local copy, else the hub)

    @classmethod
    def quick(cls, **overrides: Any) -> "DemoSettings":
        small = cls(lens_langs=("zh", "ru", "fr", "de", "es"), lens_prompts=2, lens_new_tokens=2,
                    langs=("en", "zh", "fr", "ru", "de"), deact_langs=("en", "zh", "ru"), detect_docs=8,
                    detect_max_length=96, eval_texts=3, eval_max_length=96, seeds=(0,), enhance_docs=8,
                    enhance_steps=3, enhance_baselines=())
        return replace(small, **overrides)


# Seconds of each stage on two CPU cores = fixed + per_unit * _work_units, fitted to a full and a
# quick run of gemma-3-270m (model cached); only used for the "time left" estimate, which also
# rescales them by how fast the stages of this run have gone so far.
STAGE_SECONDS = {"lens": (7.4, 0.088), "neurons": (12.7, 5.4e-4), "deactivation": (24.4, 3.7e-3),
                 "enhance": (10.9, 2.8e-3)}


def _work_units(s: DemoSettings) -> dict[str, float]:
    """A rough cost of each stage in token-forward passes, from the settings alone."""
    attention = 1 + 2.5 * any(k in s.detect_kinds for k in ("q", "k"))  # exact Q/K costs ~3.5x FFN+V
    n_deact = len(s.deact_langs or s.langs)
    evals = n_deact * (1 + len(s.seeds)) + (n_deact - 1) * 5 * (1 + len(s.seeds)) * 2  # headline + region grid
    batch = 2 if s.enhance_docs < 16 else 4
    methods = 1 + len(s.enhance_baselines)
    return {
        "lens": len(s.lens_langs) * s.lens_prompts * (s.lens_new_tokens + 1),
        "neurons": len(s.langs) * s.detect_docs * s.detect_max_length * attention,
        "deactivation": evals * s.eval_texts * s.eval_max_length,
        "enhance": methods * s.enhance_steps * batch * s.eval_max_length * 3
                   + (methods + 1) * 2 * s.eval_texts * s.eval_max_length,
    }


def _nominal_seconds(s: DemoSettings) -> dict[str, float]:
    units = _work_units(s)
    return {name: fixed + per_unit * units[name] for name, (fixed, per_unit) in STAGE_SECONDS.items()}


def _time_left(s: DemoSettings, done: list["_Stage"], upcoming: list[str]) -> float:
    """Seconds the ``upcoming`` stages should take, rescaled by this run's speed so far."""
    nominal = _nominal_seconds(s)
    ran = [st for st in done if not st.cached]
    predicted = sum(nominal[st.name] for st in ran)
    speed = sum(st.seconds for st in ran) / predicted if ran and predicted > 0 else 1.0
    return speed * sum(nominal[name] for name in upcoming)


@dataclass
class _Stage:
    name: str
    seconds: float = 0.0
    cached: bool = False


@dataclass
class Demo:
    out: Path
    settings: DemoSettings
    stages: list[_Stage] = field(default_factory=list)
    _model: Any = None
    _tokenizer: Any = None

    # ---- plumbing ---------------------------------------------------------------------------
    def model(self) -> tuple[Any, Any]:
        if self._model is None:
            from mwork.models.loading import load_model

            self._model, self._tokenizer = load_model(self.settings.model, device="cpu")
        return self._model, self._tokenizer

    def _stage(self, name: str, keys: dict[str, Any], fn: Callable[[Path], None]) -> None:
        folder = self.out / name
        marker = folder / "stage.json"
        digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()
        n = len(self.stages) + 1
        if marker.exists() and json.loads(marker.read_text()).get("settings_sha256") == digest:
            print(f"[demo {n}/4] {name}: cached in {folder}", flush=True)
            self.stages.append(_Stage(name, json.loads(marker.read_text()).get("seconds", 0.0), cached=True))
            return
        left = _time_left(self.settings, self.stages, STAGES[n - 1:])
        print(f"[demo {n}/4] {name} ... ({_minutes(left)} left for the whole demo)", flush=True)
        start = time.time()
        folder.mkdir(parents=True, exist_ok=True)
        fn(folder)
        seconds = time.time() - start
        marker.write_text(json.dumps({"settings_sha256": digest, "settings": keys, "seconds": seconds},
                                     indent=2, default=str) + "\n")
        self.stages.append(_Stage(name, seconds))
        print(f"[demo {n}/4] {name}: done in {seconds:.0f} s", flush=True)

    def _corpus(self, lang: str, split: str) -> list[str]:
        from mwork.texts import DETECTION_ARTICLES, EVALUATION_ARTICLES, TextSource

        if self.settings.xquad:
            return TextSource(xquad=lang, articles=DETECTION_ARTICLES if split == "detect" else EVALUATION_ARTICLES).texts()
        if self.settings.corpus_dir:
            path = Path(self.settings.corpus_dir) / f"{lang}.{'txt' if split == 'detect' else 'heldout.txt'}"
            if not path.exists():
                raise FileNotFoundError(f"--corpus-dir needs {path} (one document per line)")
            return TextSource(path=path).texts()
        return TextSource(builtin=lang, builtin_split=split).texts()

    # ---- stages -------------------------------------------------------------------------------
    def lens(self, folder: Path) -> None:
        from mwork.lens.langid import ScriptWordfreqIdentifier, TokenLabeler
        from mwork.lens.logit_lens import logit_lens
        from mwork.lens.plot import plot_shares
        from mwork.lens.prompts import builtin_prompts
        from mwork.lens.regions import estimate_regions
        from mwork.lens.shares import language_shares, write_csv, write_json

        s = self.settings
        model, tok = self.model()
        prompts = builtin_prompts(list(s.lens_langs), s.lens_prompts)
        result = logit_lens(model, tok, prompts, top_k=10, max_new_tokens=s.lens_new_tokens, model_name=s.model)
        identifier = ScriptWordfreqIdentifier()
        shares = language_shares(result, TokenLabeler(tok, identifier))
        regions = estimate_regions(shares)
        write_csv(shares, folder / "lens.csv")
        write_json(result, shares, folder / "lens.json", tokenizer=tok, identifier_settings=identifier.settings(),
                   extra={"regions": regions.to_dict()})
        plot_shares(shares, folder / "lens.png", title=f"{s.model}: language of the top-10 decoded tokens per layer")

    def neurons(self, folder: Path) -> None:
        from mwork.neurons.detect import detect
        from mwork.neurons.specific import language_specific
        from mwork.neurons.stats import write_stats

        s = self.settings
        model, tok = self.model()
        sets = []
        for lang in s.langs:
            docs = self._corpus(lang, "detect")[: s.detect_docs]
            sets.append(detect(model, tok, docs, language=lang, kinds=s.detect_kinds, top_fraction=s.detect_top_fraction,
                               min_doc_fraction=s.detect_min_doc_fraction, max_length=s.detect_max_length,
                               model_id=s.model, out=folder / "detected" / lang,
                               corpus_info={"source": s.corpus_dir or "dataset-build (built-in)", "lang": lang}))
        specific = language_specific(sets)
        for lang, ns in zip(s.langs, specific):
            ns.save(folder / "specific" / lang)
        write_stats(specific, folder, list(s.langs))

    def deactivation(self, folder: Path) -> None:
        from mwork.experiments.deactivation import load_language_sets, run_deactivation_experiment
        from mwork.experiments.evaluators import perplexity_evaluator
        from mwork.lens.regions import estimate_regions

        s = self.settings
        model, tok = self.model()
        n_layers = len(__import__("mwork").get_adapter(model).layers)
        est = estimate_regions(self.out / "lens")
        # without a clear English phase, fall back to quarters (recorded in the results)
        u, g = (est.understanding, est.generation) if est.found else (n_layers // 4, n_layers // 4)
        langs = list(s.deact_langs or s.langs)
        sets = load_language_sets(self.out / "neurons" / "specific", langs, model)
        texts = {lang: self._corpus(lang, "heldout")[: s.eval_texts] for lang in langs}
        evaluate = perplexity_evaluator(model, tok, texts, batch_size=8, max_length=s.eval_max_length)
        run_deactivation_experiment(model, evaluate, sets, langs, folder, understanding=u, generation=g,
                                    seeds=s.seeds, settings={"regions_from_lens": est.found,
                                                             "texts": "held-out paragraphs"})

    def enhance(self, folder: Path) -> None:
        from mwork.experiments.enhance import compare

        s = self.settings
        lang = s.enhance_lang if s.enhance_lang in s.langs else next(x for x in s.langs if x != "en")
        batch = 2 if s.enhance_docs < 16 else 4
        texts = self._corpus(lang, "detect")[: s.enhance_docs]
        evals = {lang: self._corpus(lang, "heldout")[: s.eval_texts], "en": self._corpus("en", "heldout")[: s.eval_texts]}
        compare(s.model, self.out / "neurons" / "specific" / f"{lang}.safetensors", texts, evals, folder,
                methods=("neurons", *s.enhance_baselines), max_steps=s.enhance_steps, lr=s.enhance_lr,
                batch_size=batch, grad_accum=1, warmup_ratio=0.0, max_length=s.eval_max_length,
                eval_max_length=s.eval_max_length)

    # ---- all ----------------------------------------------------------------------------------
    def run(self) -> Path:
        from mwork.report import render_report

        s = self.settings
        start = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        base = {"model": s.model}
        self._stage("lens", {**base, "langs": s.lens_langs, "prompts": s.lens_prompts, "new": s.lens_new_tokens},
                    self.lens)
        det = {**base, "langs": s.langs, "docs": s.detect_docs, "len": s.detect_max_length,
               "top": s.detect_top_fraction, "q": s.detect_min_doc_fraction, "corpus": s.corpus_dir, "xquad": s.xquad,
               "kinds": s.detect_kinds}
        self._stage("neurons", det, self.neurons)
        deact = {**det, "eval": (s.eval_texts, s.eval_max_length), "seeds": s.seeds, "lens": s.lens_langs,
                 "deact_langs": s.deact_langs}
        self._stage("deactivation", deact, self.deactivation)
        enh = {**det, "eval": (s.eval_texts, s.eval_max_length), "lang": s.enhance_lang, "docs": s.enhance_docs,
               "steps": s.enhance_steps, "lr": s.enhance_lr, "baselines": s.enhance_baselines}
        self._stage("enhance", enh, self.enhance)
        run = {
            "title": f"mwork demo on {s.model}",
            "command": " ".join(["mwork", *sys.argv[1:]]) if sys.argv and "mwork" in sys.argv[0] else f"mwork demo --out {self.out}",
            "settings": asdict(s),
            "stages": [asdict(st) for st in self.stages],
            "total_seconds": sum(st.seconds for st in self.stages),
            "this_run_seconds": time.time() - start,
            "versions": _versions(),
        }
        (self.out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
        # the headline files at the top of the folder, where a reader looks first
        for src in ("lens/lens.csv", "lens/lens.png", "deactivation/table.csv", "enhance/compare.csv"):
            if (self.out / src).exists():
                shutil.copyfile(self.out / src, self.out / Path(src).name)
        page = render_report(self.out, title=run["title"])
        print(f"[demo] report: {page} ({time.time() - start:.0f} s this run)", flush=True)
        return page


def _minutes(seconds: float) -> str:
    return f"about {max(1, round(seconds / 60))} min" if seconds >= 45 else "under a minute"


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import mwork

    return {"mwork": mwork.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def run_demo(out: str | Path = "mwork-demo", quick: bool = False, **overrides: Any) -> Path:
    """Run (or resume) the demo into ``out``; returns the path of ``index.html``."""
    settings = DemoSettings.quick(**overrides) if quick else replace(DemoSettings(), **overrides)
    return Demo(Path(out), settings).run()
