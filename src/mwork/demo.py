"""``mwork demo``: from nothing to the paper's findings on the default model, on a CPU, offline.

Every setting is checked before the first stage runs. Stages (each cached under ``out/`` by
content, see :mod:`mwork.stages`: a stage whose ``stage.json`` records the same settings, model
weights, texts and input files is skipped, so a second run only redraws the report; one whose
inputs changed reruns and says which):

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

import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from mwork.demo_settings import ENGLISH, DemoSettings, check_settings
from mwork.files import child_path

__all__ = ["Demo", "DemoSettings", "STAGES", "check_settings", "run_demo"]


STAGES = ("lens", "neurons", "deactivation", "enhance")


# Seconds of each stage on two idle CPU cores = fixed + per_unit * _work_units, for gemma-3-270m
# (model cached): per_unit from a full run, fixed from a quick run of 2026-12-06 (lens 10 s,
# neurons 23 s, deactivation 138 s, enhance 32 s); only used for the "time left" estimate. Before
# the first stage the estimate is rescaled by this machine's measured forward time
# (_forward_probe against PROBE_SECONDS, measured in that quick run), then by how fast the stages
# of this run have gone so far.
STAGE_SECONDS = {"lens": (7.4, 0.088), "neurons": (15.7, 5.4e-4), "deactivation": (89.0, 3.7e-3),
                 "enhance": (24.0, 2.8e-3)}
PROBE_SECONDS = 0.2  # _forward_probe on gemma-3-270m on two idle cores (0.196-0.212 s)
PROBE_SHAPE = (2, 64)  # the probe's batch: documents x tokens


def _work_units(s: DemoSettings) -> dict[str, float]:
    """A rough cost of each stage in token-forward passes, from the settings alone."""
    from mwork.experiments.training import TrainingPlan

    attention = 1 + 2.5 * any(k in s.detect.kinds for k in ("q", "k"))  # exact Q/K costs ~3.5x FFN+V
    n_deact = len(s.deact_langs or s.langs)
    evals = n_deact * (1 + len(s.seeds)) + (n_deact - 1) * 5 * (1 + len(s.seeds)) * 2  # headline + region grid
    train, steps = s.enhance, TrainingPlan.of(s.enhance_docs, s.enhance).total_steps
    methods = 1 + len(s.enhance_baselines)
    prompts = s.lens.max_prompts or 24  # a built-in set has 24
    return {
        "lens": len(s.lens_langs) * prompts * (s.lens.max_new_tokens + 1),
        "neurons": len(s.langs) * s.detect_docs * s.detect.max_length * attention,
        "deactivation": evals * s.eval_texts * s.eval_max_length,
        "enhance": methods * steps * train.batch_size * train.grad_accum * train.max_length * 3
                   + (methods + 1) * 2 * s.eval_texts * s.eval_max_length,
    }


def _nominal_seconds(s: DemoSettings) -> dict[str, float]:
    units = _work_units(s)
    return {name: fixed + per_unit * units[name] for name, (fixed, per_unit) in STAGE_SECONDS.items()}


def _time_left(s: DemoSettings, done: list["_Stage"], upcoming: list[str], probe_speed: float = 1.0) -> float:
    """Seconds the ``upcoming`` stages should take, rescaled by this run's speed so far, or before
    any stage has run by ``probe_speed`` (this machine's measured forward time / the fit's)."""
    nominal = _nominal_seconds(s)
    ran = [st for st in done if not st.cached]
    predicted = sum(nominal[st.name] for st in ran)
    speed = sum(st.seconds for st in ran) / predicted if ran and predicted > 0 else probe_speed
    return speed * sum(nominal[name] for name in upcoming)


def _forward_probe(model: Any) -> float:
    """Seconds of one pass of the decoder layers over a PROBE_SHAPE batch on this machine now (the
    first batch of real work, measured; without the LM head, whose cost the fit already holds): a
    short warm-up, then the best of two timed passes."""
    import torch

    from mwork.models.adapters import get_adapter

    adapter = get_adapter(model)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, PROBE_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    best = float("inf")
    with torch.no_grad():
        adapter.body(input_ids=ids[:, :8], **adapter.forward_kwargs(torch.ones_like(ids[:, :8])))
        for _ in range(2):
            start = time.perf_counter()
            adapter.body(input_ids=ids, **adapter.forward_kwargs(torch.ones_like(ids)))
            best = min(best, time.perf_counter() - start)
    return best


@dataclass
class _Stage:
    name: str
    seconds: float = 0.0
    cached: bool = False
    reason: str = ""  # why it ran again (its inputs changed, an older cache, an interrupted run)


@dataclass
class Demo:
    out: Path
    settings: DemoSettings
    stages: list[_Stage] = field(default_factory=list)
    _model: Any = None
    _tokenizer: Any = None
    _texts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _probe_speed: float | None = None  # this machine's forward time / the fit's, measured once
    _probe_seconds: float | None = None
    _estimates: list[dict[str, Any]] = field(default_factory=list)  # "time left" as said before each stage

    # ---- plumbing ---------------------------------------------------------------------------
    def model(self) -> tuple[Any, Any]:
        if self._model is None:
            from mwork.models.loading import load_model

            self._model, self._tokenizer = load_model(self.settings.model, device="cpu")
        return self._model, self._tokenizer

    def _stage(self, name: str, key: dict[str, Any], fn: Callable[[Path], None]) -> None:
        from mwork.stages import run_stage, stage_status

        folder = self.out / name
        n = len(self.stages) + 1
        status = stage_status(folder, key)
        if status.cached:
            print(f"[demo {n}/4] {name}: cached in {folder}", flush=True)
            self.stages.append(_Stage(name, status.seconds, cached=True))
            return
        if self._probe_speed is None and not any(not st.cached for st in self.stages):
            self._probe_seconds = _forward_probe(self.model()[0])
            self._probe_speed = self._probe_seconds / PROBE_SECONDS
        left = _time_left(self.settings, self.stages, STAGES[n - 1:], self._probe_speed or 1.0)
        self._estimates.append({"before": name, "seconds_left": round(left, 1)})
        print(f"[demo {n}/4] {name} ... ({_minutes(left)} left for the whole demo)", flush=True)
        if status.reason:
            print(f"[demo {n}/4] {name}: running again: {status.reason}", flush=True)
        seconds = run_stage(folder, key, fn, status)
        self.stages.append(_Stage(name, seconds, reason=status.reason))
        print(f"[demo {n}/4] {name}: done in {seconds:.0f} s", flush=True)

    def _corpus(self, lang: str, split: str) -> list[str]:
        from mwork.texts import DETECTION_ARTICLES, EVALUATION_ARTICLES, TextSource

        if self.settings.xquad:
            return TextSource(xquad=lang, articles=DETECTION_ARTICLES if split == "detect" else EVALUATION_ARTICLES).texts()
        if self.settings.corpus_dir:
            path = child_path(self.settings.corpus_dir, lang, ".txt" if split == "detect" else ".heldout.txt")
            if not path.exists():
                raise FileNotFoundError(f"--corpus-dir needs {path} (one document per line)")
            return TextSource(path=path).texts()
        return TextSource(builtin=lang, builtin_split=split).texts()

    def texts(self, lang: str, split: str) -> list[str]:
        """Every text of ``lang``'s ``split`` (``detect`` or ``heldout``), read once."""
        if (lang, split) not in self._texts:
            self._texts[lang, split] = self._corpus(lang, split)
        return self._texts[lang, split]

    def _uses(self) -> list[tuple[str, str, str, int]]:
        """(stage, language, split, how many texts) for every corpus a stage reads."""
        s = self.settings
        lang, _ = s.enhance_language()
        return ([("neurons", x, "detect", s.detect_docs) for x in s.langs]
                + [("deactivation", x, "heldout", s.eval_texts) for x in s.deactivation_langs]
                + [("enhance", lang, "detect", s.enhance_docs)]
                + [("enhance", x, "heldout", s.eval_texts) for x in dict.fromkeys((lang, ENGLISH))])

    def prepare(self) -> list[str]:
        """Read every text the stages use (a missing or empty corpus is an error now, not after
        two stages); returns notes to show: a different enhance language, short corpora."""
        _, note = self.settings.enhance_language()
        notes = [note] if note else []
        for stage, lang, split, wanted in self._uses():
            have = len(self.texts(lang, split))
            if have == 0:
                raise ValueError(f"the {split} texts of {lang!r} are empty; the {stage} stage needs {wanted}")
            if have < wanted:
                notes.append(f"{stage}: {lang!r} has {have} {split} texts, fewer than the {wanted} asked for; "
                             f"using all {have}")
        return list(dict.fromkeys(notes))

    # ---- what each stage is computed from (mwork.stages) --------------------------------------
    def _key(self, settings: dict[str, Any], **inputs: Any) -> dict[str, Any]:
        from mwork.fingerprints import model_digest

        model, _ = self.model()
        return {"settings": settings, "model": {"name": self.settings.model, "digest": model_digest(model)}, **inputs}

    def _texts_digest(self, lang: str, split: str, n: int) -> str:
        from mwork.fingerprints import texts_digest

        return texts_digest(self.texts(lang, split)[:n])

    def _files_digest(self, *relative: str) -> dict[str, str]:
        from mwork.fingerprints import file_digest

        return {rel: file_digest(self.out / rel) for rel in relative}

    def lens_config(self):
        return self.settings.lens

    def lens_key(self) -> dict[str, Any]:
        from mwork.config import fingerprint
        from mwork.fingerprints import texts_digest
        from mwork.lens.pipeline import lens_prompts

        config = self.lens_config()
        prompts = texts_digest(f"{p.lang}\t{p.text}" for p in lens_prompts(config))
        return self._key(fingerprint(config), prompts=prompts)

    def detect_config(self, lang: str):
        return replace(self.settings.detect, language=lang)

    def neurons_key(self) -> dict[str, Any]:
        from mwork.config import fingerprint

        s = self.settings
        settings = {"docs": s.detect_docs, "detect": {lang: fingerprint(self.detect_config(lang)) for lang in s.langs}}
        return self._key(settings, texts={lang: self._texts_digest(lang, "detect", s.detect_docs) for lang in s.langs})

    def regions(self) -> tuple[int, int, bool]:
        """U and G for the deactivation grid: from the lens stage, else quarters of the layers."""
        from mwork.lens.regions import RegionEstimateError, resolve_regions
        from mwork.models.adapters import get_adapter

        model, _ = self.model()
        n_layers = get_adapter(model).num_layers
        try:
            u, g, _ = resolve_regions(n_layers, lens=self.out / "lens")
        except RegionEstimateError:  # no clear English phase: quarters, recorded in the results
            return n_layers // 4, n_layers // 4, False
        return u, g, True

    def deactivation_key(self) -> dict[str, Any]:
        s = self.settings
        langs = s.deactivation_langs
        u, g, found = self.regions()
        settings = {"langs": langs, "eval_texts": s.eval_texts, "eval_max_length": s.eval_max_length, "seeds": s.seeds}
        return self._key(settings, texts={lang: self._texts_digest(lang, "heldout", s.eval_texts) for lang in langs},
                         regions={"understanding": u, "generation": g, "from_lens": found},
                         inputs=self._files_digest(*(f"neurons/specific/{lang}.safetensors" for lang in langs)))

    def enhance_key(self) -> dict[str, Any]:
        s = self.settings
        lang, _ = s.enhance_language()
        settings = {"lang": lang, "docs": s.enhance_docs, "steps": s.enhance.max_steps, "lr": s.enhance.lr,
                    "baselines": s.enhance_baselines, "eval_texts": s.eval_texts, "eval_max_length": s.eval_max_length}
        training = _training_beyond_the_old_key(s)
        if training:
            settings["training"] = training
        texts = {"train": self._texts_digest(lang, "detect", s.enhance_docs),
                 **{f"eval.{x}": self._texts_digest(x, "heldout", s.eval_texts) for x in dict.fromkeys((lang, ENGLISH))}}
        return self._key(settings, texts=texts, inputs=self._files_digest(f"neurons/specific/{lang}.safetensors"))

    # ---- stages -------------------------------------------------------------------------------
    def lens(self, folder: Path) -> None:
        from mwork.lens.pipeline import run_lens

        s = self.settings
        model, tok = self.model()
        config = self.lens_config()
        run_lens(model, tok, None, config, folder, model_name=s.model,
                 title=f"{s.model}: language of the top-{config.top_k} decoded tokens per layer")

    def neurons(self, folder: Path) -> None:
        from mwork.neurons.detect import detect
        from mwork.neurons.specific import language_specific
        from mwork.neurons.overlap import write_stats

        s = self.settings
        model, tok = self.model()
        sets = []
        for lang in s.langs:
            docs = self.texts(lang, "detect")[: s.detect_docs]
            sets.append(detect(model, tok, docs, self.detect_config(lang), model_id=s.model,
                               out=child_path(folder / "detected", lang),
                               corpus_info={"source": s.corpus_dir or "dataset-build (built-in)", "lang": lang}))
        specific = language_specific(sets)
        for lang, ns in zip(s.langs, specific):
            ns.save(child_path(folder / "specific", lang))
        write_stats(specific, folder, list(s.langs))

    def deactivation(self, folder: Path) -> None:
        from mwork.experiments.deactivation import GridSpec, load_language_sets, run_deactivation_experiment
        from mwork.tasks.runtime import perplexity_evaluator

        s = self.settings
        model, tok = self.model()
        u, g, found = self.regions()
        langs = list(s.deactivation_langs)
        sets = load_language_sets(self.out / "neurons" / "specific", langs, model)
        texts = {lang: self.texts(lang, "heldout")[: s.eval_texts] for lang in langs}
        evaluate = perplexity_evaluator(model, tok, texts, batch_size=8, max_length=s.eval_max_length)
        run_deactivation_experiment(model, evaluate, sets, GridSpec(tuple(langs), "en", u, g, tuple(s.seeds)), folder,
                                    settings={"regions_from_lens": found, "texts": "held-out paragraphs"})

    def enhance(self, folder: Path) -> None:
        from mwork.experiments.enhance import compare

        s = self.settings
        lang, _ = s.enhance_language()
        texts = self.texts(lang, "detect")[: s.enhance_docs]
        evals = {lang: self.texts(lang, "heldout")[: s.eval_texts], "en": self.texts("en", "heldout")[: s.eval_texts]}
        compare(s.model, self.out / "neurons" / "specific" / f"{lang}.safetensors", texts, evals, folder,
                settings=s.enhance, methods=("neurons", *s.enhance_baselines), eval_max_length=s.eval_max_length)

    # ---- all ----------------------------------------------------------------------------------
    def run(self) -> Path:
        from mwork.report import render_report

        s = self.settings
        start = time.time()
        notes = self.prepare()  # every text read, every problem said, before the first stage
        for note in notes:
            print(f"[demo] note: {note}", flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self._stage("lens", self.lens_key(), self.lens)
        self._stage("neurons", self.neurons_key(), self.neurons)
        self._stage("deactivation", self.deactivation_key(), self.deactivation)
        self._stage("enhance", self.enhance_key(), self.enhance)
        run = {
            "title": f"mwork demo on {s.model}",
            "command": " ".join(["mwork", *sys.argv[1:]]) if sys.argv and "mwork" in sys.argv[0] else f"mwork demo --out {self.out}",
            "settings": s.record(),
            "notes": notes,
            "stages": [asdict(st) for st in self.stages],
            "total_seconds": sum(st.seconds for st in self.stages),
            "estimate": {"probe_seconds": self._probe_seconds, "probe_shape": list(PROBE_SHAPE),
                         "said": self._estimates},
            "this_run_seconds": time.time() - start,
            "versions": _versions(),
        }
        (self.out / "run.json").write_text(json.dumps(run, indent=2, default=str) + "\n")
        # the headline files at the top of the folder, where a reader looks first
        for src in ("lens/lens.csv", "lens/lens.png", "deactivation/table.csv", "enhance/compare.csv"):
            if (self.out / src).exists():
                shutil.copyfile(self.out / src, self.out / Path(src).name)
        page = render_report(self.out, title=run["title"])
        print(f"[demo] report: {page} ({page.stat().st_size / 1e6:.1f} MB; {time.time() - start:.0f} s this run)",
              flush=True)
        return page


def _training_beyond_the_old_key(s: DemoSettings) -> dict[str, Any]:
    """The enhance stage's training settings that differ from what the demo trained with before
    they were a config (steps and lr given; batch 2 below 16 documents, else 4; length
    eval_max_length; no accumulation or warm-up), which its key did not record: so the caches of
    those runs stay valid and any other setting reruns the stage."""
    from mwork.config import fingerprint
    from mwork.experiments.training import EnhanceSettings

    old = fingerprint(EnhanceSettings(lr=s.enhance.lr, max_steps=s.enhance.max_steps, grad_accum=1, warmup_ratio=0.0,
                                      batch_size=2 if s.enhance_docs < 16 else 4, max_length=s.eval_max_length))
    return {k: v for k, v in fingerprint(s.enhance).items() if v != old[k]}


def _minutes(seconds: float) -> str:
    return f"about {max(1, round(seconds / 60))} min" if seconds >= 45 else "under a minute"


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import mwork

    return {"mwork": mwork.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def run_demo(out: str | Path = "mwork-demo", quick: bool = False, **changes: Any) -> Path:
    """Run (or resume) the demo into ``out``; returns the path of ``index.html``. ``changes``:
    as for :meth:`DemoSettings.with_` (of the quick or the default settings)."""
    settings = DemoSettings.quick(**changes) if quick else DemoSettings().with_(**changes)
    return Demo(Path(out), settings).run()
