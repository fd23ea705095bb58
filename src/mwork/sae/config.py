"""``mwork sae train``: dictionaries trained on the model's own activations, where none is
published or the network is absent (:class:`SaeTrainConfig`, the job; :func:`train_dictionaries`).

One corpus pass captures the activations of every chosen layer at the site (``layer.out``, the
residual stream; or ``ffn.out``) into a buffer (:mod:`mwork.sae.activations`); each layer's
dictionary is trained on its buffer (:mod:`mwork.sae.train`) and measured on held-out documents
(:mod:`mwork.sae.quality`). Resumable: the buffer and each layer's training state are kept in
``OUT/checkpoints/`` under keys made of the model's weights, the texts and the settings (the
buffer's: only those it depends on), so the same command continues where it stopped (another
training setting trains afresh on the same buffer); the folder is removed once the files are
written. Files: ``OUT/dictionary.safetensors`` (+ ``.json``; every layer,
``mwork.load_units(OUT)`` reads it), ``OUT/quality.csv`` (a row per layer) and
``OUT/quality.json`` (the rows, settings, corpora and model).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mwork.config import digest, fingerprint, option
from mwork.corpus_pass import PassOptions
from mwork.jobs import CorpusOptions, Job, ModelOptions, OutputOptions, RunOptions, WrittenResult
from mwork.models.adapters import get_adapter, model_name
from mwork.sae.activations import capture_rows, split_documents
from mwork.sae.quality import QUALITY_COLUMNS, eval_windows, reconstruction_quality, splice_losses
from mwork.sae.train import TRAIN_ACTIVATIONS, TrainSettings, train_codebook
from mwork.units.dictionary import Dictionary
from mwork.units.edit import check_layers

#: where ``mwork sae train`` may train (the residual stream, or the MLP's output)
TRAIN_SITES = ("layer.out", "ffn.out")
#: the built-in multilingual prose a dictionary is trained on by default
DEFAULT_LANGS = ("en", "de", "fr", "es", "ru", "zh", "ja")
DEFAULT_CORPUS = tuple(f"{lang}=builtin:{lang}" for lang in DEFAULT_LANGS)
DICTIONARY_FILE = "dictionary.safetensors"
#: the settings the activation buffer depends on (the others change only the training)
CAPTURE_FIELDS = ("site", "tokens", "eval_tokens", "heldout_every", "max_length", "batch_size", "max_docs")


def _layers(spec: str) -> list[int]:
    from mwork.intervene import parse_layers

    layers = parse_layers(spec)
    if not layers:
        raise ValueError("give the layers to train at, e.g. --layers 6 or --layers 4,8")
    return layers


@dataclass(frozen=True, kw_only=True)
class SaeTrainConfig(ModelOptions, CorpusOptions, RunOptions, OutputOptions, Job):
    """Sparse dictionaries (TopK or JumpReLU) at chosen layers, with their quality measures."""

    command = "train"
    summary = "train sparse dictionaries (TopK or JumpReLU SAEs) at chosen layers, with their quality measures"

    corpus: tuple[str, ...] = option(DEFAULT_CORPUS, "LANG=SPEC: one language's texts (give it once per language; "
                                     "default: the built-in prose of " + ",".join(DEFAULT_LANGS) + ")",
                                     repeat=True, metavar="LANG=SPEC")
    layers: str = option(help="layers to train at, e.g. 6 or 4,8", required=True)
    site: str = option("layer.out", "where the dictionary reads and writes", choices=TRAIN_SITES)
    width: int = option(2048, "features per dictionary")
    activation: str = option("topk", "topk, or jumprelu (a learnt threshold per feature, L0 penalty)",
                             choices=TRAIN_ACTIVATIONS)
    k: int = option(32, "active features per token (topk), or where the L0 starts (jumprelu)")
    l0_coefficient: float = option(2e-3, "the L0 penalty's weight (jumprelu), in units of the variance")
    bandwidth: float = option(0.05, "the straight-through estimator's kernel width (jumprelu)")
    steps: int = option(2000, "training steps per layer")
    tokens_per_step: int = option(1024, "activation rows per training step")
    lr: float = option(1e-3, "Adam's learning rate")
    seed: int = option(0, "initialisation and shuffling")
    tokens: int = option(100_000, "training tokens captured (shared equally by the languages; reused for every step)")
    eval_tokens: int = option(16_384, "held-out tokens for the quality measures (shared by the languages)")
    heldout_every: int = option(5, "every Nth document of each corpus is held out for the quality measures")
    checkpoint_every: int = option(200, "save the training state every N steps", record=False)

    def settings(self) -> TrainSettings:
        return TrainSettings(activation=self.activation, width=self.width, k=self.k, steps=self.steps,
                             tokens_per_step=self.tokens_per_step, lr=self.lr, l0_coefficient=self.l0_coefficient,
                             bandwidth=self.bandwidth, seed=self.seed)

    def check(self) -> None:
        from mwork.files import check_output_path
        from mwork.texts import TextSource

        self.check_model_options()
        for spec in self.check_corpus(min_languages=1).values():
            TextSource.parse(spec)  # a missing file, a bad range: said before the model loads
        _layers(self.layers)
        if self.site not in TRAIN_SITES:
            raise ValueError(f"site must be one of {', '.join(TRAIN_SITES)}, got {self.site!r}")
        self.settings().check()
        for name in ("tokens", "eval_tokens", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.heldout_every < 2:
            raise ValueError(f"heldout_every must be at least 2 (one document in N is held out), got {self.heldout_every}")
        check_output_path(self.out, "dictionary folder")

    def compute(self, model: Any, tokenizer: Any) -> WrittenResult:
        result = train_dictionaries(self, model, tokenizer)
        assert result is not None
        return result


def _cached_rows(path: Path, key: str) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, Any]] | None:
    import json

    from mwork.files import read_safetensors

    if not path.is_file():
        return None
    try:
        tensors, header = read_safetensors(path, "activation buffer", "it is captured again")
        info = json.loads(header.get("mwork", "{}"))
    except (ValueError, json.JSONDecodeError):
        return None
    if info.get("key") != key:
        return None
    rows: dict[str, dict[int, torch.Tensor]] = {"train": {}, "heldout": {}}
    for name, t in tensors.items():
        part, layer = name.split(".")
        rows[part][int(layer)] = t
    return rows, info["counts"]


def _activations(config: SaeTrainConfig, model: Any, tokenizer: Any, texts: dict[str, list[str]], layers: list[int],
                 path: Path, key: str) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, Any]]:
    """Training and held-out rows per layer (from the buffer file when it holds this key)."""
    import json

    from mwork.files import save_safetensors

    cached = _cached_rows(path, key)
    if cached is not None:
        return cached
    split = {lang: split_documents(docs, config.heldout_every) for lang, docs in texts.items()}
    options = PassOptions("windows", config.max_length, batch_size=config.batch_size)
    rows, counts = {}, {}
    for part, which, budget in (("train", 0, config.tokens), ("heldout", 1, config.eval_tokens)):
        rows[part], counts[part] = capture_rows(model, tokenizer, {lang: s[which] for lang, s in split.items()},
                                                site=config.site, layers=layers, tokens=budget, options=options,
                                                progress=config.progress)
    tensors = {f"{part}.{layer}": t.contiguous() for part, per in rows.items() for layer, t in per.items()}
    save_safetensors(path, tensors, metadata={"mwork": json.dumps({"key": key, "counts": counts})})
    return rows, counts


def _cell(value: Any) -> Any:
    """A number of quality.csv / quality.json: 6 decimals, NaN as None (empty, null)."""
    if isinstance(value, float):
        return None if value != value else round(value, 6)
    return value


def train_dictionaries(config: SaeTrainConfig, model: Any, tokenizer: Any, *,
                       stop_at: int | None = None) -> WrittenResult | None:
    """Capture, train every layer, measure, write (module docstring). ``stop_at``: stop each
    layer's training after that step, its checkpoint saved, and return None (an interrupted run)."""
    from mwork.files import make_folder, write_csv, write_json
    from mwork.fingerprints import model_digest

    config.check()
    adapter = get_adapter(model)
    layers = _layers(config.layers)
    check_layers(adapter.num_layers, layers)
    texts, corpora = config.read_corpus()
    folder = make_folder(config.out)
    ckdir = make_folder(folder / "checkpoints")
    inputs = {"model": model_digest(model), "texts": {lang: c["sha256"] for lang, c in corpora.items()},
              "layers": layers}
    capture = digest({**inputs, **{k: getattr(config, k) for k in CAPTURE_FIELDS}})
    key = digest({**inputs, "config": fingerprint(config)})
    rows, counts = _activations(config, model, tokenizer, texts, layers,
                                ckdir / f"activations-{capture[:16]}.safetensors", capture)
    settings = config.settings()
    books, quality, scales, dead = {}, [], {}, {}
    for layer in layers:
        trained = train_codebook(rows["train"][layer], settings, checkpoint=ckdir / f"layer{layer}-{key[:16]}.safetensors",
                                 key=f"{key}:{layer}", checkpoint_every=config.checkpoint_every,
                                 progress=config.progress, desc=f"sae layer {layer}", stop_at=stop_at)
        if trained is None:
            return None
        books[layer], scales[layer], dead[layer] = trained.book, trained.scale, trained.dead
    held = {lang: split_documents(docs, config.heldout_every)[1] for lang, docs in texts.items()}
    share = max(1, config.eval_tokens // len(held))
    windows = [w for docs in held.values() for w in eval_windows(tokenizer, docs, config.max_length, share)]
    losses = splice_losses(model, tokenizer, windows, config.site, books, config.batch_size, progress=config.progress)
    for layer in layers:
        book = books[layer]
        row = {"layer": layer, "site": config.site, "width": book.width, "activation": book.activation,
               "k": book.k, **reconstruction_quality(book, rows["heldout"][layer]), **losses[layer],
               "eval_windows": len(windows), "dead_train": dead[layer]}
        quality.append({c: _cell(row[c]) for c in QUALITY_COLUMNS})
    fp = adapter.fingerprint()
    meta = {"format": "mwork", "trained_by": "mwork sae train", "config": fingerprint(config), "corpora": corpora,
            "model_id": model_name(model), "fingerprint": fp, "scale": {str(k): v for k, v in scales.items()},
            "tokens": counts}
    files = {"dictionary": Dictionary(books, site=config.site, meta=meta).save(folder / DICTIONARY_FILE)}
    files["dictionary_json"] = files["dictionary"].with_suffix(".json")
    files["quality.csv"] = write_csv(folder / "quality.csv", quality, list(QUALITY_COLUMNS))
    write_json(folder / "quality.json", {"quality": quality, "config": fingerprint(config), "corpora": corpora,
                                         "tokens": counts, "model": model_name(model), "fingerprint": fp},
               indent=2, sort_keys=True)
    files["quality.json"] = folder / "quality.json"
    shutil.rmtree(ckdir, ignore_errors=True)
    return WrittenResult(folder, files, data=quality)
