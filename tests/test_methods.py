"""Detection methods behind one interface (mwork.neurons.methods): the streaming statistics
against counts made by hand, LAPE's rule, activation AP against sklearn and a hand ranking,
PLND's score against its own rule, the registry and ``mwork detect --method``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers.processors import TemplateProcessing

import mwork
from mwork.capturing import capture
from mwork.cli import main as cli_main
from mwork.models.tiny import tiny_tokenizer
from mwork.neurons.detect import detect
from mwork.neurons.methods import (
    DetectionMethod, LanguageScores, detect_languages, detection_methods, get_detection_method, language_scores,
    register_detection_method,
)
from mwork.neurons.methods.ap import average_precision, two_sided_scores
from mwork.neurons.methods.lape import LapeConfig, lape_statistics
from mwork.neurons.methods.plnd import PlndCounts
from mwork.neurons.methods.stats import CorpusStats, PassOptions, StatsRequest, collect_statistics
from mwork.neurons.neuronset import NeuronSet
from mwork.neurons.specific import language_specific
from mwork.neurons.windows import Windowing

CORPORA = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Language models read and write many languages.",
           "", "Quick numbers: 1, 2, 3, 10, 42, 100.", "Hello world, again and again and again."],
    "fr": ["Le renard brun saute par-dessus le chien paresseux.", "Les modèles de langue lisent le français.",
           "Bonjour le monde.", "Encore un document en français, un peu plus long que les autres."],
    "zh": ["敏捷的棕色狐狸跳过了懒狗。", "语言模型可以阅读和书写多种语言。", "你好世界。", "我们今天去公园散步。"],
}


@pytest.fixture(scope="module")
def llama64(tiny_models):
    return tiny_models.shared("tiny-random-llama", torch.float64)


@pytest.fixture(scope="module")
def gpt2_64(tiny_models):
    return tiny_models.shared("tiny-random-gpt2", torch.float64)


def bos_tokenizer():
    """The tiny tokenizer, adding a BOS like Gemma's (so that special tokens are run, not counted)."""
    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return tok


def by_hand(model, tok, docs, sites, max_length, truncate=False):
    """Each window of each document alone through the model; per site and layer the count of
    positive values and the sum, over the text tokens, counted with Python loops."""
    win = Windowing.for_tokenizer(tok, max_length, truncate)
    n_layers = mwork.get_adapter(model).num_layers
    positive = {s: {} for s in sites}
    doc_sums = {s: {} for s in sites}
    tokens = {}
    for i, text in enumerate(docs):
        if not text.strip():
            continue
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for w in win.split(i, ids):
            with capture(model, sites) as cap:
                model(input_ids=torch.tensor([w.ids]), use_cache=False)
            positions = range(len(win.prefix), len(w.ids) - len(win.suffix))
            tokens[i] = tokens.get(i, 0) + len(positions)
            for s in sites:
                for layer in range(n_layers):
                    v = cap[s, layer][0]
                    counts = positive[s].setdefault(layer, [0] * v.shape[-1])
                    sums = doc_sums[s].setdefault((i, layer), [0.0] * v.shape[-1])
                    for t in positions:
                        for c in range(v.shape[-1]):
                            counts[c] += int(v[t, c] > 0)
                            sums[c] += float(v[t, c])
    return positive, doc_sums, tokens


@pytest.mark.parametrize("fixture", ["llama64", "gpt2_64"])
def test_statistics_equal_a_count_by_hand(fixture, request):
    model, _ = request.getfixturevalue(fixture)
    tok = bos_tokenizer()
    docs = CORPORA["en"]
    sites = ("ffn.act", "q.out", "v.out")
    stats = collect_statistics(model, tok, {"en": docs}, StatsRequest(positive=("ffn.act",), doc_means=sites,
                                                                       site_means=("q.out",)),
                               PassOptions(max_length=6, batch_size=3, parts=2), progress=False)
    positive, sums, tokens = by_hand(model, tok, docs, sites, max_length=6)
    assert stats.empty["en"] == [2] and stats.doc_index["en"].tolist() == [0, 1, 3, 4]
    assert stats.doc_tokens["en"].tolist() == [tokens[i] for i in (0, 1, 3, 4)]
    assert stats.tokens["en"].tolist() == [tokens[0] + tokens[4], tokens[1] + tokens[3]]  # even / odd documents
    for layer, counts in positive["ffn.act"].items():
        assert stats.positive["en"]["ffn.act"].sum(0)[layer].tolist() == counts  # exact integer counts
    for site in sites:
        for slot, doc in enumerate((0, 1, 3, 4)):
            for layer in range(3):
                assert torch.allclose(stats.doc_sums["en"][site][slot, layer],
                                      torch.tensor(sums[site][doc, layer], dtype=torch.float64), atol=1e-9)
    total_q = sum(torch.tensor(sums["q.out"][d, 0], dtype=torch.float64) for d in (0, 1, 3, 4))
    assert torch.allclose(stats.site_sums["en"]["q.out"].sum(0)[0], total_q, atol=1e-9)
    half = stats.part(1)
    assert half.doc_index["en"].tolist() == [1, 3] and half.n_tokens("en") == tokens[1] + tokens[3]
    whole = stats.part(None)
    assert torch.equal(whole.positive["en"]["ffn.act"][0], stats.positive["en"]["ffn.act"].sum(0))


def test_statistics_do_not_depend_on_the_batch_size(llama64):
    model, tok = llama64
    request = StatsRequest(positive=("ffn.act",), doc_means=("ffn.up.out",))
    a = collect_statistics(model, tok, CORPORA, request, PassOptions(max_length=8, batch_size=1), progress=False)
    b = collect_statistics(model, tok, CORPORA, request, PassOptions(max_length=8, batch_size=5), progress=False)
    for lang in CORPORA:
        assert torch.equal(a.positive[lang]["ffn.act"], b.positive[lang]["ffn.act"])
        # float64, up to the rotary tables, which transformers computes in float32 for the batch's length
        assert torch.allclose(a.doc_sums[lang]["ffn.up.out"], b.doc_sums[lang]["ffn.up.out"], rtol=1e-6, atol=1e-6)


# ---- LAPE ---------------------------------------------------------------------------------------


def lape_by_hand(probs, top_rate, filter_rate, bar_ratio):
    """The authors' steps on a (layers, n, langs) list, with Python lists only."""
    layers, n, langs = probs.shape
    flat = sorted(float(x) for x in probs.flatten())
    tau = flat[round(len(flat) * filter_rate) - 1]
    bar = flat[round(len(flat) * bar_ratio) - 1]
    entries = []
    for i in range(layers):
        for j in range(n):
            p = [float(probs[i, j, k]) for k in range(langs)]
            s = sum(p)
            q = [x / s if s > 0 else 0.0 for x in p]
            h = -sum(x * math.log(x) for x in q if x > 0)
            if not any(x > tau for x in p):
                h = math.inf
            entries.append((h, i * n + j))
    entries.sort()
    kept = [idx for _, idx in entries[:round(layers * n * top_rate)]]
    members = {k: sorted(idx for idx in kept if float(probs.flatten(0, 1)[idx, k]) > bar) for k in range(langs)}
    return tau, bar, kept, members


def test_lape_rule_equals_the_steps_by_hand():
    gen = torch.Generator().manual_seed(3)
    probs = torch.rand(4, 25, 3, generator=gen, dtype=torch.float64) ** 3
    probs[0, 0] = 0.0  # never active: entropy 0 before the filter drops it
    probs[1, 3] = torch.tensor([0.99, 0.0, 0.0], dtype=torch.float64)  # fires for one language only
    config = LapeConfig(top_rate=0.1, filter_rate=0.9, activation_bar_ratio=0.8)
    stats = lape_statistics(probs, config)
    tau, bar, kept, members = lape_by_hand(probs, 0.1, 0.9, 0.8)
    assert stats.filter_threshold == tau and stats.activation_bar == bar
    assert stats.kept.tolist() == kept and 1 * 25 + 3 in kept and 0 not in kept
    assert math.isinf(stats.entropy[0, 0])


def test_a_lape_neuron_may_belong_to_several_languages():
    probs = torch.full((3, 100, 3), 0.2, dtype=torch.float64)  # background: maximal entropy, dropped by the filter
    probs[1, 3] = torch.tensor([0.99, 0.0, 0.0])  # one language
    probs[2, 5] = torch.tensor([0.99, 0.98, 0.0])  # two languages
    tokens = 1000
    langs = ("en", "fr", "zh")
    fp = {"num_layers": 3, "neurons_per_layer": {"ffn": 100, "q": 4, "k": 4, "v": 4}}
    stats = CorpusStats(langs, 1, fp, {lang: torch.tensor([tokens]) for lang in langs},
                        {lang: {"ffn.act": (probs[..., k] * tokens).round().long()[None]} for k, lang in enumerate(langs)},
                        {}, {}, {}, {}, {lang: [] for lang in langs})
    lape = get_detection_method("lape")
    config = LapeConfig(top_rate=0.01, filter_rate=0.9, activation_bar_ratio=0.8)
    sets = lape.native_sets(lape.from_stats(stats, config), config)
    assert sets["en"].masks["ffn"].nonzero().tolist() == [[1, 3], [2, 5]]
    assert sets["fr"].masks["ffn"].nonzero().tolist() == [[2, 5]] and sets["zh"].count() == 0


def test_lape_scores_and_native_sets(llama64):
    model, tok = llama64
    config = LapeConfig(top_rate=0.05, max_length=8)
    scores = language_scores(model, tok, CORPORA, "lape", config, progress=False)
    sets = detect_languages(model, tok, CORPORA, "lape", config, progress=False)
    stats = collect_statistics(model, tok, CORPORA, StatsRequest(positive=("ffn.act",)), PassOptions(max_length=8),
                               progress=False)
    probs = torch.stack([stats.positive[lang]["ffn.act"][0].double() / stats.n_tokens(lang) for lang in CORPORA], -1)
    _, bar, kept, members = lape_by_hand(probs, 0.05, 0.95, 0.95)
    assert scores.kinds == ["ffn"]
    for k, lang in enumerate(CORPORA):
        ns = sets[lang]
        assert ns.meta["method"] == "lape" and ns.count("q") == 0
        assert ns.indices("ffn", 0).tolist() == [i for i in members[k] if i < 96]  # layer 0 of 96 neurons
        flat = ns.masks["ffn"].flatten().nonzero().flatten().tolist()
        assert flat == members[k]
        drawn = scores.top(lang, len(flat))  # equal-size drawing at the authors' size gives their set
        assert drawn == ns and drawn.meta["beyond_rule"] == 0
        assert torch.equal(ns.extra["activation_probability.ffn"], probs[..., k])


def test_lape_needs_two_languages_and_ffn_only(llama64):
    model, tok = llama64
    with pytest.raises(ValueError, match="at least 2 languages"):
        language_scores(model, tok, {"en": CORPORA["en"]}, "lape", progress=False)
    with pytest.raises(ValueError, match="top_rate must be in"):
        LapeConfig(top_rate=0)


# ---- activation AP ------------------------------------------------------------------------------


def test_average_precision_by_hand_and_against_sklearn():
    scores = torch.tensor([[0.9], [0.8], [0.8], [0.1]], dtype=torch.float64)
    labels = torch.tensor([True, False, True, False])
    # thresholds 0.9 (P 1, R 1/2) and 0.8, a tie (P 2/3, R 1): 1/2 * 1 + 1/2 * 2/3
    assert average_precision(scores, labels).item() == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)
    sklearn = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(40, 30, generator=gen, dtype=torch.float64) * 5).round() / 5  # many ties
    y = torch.rand(40, generator=gen) < 0.3
    ours = average_precision(x, y)
    several = average_precision(x, torch.stack([~y, y]))  # one sort, several detectors
    assert torch.equal(several[1], ours) and torch.equal(several[0], average_precision(x, ~y))
    for c in range(30):
        assert ours[c].item() == pytest.approx(sklearn.average_precision_score(y.numpy(), x[:, c].numpy()), abs=1e-12)


def test_two_sided_score_draws_top_and_bottom():
    ap = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.9, 0.05], dtype=torch.float64)
    s = two_sided_scores(ap)
    order = torch.sort(s, descending=True, stable=True).indices.tolist()
    # AP descending (ties: lower index): 1, 5, 3, 0, 4, 2, 6; ascending: 6, 2, 4, 0, 3, 1, 5
    assert order[:5] == [1, 6, 5, 2, 3]


def test_ap_scores_equal_a_direct_computation(llama64):
    sklearn = pytest.importorskip("sklearn.metrics")
    model, tok = llama64
    corpora = {lang: [d for d in docs if d] for lang, docs in CORPORA.items()}
    scores = language_scores(model, tok, corpora, "ap", kinds=("ffn", "v"), max_length=64, progress=False)
    # direct: each document alone, its mean over tokens at ffn.up.out and v.out
    means, owner = {"ffn": [], "v": []}, []
    for lang, docs in corpora.items():
        for d in docs:
            with capture(model, ("ffn.up.out", "v.out")) as cap:
                model(input_ids=torch.tensor([tok(d)["input_ids"]]), use_cache=False)
            means["ffn"].append(torch.stack([cap["ffn.up.out", i][0].mean(0) for i in range(3)]))
            means["v"].append(torch.stack([cap["v.out", i][0].mean(0) for i in range(3)]))
            owner.append(lang)
    for lang in corpora:
        y = [o == lang for o in owner]
        for kind in ("ffn", "v"):
            x = torch.stack(means[kind])  # (docs, layers, n)
            for layer in range(3):
                for c in range(0, x.shape[-1], 7):
                    want = sklearn.average_precision_score(y, x[:, layer, c].numpy())
                    assert scores.extra[lang][f"ap.{kind}"][layer, c].item() == pytest.approx(want, abs=1e-9)
        # the drawn set: ceil(n/2) of highest AP and floor(n/2) of lowest, over both kinds
        flat = torch.cat([scores.extra[lang]["ap.ffn"].flatten(), scores.extra[lang]["ap.v"].flatten()])
        top = torch.sort(flat, descending=True, stable=True).indices[:6].tolist()
        bottom = torch.sort(flat, stable=True).indices[:5].tolist()
        ns = scores.top(lang, 11)
        got = torch.cat([ns.masks["ffn"].flatten(), ns.masks["v"].flatten()]).nonzero().flatten().tolist()
        assert got == sorted(top + bottom) and ns.count("q") == 0
    native = get_detection_method("ap").native_sets(scores, get_detection_method("ap").make_config(top=4, bottom=3,
                                                                                                 kinds=("ffn", "v")))
    assert all(ns.count() == 7 for ns in native.values())


# ---- PLND ---------------------------------------------------------------------------------------


def test_plnd_score_follows_its_rule_by_hand():
    counts = {
        "en": PlndCounts({"ffn": torch.tensor([[4, 4, 2, 0]])}, {"ffn": 4}),
        "fr": PlndCounts({"ffn": torch.tensor([[4, 3, 2, 1]])}, {"ffn": 4}),
        "zh": PlndCounts({"ffn": torch.tensor([[2, 1, 2, 0]])}, {"ffn": 2}),
    }
    fp = {"num_layers": 1, "neurons_per_layer": {"ffn": 4, "q": 2, "k": 2, "v": 2}}
    plnd = get_detection_method("plnd")
    config = plnd.make_config(kinds=("ffn",))
    scores = plnd.from_counts(counts, config, fp)
    # f: en [1, 1, .5, 0], fr [1, .75, .5, .25], zh [1, .5, 1, 0]
    assert scores.eligible["en"]["ffn"].tolist() == [[False, True, False, False]]  # shared neuron 0 never specific
    assert scores.eligible["fr"]["ffn"].tolist() == [[False, True, False, True]]
    assert scores.eligible["zh"]["ffn"].tolist() == [[False, False, True, False]]
    assert scores.scores["en"]["ffn"][0, 1].item() == pytest.approx(1 + (1 - 0.5) / 10)
    assert scores.scores["fr"]["ffn"][0, 3].item() == pytest.approx(0.25 + 0.25 / 10)
    assert scores.top("fr", 2).indices("ffn", 0).tolist() == [1, 3]
    assert scores.top("fr", 3).meta["beyond_rule"] == 1
    native = plnd.native_sets(scores, config)  # all documents, minus the shared
    assert native["en"].indices("ffn", 0).tolist() == [1] and native["fr"].count() == 0
    assert native["zh"].indices("ffn", 0).tolist() == [2]
    both = counts["en"] + counts["fr"]
    assert both.counts["ffn"].tolist() == [[8, 7, 4, 1]] and both.n_docs == {"ffn": 8}


def test_plnd_native_sets_are_detect_minus_the_shared(llama64):
    model, tok = llama64
    corpora = {lang: [d for d in docs if d] for lang, docs in CORPORA.items()}
    plnd = get_detection_method("plnd")
    config = plnd.make_config(kinds=("ffn", "v"), max_length=16)
    scores = language_scores(model, tok, corpora, "plnd", config, progress=False)
    per_lang = [detect(model, tok, docs, config, language=lang, progress=False) for lang, docs in corpora.items()]
    assert sum(ns.count() for ns in language_specific(per_lang)) > 0
    for ns, want in zip(plnd.native_sets(scores, config).values(), language_specific(per_lang)):
        assert all(torch.equal(ns.masks[k], want.masks[k]) for k in want.kinds) and ns.count() == want.count()
        assert scores.top(ns.meta["language"], ns.count()) == ns  # q = 1: the rule is the top of the ranking


# ---- registry and CLI -----------------------------------------------------------------------------


def test_registry_takes_a_new_method(shared_tiny):
    assert detection_methods()[:3] == ["plnd", "lape", "ap"]
    with pytest.raises(ValueError, match="unknown detection method 'nope'; methods: plnd, lape, ap"):
        get_detection_method("nope")

    @register_detection_method
    class Constant(DetectionMethod):
        name = "constant_test"
        config_class = LapeConfig

        def scores(self, model, tokenizer, corpora, config, *, progress=True):
            fp = mwork.get_adapter(model).fingerprint()
            s = {lang: {"ffn": torch.arange(fp["num_layers"] * 96, dtype=torch.float64).view(-1, 96)} for lang in corpora}
            e = {lang: {"ffn": torch.ones(fp["num_layers"], 96, dtype=torch.bool)} for lang in corpora}
            return LanguageScores(self.name, tuple(corpora), fp, s, e, "index")

    model, tok = shared_tiny("tiny-random-llama")
    scores = language_scores(model, tok, {"en": ["a b"], "fr": ["c d"]}, "constant_test", progress=False)
    assert scores.top("fr", 2).indices("ffn", 2).tolist() == [94, 95]
    with pytest.raises(ValueError, match="registered already"):
        @register_detection_method
        class Again(Constant):
            name = "constant_test"


def test_cli_detect_method_writes_one_set_per_language(tmp_path, capsys, shared_tiny):
    files = {}
    for lang, docs in CORPORA.items():
        files[lang] = tmp_path / f"{lang}.txt"
        files[lang].write_text("\n".join(docs) + "\n", encoding="utf-8")
    out = tmp_path / "lape"
    args = ["detect", "--method", "lape", "--model", "tiny-random-llama", "--out-dir", str(out), "--quiet",
            "--lape-top-rate", "0.05", "--max-length", "8"] + [a for lang, f in files.items()
                                                               for a in ("--corpus", f"{lang}={f}")]
    assert cli_main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["en", "fr", "zh"]
    model, tok = shared_tiny("tiny-random-llama")
    api = detect_languages(model, tok, {lang: str(f) for lang, f in files.items()}, "lape",
                           LapeConfig(top_rate=0.05, max_length=8), progress=False)
    for lang in CORPORA:
        ns = NeuronSet.load(out / f"{lang}.safetensors", model)
        assert ns.meta["method"] == "lape" and ns == api[lang]
        assert json.loads((out / f"{lang}.json").read_text())["method"] == "lape"
        assert ns.meta["corpus"]["sha256"] == api[lang].meta["corpus"]["sha256"]
    # the job: the same files from the API, the model given
    from mwork.neurons.detect_job import DetectJob

    job = DetectJob(method="lape", model="tiny-random-llama", out_dir=str(tmp_path / "job"), progress=False,
                    corpus=tuple(f"{lang}={f}" for lang, f in files.items()),
                    settings=LapeConfig(top_rate=0.05, max_length=8))
    result = job.run(model, tok)
    assert result.write() == {lang: tmp_path / "job" / f"{lang}.safetensors" for lang in CORPORA}
    for lang in CORPORA:
        for suffix in (".safetensors", ".json"):
            assert (tmp_path / "job" / f"{lang}{suffix}").read_bytes() == (out / f"{lang}{suffix}").read_bytes()
    assert [line.split(" -> ")[0] for line in result.lines()[:3]] == [line.split(" -> ")[0] for line in lines[:3]]
    with pytest.raises(ValueError, match="--kinds does not apply to --method lape"):
        DetectJob(method="lape", corpus=job.corpus, out_dir=job.out_dir, settings={"kinds": ("ffn",)}).check()
    with pytest.raises(ValueError, match="at least 2 languages"):
        DetectJob(method="lape", corpus=job.corpus[:1], out_dir=job.out_dir).check()
    with pytest.raises(TypeError, match="detect_languages\\(\\) takes no resume"):
        detect_languages(model, tok, {lang: str(f) for lang, f in files.items()}, "lape", resume=False)
    ap_out = tmp_path / "ap"
    assert cli_main(["detect", "--method", "ap", "--model", "tiny-random-llama", "--out-dir", str(ap_out), "--quiet",
                     "--ap-top", "3", "--ap-bottom", "2", "--kinds", "ffn,q", "--corpus", f"en={files['en']}",
                     "--corpus", f"fr={files['fr']}"]) == 0
    ns = NeuronSet.load(ap_out / "fr.safetensors")
    assert ns.meta["method"] == "ap" and ns.count() == 5 and ns.count("v") == 0
    capsys.readouterr()
    base = ["detect", "--model", "tiny-random-llama", "--quiet"]
    for extra, message in (
        (["--method", "lape", "--corpus", f"en={files['en']}", "--out-dir", str(out), "--kinds", "ffn"],
         "--kinds does not apply to --method lape"),
        (["--method", "ap", "--corpus", f"en={files['en']}", "--out-dir", str(out), "--top-k", "3"],
         "--top-k does not apply to --method ap"),
        (["--lang", "fr", "--corpus", str(files["fr"]), "--out", str(tmp_path / "p"), "--lape-top-rate", "0.1"],
         "--lape-top-rate does not apply to --method plnd"),
        (["--method", "lape", "--corpus", str(files["en"]), "--out-dir", str(out)], "expected LANG=FILE"),
        (["--method", "lape", "--corpus", f"en={files['en']}", "--out", str(out)], "one set per language"),
        (["--lang", "fr", "--corpus", str(files["fr"])], "needs --out"),
        (["--corpus", str(files["fr"]), "--out", str(tmp_path / "p")], "needs --lang"),
    ):
        assert cli_main(base + extra) == 2, extra
        assert message in capsys.readouterr().err
    assert not (tmp_path / "p.safetensors").exists()
