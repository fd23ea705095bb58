"""Dictionary features through the one corpus pass and the detection methods: the pass's feature
statistics against an encoding by hand over the same tokens (a plain dictionary and a
transcoder); LAPE, AP and monolinguality on features against a direct computation on a hand-made
activation table; ``mwork detect --units sae:DIR`` writes sets that load back and that
``mwork.deactivate`` / ``mwork.steer`` apply as the hand-made edit with the error kept; bad input
refused before the model loads."""

from __future__ import annotations

import pytest
import torch

import mwork
from mwork.capturing import capture
from mwork.cli import main as cli_main
from mwork.corpus_pass import PassOptions, corpus_pass, unit_request
from mwork.hooks import Hooks
from mwork.neurons.detect_job import DetectJob
from mwork.neurons.methods import get_detection_method, language_scores
from mwork.neurons.methods.ap import average_precision, two_sided_scores
from mwork.neurons.methods.base import LanguageScores
from mwork.neurons.methods.lape import LapeConfig, lape_statistics
from mwork.neurons.methods.monolinguality import MonolingualityConfig, monolinguality
from mwork.neurons.methods.stats import FEATURES, CorpusStats
from mwork.neurons.windows import Windowing
from mwork.units import Codebook, Dictionary

CORPORA = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read many languages.", "",
           "Hello world, again and again."],
    "fr": ["Le renard brun saute par-dessus le chien.", "Bonjour le monde.", "Encore un document en français."],
    "zh": ["敏捷的棕色狐狸跳过了懒狗。", "你好世界。", "我们今天去公园散步。"],
}
D, MAX_LENGTH = 64, 8


def _book(seed: int, m: int, activation: str = "relu", **kw) -> Codebook:
    g = torch.Generator().manual_seed(seed)
    return Codebook(torch.randn(D, m, generator=g) * 4, torch.randn(m, generator=g) * 0.1,  # the tiny model's
                    torch.randn(m, D, generator=g) / 4, torch.randn(D, generator=g) * 0.01, activation, **kw)  # x ~ 0.02


@pytest.fixture(scope="module")
def llama64(tiny_models):
    return tiny_models.shared("tiny-random-llama", torch.float64)


@pytest.fixture(scope="module")
def sae():
    """Two layers' dictionaries at the residual stream (ReLU; TopK), 12 features each."""
    return Dictionary({0: _book(0, 12), 2: _book(1, 12, "topk", k=3)}, site="layer.out")


def _by_hand(model, tok, docs, units: Dictionary):
    """Per document, the features' activations (tokens, units) at every text token, each window
    alone through the model, encoded by hand from the captured site value."""
    win = Windowing.for_tokenizer(tok, MAX_LENGTH, False)
    site = units.read_site or units.site
    out = {}
    for i, text in enumerate(docs):
        ids = tok(text, add_special_tokens=False)["input_ids"] if text.strip() else []
        rows = []
        for w in win.split(i, ids):
            with capture(model, site) as cap:
                model(input_ids=torch.tensor([w.ids]), use_cache=False)
            keep = slice(len(win.prefix), len(w.ids) - len(win.suffix))
            row = torch.zeros(len(w.ids) - len(win.prefix) - len(win.suffix), units.count(), dtype=torch.float64)
            for j, (layer, feature) in enumerate(zip(units.layers.tolist(), units.features.tolist())):
                row[:, j] = units.books[layer].encode(cap[site, layer][0, keep].double())[:, feature]
            rows.append(row)
        if rows:
            out[i] = torch.cat(rows)
    return out


@pytest.mark.parametrize("transcoder", [False, True])
def test_feature_statistics_of_the_pass_equal_an_encoding_by_hand(llama64, sae, transcoder):
    model, tok = llama64
    units = (Dictionary({1: _book(3, 10, "jumprelu", threshold=torch.full((10,), 0.05))}, site="ffn.out",
                        read_site="layer.in") if transcoder else sae.subset(torch.tensor([20, 3, 0, 14, 5])))
    docs = CORPORA["en"]
    requests = [unit_request(name, units, opts, key=name) for name, opts in
                (("mean", {}), ("firing_probability", {}), ("doc_means", {}), ("quantiles", {"qs": (0.5, 0.9)}))]
    run = corpus_pass(model, tok, {"en": docs}, requests, PassOptions(max_length=MAX_LENGTH, batch_size=2),
                      progress=False)
    hand = _by_hand(model, tok, docs, units)
    table = torch.cat(list(hand.values()))  # (tokens, units)
    assert run.n_tokens("en") == len(table)

    def joined(key):
        parts = {layer: run.value(key, "en", layer) for layer in run.statistics[key]["en"]}
        out = torch.zeros(*next(iter(parts.values())).shape[:-1], units.count(), dtype=torch.float64)
        for layer, value in parts.items():
            out[..., units.positions(layer)] = value.to(torch.float64)
        return out

    torch.testing.assert_close(joined("mean"), table.mean(0))
    torch.testing.assert_close(joined("firing_probability"), (table > 0).double().mean(0))
    torch.testing.assert_close(joined("quantiles"), torch.quantile(table, torch.tensor([0.5, 0.9],
                                                                                       dtype=torch.float64), dim=0))
    torch.testing.assert_close(joined("doc_means"), torch.stack([hand[i].mean(0) for i in run.corpora["en"].measured]))
    if not transcoder:
        assert {0.0, 1.0} != set((table > 0).double().mean(0).tolist())  # features that fire on some tokens only


def _stats(table: dict[str, list[torch.Tensor]], fingerprint) -> CorpusStats:
    """A CorpusStats of features from a hand-made activation table: per language, a list of
    documents, each a (tokens, units) tensor."""
    langs = tuple(table)

    def row(t):
        return t[None, None]

    return CorpusStats(
        langs, 1, fingerprint, {lang: torch.tensor([sum(len(d) for d in docs)]) for lang, docs in table.items()},
        {lang: {FEATURES: row(sum((d > 0).sum(0) for d in docs))} for lang, docs in table.items()},
        {lang: {FEATURES: row(sum(d.sum(0) for d in docs))} for lang, docs in table.items()},
        {lang: {FEATURES: torch.stack([d.sum(0) for d in docs])[:, None]} for lang, docs in table.items()},
        {lang: torch.tensor([len(d) for d in docs]) for lang, docs in table.items()},
        {lang: torch.arange(len(docs)) for lang, docs in table.items()}, {lang: [] for lang in langs})


@pytest.fixture(scope="module")
def table(sae):
    """Hand-made activations of the 24 units of ``sae``: units j + 6k (k = 0..3: features j and j + 6
    of both layers) fire mostly for language j, the others at random, sparse and non-negative."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for j, lang in enumerate(("en", "fr", "zh")):
        docs = []
        for n in (5, 7, 4):
            a = torch.rand(n, sae.count(), generator=g, dtype=torch.float64)
            a = torch.where(a > 0.7, a, torch.zeros_like(a))
            a[:, [j + 6 * k for k in range(4)]] += 2.0 * (torch.rand(n, 4, generator=g, dtype=torch.float64) > 0.2)
            docs.append(a)
        out[lang] = docs
    return out


def _fp(model):
    return mwork.get_adapter(model).fingerprint()


def test_lape_on_features_is_the_rule_by_hand(llama64, sae, table):
    config = LapeConfig(top_rate=0.25, activation_bar_ratio=0.8)
    scores = get_detection_method("lape").from_stats(_stats(table, _fp(llama64[0])), config, units=sae)
    probs = torch.stack([(torch.cat(docs) > 0).double().mean(0) for docs in table.values()], dim=-1)  # (units, langs)
    normed = probs / probs.sum(-1, keepdim=True)
    entropy = -(normed * torch.where(normed > 0, normed.log(), torch.zeros_like(normed))).sum(-1)
    flat = torch.sort(probs.flatten()).values
    tau, bar = flat[round(len(flat) * 0.95) - 1], flat[round(len(flat) * 0.8) - 1]
    entropy = torch.where((probs > tau).any(-1), entropy, torch.full_like(entropy, float("inf")))
    kept = torch.sort(entropy, stable=True).indices[:round(24 * 0.25)]
    torch.testing.assert_close(scores.scores["fr"][FEATURES][0], -entropy)
    assert lape_statistics(probs[None], config).kept.tolist() == kept.tolist()
    sets = get_detection_method("lape").native_sets(scores, config)
    for j, lang in enumerate(("en", "fr", "zh")):
        want = sorted(int(i) for i in kept if probs[i, j] > bar)
        assert sets[lang].features.tolist() == [int(sae.features[i]) for i in want]
        assert sets[lang].layers.tolist() == [int(sae.layers[i]) for i in want]
        torch.testing.assert_close(sets[lang].stats["activation_probability"], probs[want, j])
        assert sets[lang].meta["method"] == "lape" and sets[lang].meta["language"] == lang
    assert all(sets[lang].count() > 0 for lang in sets)


def test_ap_and_monolinguality_on_features_by_hand(llama64, sae, table):
    stats = _stats(table, _fp(llama64[0]))
    docs = torch.cat([torch.stack([d.mean(0) for d in table[lang]]) for lang in table])  # (documents, units)
    owner = torch.tensor([j for j, lang in enumerate(table) for _ in table[lang]])
    ap = get_detection_method("ap")
    scores = ap.from_stats(stats, ap.make_config(top=2, bottom=1), units=sae)
    for j, lang in enumerate(table):
        want = average_precision(docs, owner == j)
        torch.testing.assert_close(scores.extra[lang]["ap"][0], want)
        torch.testing.assert_close(scores.scores[lang][FEATURES][0], two_sided_scores(want))
        chosen = ap.native_sets(scores, ap.make_config(top=2, bottom=1))[lang]
        top = torch.sort(want, descending=True, stable=True).indices[:2].tolist()
        bottom = torch.sort(want, stable=True).indices[:1].tolist()
        assert sorted(int(sae.features[i]) + 100 * int(sae.layers[i]) for i in set(top + bottom)) == sorted(
            f + 100 * layer for f, layer in zip(chosen.features.tolist(), chosen.layers.tolist()))

    mono = get_detection_method("monolinguality")
    config = MonolingualityConfig(mono_top_k=2)
    scores = mono.from_stats(stats, config, units=sae)
    means = torch.stack([torch.cat(table[lang]).mean(0) for lang in table], dim=-1)  # (units, langs)
    sets = mono.native_sets(scores, config)
    for j, lang in enumerate(table):
        nu = means[:, j] - torch.cat([means[:, :j], means[:, j + 1:]], dim=1).mean(1)
        torch.testing.assert_close(scores.scores[lang][FEATURES][0], nu)
        want = []
        for layer in (0, 2):
            at = [i for i in range(24) if int(sae.layers[i]) == layer and nu[i] > 0]
            want += sorted(at, key=lambda i: -float(nu[i]))[:2]
        assert sets[lang].layers.tolist() == [int(sae.layers[i]) for i in sorted(want)]
        assert sets[lang].features.tolist() == [int(sae.features[i]) for i in sorted(want)]
        assert all(f % 6 == j for f in sets[lang].features.tolist())  # the planted features of the language
        top4 = scores.top(lang, 4)  # sets of any size: over every layer, a subset of the dictionary
        assert top4.count() == 4 and set(zip(top4.layers.tolist(), top4.features.tolist())) <= set(
            zip(sae.layers.tolist(), sae.features.tolist()))
    torch.testing.assert_close(monolinguality(torch.tensor([[3.0, 1.0, 2.0]])), torch.tensor([[1.5, -1.5, 0.0]]))
    saved = LanguageScores.from_tensors(*scores.to_tensors(), units=sae)
    assert saved.top("fr", 5).features.tolist() == scores.top("fr", 5).features.tolist()
    with pytest.raises(ValueError, match="give that unit set"):
        LanguageScores.from_tensors(*scores.to_tensors())


def test_detect_writes_feature_sets_that_deactivate_and_steer_as_by_hand(tmp_path, capsys, llama64, sae):
    model, tok = llama64
    folder = tmp_path / "sae"
    folder.mkdir()
    sae.save(folder / "dictionary.safetensors")
    files = []
    for lang, docs in CORPORA.items():
        (tmp_path / f"{lang}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
        files += ["--corpus", f"{lang}={tmp_path / f'{lang}.txt'}"]
    out = tmp_path / "mono"
    assert cli_main(["detect", "--method", "monolinguality", "--units", f"sae:{folder}", "--model", "tiny-random-llama",
                     "--out-dir", str(out), "--quiet", "--max-length", str(MAX_LENGTH), "--mono-top-k", "2",
                     *files]) == 0
    printed = capsys.readouterr().out
    assert "features" in printed and "of the dictionary's 24" in printed
    api = language_scores(model, tok, {lang: str(tmp_path / f"{lang}.txt") for lang in CORPORA}, "monolinguality",
                          units=sae, progress=False, max_length=MAX_LENGTH)
    fr = mwork.load_units(out / "fr.safetensors", model)
    assert isinstance(fr, Dictionary) and fr.meta["method"] == "monolinguality" and 0 < fr.count() <= 4
    want = get_detection_method("monolinguality").native_sets(api, MonolingualityConfig(mono_top_k=2))["fr"]
    assert fr.features.tolist() == want.features.tolist() and fr.layers.tolist() == want.layers.tolist()

    ids = torch.tensor([[5, 17, 33, 9, 21, 2]])
    adapter = mwork.get_adapter(model)

    def by_hand(new_value):
        hooks = Hooks()
        for layer in sorted(set(fr.layers.tolist())):
            feats = fr.features[fr.layers == layer]
            target = fr.stats["mean"][fr.layers == layer]

            def edit(x, book=fr.books[layer], feats=feats, target=target):
                f = book.encode(x)[..., feats]
                return x + (new_value(f, target) - f) @ book.W_dec[feats].to(x)

            hooks.edit(adapter.site("layer.out", layer), edit)
        with hooks, torch.no_grad():
            return model(input_ids=ids).logits

    with torch.no_grad():
        clean = model(input_ids=ids).logits
        with mwork.deactivate(model, fr):
            off = model(input_ids=ids).logits
        with mwork.steer(model, fr, mode="set"):
            steered = model(input_ids=ids).logits
    torch.testing.assert_close(off, by_hand(lambda f, t: torch.zeros_like(f)))
    torch.testing.assert_close(steered, by_hand(lambda f, t: t.to(f).expand_as(f)))
    assert not torch.allclose(off, clean)


def test_bad_feature_input_is_refused_before_the_model_loads(tmp_path, sae, llama64):
    corpus = tuple(f"{lang}=builtin:{lang}" for lang in ("en", "fr"))
    folder = tmp_path / "sae"
    folder.mkdir()
    sae.save(folder / "dictionary.safetensors")
    with pytest.raises(ValueError, match="no dictionary at"):
        DetectJob(method="lape", units=f"sae:{tmp_path / 'missing'}", corpus=corpus, out_dir=str(tmp_path / "o")).check()
    with pytest.raises(ValueError, match="plnd does not score dictionary units .*PLND's importance"):
        DetectJob(method="plnd", units=f"sae:{folder}", corpus=("x.txt",), lang="fr", out=str(tmp_path / "o")).check()
    with pytest.raises(ValueError, match="monolinguality does not score neurons"):
        DetectJob(method="monolinguality", corpus=corpus, out_dir=str(tmp_path / "o")).check()
    with pytest.raises(ValueError, match="more than the 24 features"):
        DetectJob(method="ap", units=f"sae:{folder}", corpus=corpus, out_dir=str(tmp_path / "o")).check()
    with pytest.raises(SystemExit):
        cli_main(["detect", "--method", "lape", "--units", "directions:x", "--out-dir", str(tmp_path / "o"),
                  "--corpus", "en=builtin:en", "--corpus", "fr=builtin:fr"])
    wide = Dictionary({0: Codebook(torch.zeros(D + 1, 4), torch.zeros(4), torch.zeros(4, D + 1), torch.zeros(D + 1))})
    with pytest.raises(ValueError, match="hidden size is 64"):
        language_scores(llama64[0], llama64[1], {"en": ["a b"], "fr": ["c d"]}, "monolinguality", units=wide,
                        progress=False)
