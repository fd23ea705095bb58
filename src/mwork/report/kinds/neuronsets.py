"""Results kind ``neuron-sets``: a folder of NeuronSet files (``mwork detect --out``, ``mwork
specific --out-dir``) without the statistics of ``mwork stats``: one row per set."""

from __future__ import annotations

import mwork.report.html as H
from mwork.report.format import count, pct
from mwork.report.registry import FolderView, ResultsKind, register_results_kind
from mwork.report.section import Section

NOT_SETS = frozenset({"delta", "checkpoint", "lens_topk", "dictionary"})  # dictionary: mwork sae train / load


def _stems(folder: FolderView) -> list[str]:
    return [n[:-len(".safetensors")] for n in folder.with_suffix(".safetensors")
            if n[:-len(".safetensors")] not in NOT_SETS and f"{n[:-len('.safetensors')]}.json" in folder.names]


def _recognise(folder: FolderView) -> bool:
    return bool(_stems(folder))


def render_sets(sec: Section) -> None:
    rows, kinds = [], []
    metas = {}
    for stem in _stems(sec.view):
        meta = sec.json(f"{stem}.json", required=("counts",))
        if isinstance(meta, dict) and isinstance(meta.get("counts"), dict):
            metas[stem] = meta
            kinds += [k for k in meta["counts"] if k not in kinds]
    for stem, meta in metas.items():
        per_kind = {k: sum(v) for k, v in meta["counts"].items()}
        rows.append([stem, str(meta.get("language", "")), *(H.Cell(count(per_kind.get(k)), num=True) for k in kinds),
                     H.Cell(count(meta.get("count")), num=True), H.Cell(pct(meta.get("fraction")), num=True),
                     H.Cell(str(meta.get("n_docs", "–")), num=True)])
    if rows:
        sec.table(["set", "language", *(H.Cell(k.upper(), num=True) for k in kinds), H.Cell("all", num=True),
                   H.Cell("share of all neurons", num=True), H.Cell("documents", num=True)], rows,
                  caption="Neuron sets in this folder (counts per kind)")


# asked after the experiments' kinds: their folders may hold a NeuronSet too (`mwork steer` keeps the
# set with the statistics it measured as neurons.safetensors + neurons.json) and are theirs
register_results_kind(ResultsKind("neuron-sets", "Neuron sets", _recognise, render_sets, order=70))
