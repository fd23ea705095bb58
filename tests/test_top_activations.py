"""The corpus pass's ``top_activations``: each unit's largest values and where they happened, for
neurons and for dictionary features, against brute force (every window run alone, every counted
value captured with its document and position, sorted by hand: larger value, then earlier
document, then earlier position). Documents span several windows, batches mix documents, the
special tokens of each window are run but never listed, and forced ties go to the earliest token
whatever the batch order."""

from __future__ import annotations

import pytest
import torch

import mwork
from mwork.corpus_pass import PassOptions, Request, corpus_pass, unit_request
from mwork.corpus_statistics import TopActivations, TopValues
from mwork.neurons.windows import Windowing
from mwork.units import Codebook, Dictionary
from tests.test_corpus_pass import bos_tokenizer

DOCS = ["Le renard brun saute par-dessus le chien paresseux. Les modèles de langue lisent le français.", "",
        "Les chats dorment au soleil.", "x", "Der schnelle braune Fuchs springt über den faulen Hund. " * 2]
MAX_LENGTH, N = 8, 5


def captured(model, tok, site, read=None):
    """Every counted token of ``DOCS`` under the windows rule: (values (tokens, units), document,
    position in the document), each window run alone."""
    win = Windowing.for_tokenizer(tok, MAX_LENGTH, False)
    step = MAX_LENGTH - len(win.prefix) - len(win.suffix)
    rows, docs, positions = [], [], []
    for i, text in enumerate(DOCS):
        ids = tok(text, add_special_tokens=False)["input_ids"] if text.strip() else []
        for w in win.split(i, ids):
            with mwork.capture(model, site) as cap, torch.no_grad():
                model(input_ids=torch.tensor([w.ids]), use_cache=False)
            start, stop = len(win.prefix), len(w.ids) - len(win.suffix)
            values = {layer: cap[site, layer][0, start:stop].to(torch.float64) for (_, layer) in cap._values}
            rows.append(values)
            docs += [i] * (stop - start)
            positions += [w.part * step + j for j in range(stop - start)]
    layers = rows[0].keys()
    table = {layer: torch.cat([r[layer] for r in rows]) for layer in layers}
    if read is not None:
        table = {layer: read[layer](x) if isinstance(read, dict) else read(x) for layer, x in table.items()}
    return table, docs, positions


def by_hand(values: torch.Tensor, docs, positions, n, above=None):
    """Per unit, the n largest (value, document, position), sorted by hand. Values are compared
    to 12 decimals: a window that starts with the same token as another document gives that token
    the same value, bit for bit in a batch and to 1e-17 when each window runs alone."""
    out = []
    for j in range(values.shape[1]):
        entries = [(float(v), d, p) for v, d, p in zip(values[:, j].tolist(), docs, positions)
                   if above is None or v > above]
        out.append(sorted(entries, key=lambda e: (-round(e[0], 12), e[1], e[2]))[:n])
    return out


def check(top: TopValues, want: list[list[tuple[float, int, int]]]) -> None:
    assert top.values.shape[1] == len(want)
    for j, entries in enumerate(want):
        got = top.unit(j)
        assert [(d, p) for _, d, p in got] == [(d, p) for _, d, p in entries], j
        torch.testing.assert_close(torch.tensor([v for v, _, _ in got], dtype=torch.float64),
                                   torch.tensor([v for v, _, _ in entries], dtype=torch.float64))
        assert top.values[len(entries):, j].isnan().all() and (top.doc[len(entries):, j] == -1).all()


@pytest.fixture(scope="module")
def llama(tiny_models):
    model, _ = tiny_models.shared("tiny-random-llama", torch.float64)
    return model, bos_tokenizer()  # a BOS in every window: run, never counted


def test_top_activations_of_neurons_equal_brute_force(llama):
    model, tok = llama
    coarse = {layer: (lambda x: (x * 4).round()) for layer in range(3)}  # many exact ties
    requests = [Request("top_activations", "ffn.in", options={"n": N}),
                Request("top_activations", "ffn.in", options={"n": N}, read=coarse, width=96, key="ties"),
                Request("top_activations", "ffn.act", options={"n": 3, "above": 0.0})]
    run = corpus_pass(model, tok, {"fr": DOCS}, requests, PassOptions(max_length=MAX_LENGTH, batch_size=3),
                      progress=False)
    raw, docs, positions = captured(model, tok, "ffn.in")
    act, _, _ = captured(model, tok, "ffn.act")
    assert len(set(docs)) == 4 and max(positions) >= 2 * MAX_LENGTH  # several windows per document
    for layer in range(3):
        check(run.value("top_activations@ffn.in", "fr", layer), by_hand(raw[layer], docs, positions, N))
        tied = coarse[layer](raw[layer])
        assert (tied == tied.max(0).values).sum(0).max() > N  # ties beyond the n kept: the rule decides
        check(run.value("ties", "fr", layer), by_hand(tied, docs, positions, N))
        check(run.value("top_activations@ffn.act", "fr", layer), by_hand(act[layer], docs, positions, 3, above=0.0))


def test_top_activations_of_dictionary_features_equal_brute_force(llama):
    model, tok = llama
    g = torch.Generator().manual_seed(3)
    book = Codebook(torch.randn(64, 10, generator=g) * 4, torch.randn(10, generator=g) * 0.1,
                    torch.randn(10, 64, generator=g) / 4, torch.zeros(64), "relu")
    units = Dictionary({0: book, 2: book}, site="layer.out").subset(torch.tensor([12, 3, 0, 19, 5]))
    run = corpus_pass(model, tok, {"fr": DOCS}, [unit_request(TopActivations, units, {"n": N, "above": 0.0})],
                      PassOptions(max_length=MAX_LENGTH, batch_size=2), progress=False)
    resid, docs, positions = captured(model, tok, "layer.out")
    key = next(iter(run.statistics))
    for layer in (0, 2):
        ids = units.features[units.positions(layer)]
        feats = book.encode(resid[layer])[:, ids].to(torch.float64)
        want = by_hand(feats, docs, positions, N, above=0.0)
        assert any(len(w) < N for w in want) or (feats > 0).any()  # the features fire on some tokens
        check(run.value(key, "fr", layer), want)


def test_bad_settings_are_refused():
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            TopActivations(n=n)


def test_positions_under_the_truncate_rule_count_from_the_first_token_after_the_bos(llama):
    model, tok = llama
    run = corpus_pass(model, tok, {"fr": DOCS}, [Request("top_activations", "ffn.in", [1], {"n": 3})],
                      PassOptions("truncate-sorted", max_length=MAX_LENGTH, batch_size=2), progress=False)
    values, docs, positions = [], [], []
    for i, text in enumerate(DOCS):
        ids = tok(text).input_ids[:MAX_LENGTH] if text.strip() else []
        if len(ids) < 2:
            continue
        with mwork.capture(model, "ffn.in", layers=[1]) as cap, torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False)
        values.append(cap["ffn.in", 1][0, 1:].to(torch.float64))  # the BOS run, never counted
        docs += [i] * (len(ids) - 1)
        positions += list(range(len(ids) - 1))
    check(run.value("top_activations@ffn.in", "fr", 1), by_hand(torch.cat(values), docs, positions, 3))
