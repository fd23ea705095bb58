"""NeuronSets to and from the formats the field already shares; nothing is unpickled, nothing
is evaluated.

* **LAPE** (Tang et al. 2024, RUCAIBox/Language-Specific-Neurons): a ``torch.save``-d
  ``List[List[LongTensor]]``, ``x[i][j]`` the FFN neuron indices of language i in layer j (their
  released ``*.neuron.pth`` files and ``identify.py``'s output). Read with
  ``torch.load(weights_only=True)`` only. LAPE holds FFN neurons only: exporting a set with
  attention neurons is refused unless ``ffn_only`` drops them (recorded in the side file). The
  export is deterministic (sorted indices, int64, serialised through an in-memory buffer), so
  import -> export gives the same bytes again; ``X.pth.json`` beside it records the languages
  and the model's shape, and is checked when the file is imported.
* **Reference dictionaries** (the PLND paper's release, DAMO-NLP-SG/multilingual_analysis:
  ``neuron_detection.py`` writes them, the deactivation and enhancement scripts read them with
  ``eval``): a text file of five lines, each ``str()`` of ``{layer: {neuron, ...}}``, for FFN
  "up", FFN "down", Q, K and V. We parse them with a literal-only reader (dicts, sets, lists,
  ints, ``set()``, ``np.int64(n)``), never ``eval``. Their FFN "up" and "down" sets are the same
  neurons (one FFN unit: the union is taken, and their difference reported). Their K and V indices
  are in the *query-head* space (query head h, dimension d: h * head_dim + d, the reference's
  scores being computed per query head); mwork's K/V channel is (h // group) * head_dim + d, so
  a K/V channel is imported when any of its query heads' indices is listed, and exported as all
  of them. (The reference code maps them with ``// 4``, which is wrong under GQA.)

Both readers check the file against the model: its number of layers, every index against the
layer's size, and the recorded shape in the side file when there is one (``.json``).
"""

from __future__ import annotations

import ast
import io
import json
import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from mwork.fingerprints import file_digest
from mwork.models.adapters import get_adapter
from mwork.neurons.neuronset import NeuronSet, as_neuron_set

LAPE_FORMAT = "LAPE neuron indices: List[List[LongTensor]], language x layer, FFN neurons (torch.save)"
REFERENCE_FORMAT = ("PLND reference dictionaries: five lines of {layer: {neuron, ...}} for FFN up, FFN down, Q, K, V; "
                    "K and V in the query-head index space")
REFERENCE_LINES = ("ffn_up", "ffn_down", "q", "k", "v")
LAPE_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8)


def side_file(path: str | Path) -> Path:
    """Where the shape and languages of an exported file are recorded: ``<path>.json``."""
    p = Path(path)
    return p.with_name(p.name + ".json")


def _write_atomically(path: Path, data: bytes) -> None:
    from mwork.files import write_bytes

    write_bytes(path, data)


def _same_model(sets: Sequence[NeuronSet]) -> dict[str, Any]:
    fps = [ns.fingerprint for ns in sets]
    if any(fp is None for fp in fps):
        raise ValueError("every NeuronSet must record the model's shape (its 'fingerprint'); sets written by mwork do")
    keys = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "neurons_per_layer")
    for fp in fps[1:]:
        if any(fp.get(k) != fps[0].get(k) for k in keys):
            raise ValueError("the NeuronSets were made for models of different shapes; export sets of one model")
    return dict(fps[0])


def _label(ns: NeuronSet, i: int) -> str:
    return str(ns.meta.get("language") or ns.meta.get("name") or f"set{i}")


def _check_fingerprint(recorded: Mapping[str, Any], model: torch.nn.Module, path: Path) -> None:
    mine = get_adapter(model).fingerprint()
    keys = ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "neurons_per_layer")
    diff = [f"{k}: file {recorded.get(k)} vs model {mine.get(k)}" for k in keys if recorded.get(k) != mine.get(k)]
    if diff:
        raise ValueError(f"{path} was exported for a model of another shape ({'; '.join(diff)}); load it into "
                         "that model")


def _base_meta(model: torch.nn.Module, lang: str, path: Path, fmt: str, model_id: str | None) -> dict[str, Any]:
    return {"fingerprint": get_adapter(model).fingerprint(), "language": lang, "name": lang,
            "model_id": model_id or getattr(model.config, "_name_or_path", None) or "unknown",
            "imported_from": {"format": fmt, "path": str(path.resolve()), "sha256": file_digest(path)}}


# ---- LAPE -----------------------------------------------------------------------------------------


def lape_bytes(sets: Sequence[NeuronSet]) -> bytes:
    """The LAPE file of ``sets`` (FFN neurons only), deterministically serialised."""
    data = [[ns.indices("ffn", layer).to(torch.int64).contiguous() for layer in range(ns.num_layers)] for ns in sets]
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def export_lape(sets: Sequence[NeuronSet | str | Path], out: str | Path, *, ffn_only: bool = False) -> Path:
    """Write ``sets`` (one per language, in order) as a LAPE neuron file ``out`` and its side file.
    Refused before anything is read: an ``out`` (or side file) that would replace one of ``sets``,
    a file of another kind or a NeuronSet's ``.json`` (``mwork.files.check_output_file``)."""
    from mwork.files import check_output_file

    check_output_file(out, "torch", inputs=sets, also={side_file(out): "json"}, what="LAPE neuron file")
    loaded = [as_neuron_set(s) for s in sets]
    if not loaded:
        raise ValueError("give at least one NeuronSet to export")
    fp = _same_model(loaded)
    langs = [_label(ns, i) for i, ns in enumerate(loaded)]
    repeated = sorted({lang for lang in langs if langs.count(lang) > 1})
    if repeated:  # import names each language once: such a file could not be read back
        shown = "; ".join(f"{lang}: " + ", ".join(str(sets[i]) if isinstance(sets[i], (str, Path)) else f"set {i + 1}"
                                                  for i, x in enumerate(langs) if x == lang) for lang in repeated)
        raise ValueError(f"more than one set of the same language ({shown}): a LAPE file holds one entry per "
                         "language and could not be imported again; export each language once")
    attention = {lang: {k: ns.count(k) for k in ns.kinds if k != "ffn" and ns.count(k)}
                 for lang, ns in zip(langs, loaded)}
    attention = {lang: c for lang, c in attention.items() if c}
    if attention and not ffn_only:
        shown = "; ".join(f"{lang}: " + ", ".join(f"{k}={n}" for k, n in c.items()) for lang, c in attention.items())
        raise ValueError(f"LAPE files hold FFN neurons only, and these sets have attention neurons ({shown}); "
                         "pass ffn_only=True (--ffn-only) to export their FFN neurons alone")
    out = Path(out)
    _write_atomically(out, lape_bytes(loaded))
    record = {"format": LAPE_FORMAT, "languages": langs, "fingerprint": fp,
              "model_id": loaded[0].meta.get("model_id"), "counts": [ns.count("ffn") for ns in loaded],
              "dropped_attention_neurons": attention}
    _write_atomically(side_file(out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return out


def load_lape_file(path: str | Path) -> list[list[torch.Tensor]]:
    """The raw ``List[List[LongTensor]]`` of a LAPE file (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LAPE neuron file at {path}")
    try:
        data = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a LAPE neuron file mwork can read safely (torch.load with "
                         f"weights_only=True refused it: {reason[:200]})") from None
    if not isinstance(data, (list, tuple)) or not all(isinstance(x, (list, tuple)) for x in data):
        raise ValueError(f"{path} is not a LAPE neuron file: expected a list (languages) of lists (layers) of "
                         f"LongTensors, got {type(data).__name__}")
    for i, per_layer in enumerate(data):
        for j, t in enumerate(per_layer):
            where = f"{path}: language {i}, layer {j}"
            if not isinstance(t, torch.Tensor) or t.dim() != 1:
                raise ValueError(f"{where} is not a 1-D integer tensor of neuron indices")
            if t.dtype not in LAPE_INDEX_DTYPES:
                what = {torch.bool: " (a mask, not indices)", torch.uint8: " (a mask, not indices?)"}.get(t.dtype, "")
                raise ValueError(f"{where} holds {str(t.dtype).removeprefix('torch.')} values{what}; LAPE neuron "
                                 "indices are integers (int64, as torch.nonzero gives them)")
    return [list(x) for x in data]


def import_lape(path: str | Path, model: torch.nn.Module, langs: Sequence[str], *,
                model_id: str | None = None) -> dict[str, NeuronSet]:
    """The NeuronSets of a LAPE file for ``model``, one per language of ``langs`` (the file's
    order). Refused with a sentence: a file for a model of another shape (layers, FFN width, the
    side file's record), a number of languages that is not ``len(langs)``."""
    path = Path(path)
    data = load_lape_file(path)
    langs = list(langs)
    if len(set(langs)) != len(langs):
        raise ValueError(f"the languages {','.join(langs)} repeat a language: give each once")
    if len(data) != len(langs):
        raise ValueError(f"{path} holds the neurons of {len(data)} languages, but {len(langs)} languages were named "
                         f"({','.join(langs)}); name them all, in the file's order")
    adapter = get_adapter(model)
    side = side_file(path)
    if side.exists():
        record = json.loads(side.read_text(encoding="utf-8"))
        _check_fingerprint(record.get("fingerprint") or {}, model, path)
        if record.get("languages") and list(record["languages"]) != langs:
            raise ValueError(f"{path} was exported with the languages {','.join(record['languages'])} (in that "
                             f"order), not {','.join(langs)}; name them as recorded in {side.name}")
    width, layers = adapter.ffn_size, adapter.num_layers
    out = {}
    for i, (lang, per_layer) in enumerate(zip(langs, data)):
        if len(per_layer) != layers:
            raise ValueError(f"{path} was made for a model with {len(per_layer)} layers; this model has {layers}")
        meta = _base_meta(model, lang, path, "lape", model_id)
        meta["imported_from"]["index"] = i
        meta.update(method="lape", rule=f"imported from a LAPE neuron file (language {i} of {len(langs)})")
        ns = NeuronSet.empty_for(model, meta)
        reordered = False
        for layer, t in enumerate(per_layer):
            idx = t.to(torch.int64)
            if idx.numel() and int(idx.min()) < 0:
                raise ValueError(f"{path}: language {i} ({lang}), layer {layer} lists FFN neuron {int(idx.min())}: "
                                 "neuron indices are 0 or more")
            if idx.numel() and int(idx.max()) >= width:
                raise ValueError(f"{path}: language {i} ({lang}), layer {layer} lists FFN neuron {int(idx.max())}, "
                                 f"but this model's FFN layers have {width} neurons (0..{width - 1}): it was made "
                                 "for another model")
            values, counts = torch.unique(idx, return_counts=True)
            if bool((counts > 1).any()):
                twice = values[counts > 1].tolist()
                raise ValueError(f"{path}: language {i} ({lang}), layer {layer} lists FFN neuron"
                                 f"{'s' if len(twice) > 1 else ''} {', '.join(map(str, twice[:10]))} more than once: "
                                 "a LAPE file lists each neuron once")
            ns.masks["ffn"][layer, idx] = True
            reordered |= not torch.equal(idx, ns.indices("ffn", layer))
        if reordered:
            ns.meta["imported_from"]["note"] = "indices were not sorted in the file; kept as a set"
        out[lang] = ns
    return out


# ---- reference dictionaries -------------------------------------------------------------------------

_INT_CALLS = {"int", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "intc", "intp"}


def _literal(node: ast.AST, where: str) -> Any:
    """A dict / set / list / tuple / int literal, without evaluating anything."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError(f"{where}: '**' in a dictionary is not a neuron dictionary")
        keys = [_literal(k, where) for k in node.keys]
        twice = [k for i, k in enumerate(keys) if k in keys[:i] and isinstance(k, int)]
        if twice:
            raise ValueError(f"{where} lists layer {twice[0]} more than once")
        return {k: _literal(v, where) for k, v in zip(keys, node.values)}
    if isinstance(node, (ast.Set, ast.List, ast.Tuple)):
        return [_literal(e, where) for e in node.elts]
    if isinstance(node, ast.Call) and not node.keywords:
        name = node.func.id if isinstance(node.func, ast.Name) else \
            node.func.attr if isinstance(node.func, ast.Attribute) else None
        if name == "set" and not node.args:
            return []
        if name in _INT_CALLS and len(node.args) == 1:
            value = _literal(node.args[0], where)
            if isinstance(value, int):
                return value
    raise ValueError(f"{where} is not a neuron dictionary ({{layer: {{neuron, ...}}}}): it contains "
                     f"{type(node).__name__}, and mwork reads such files without evaluating code")


def parse_reference_line(text: str, where: str) -> dict[int, list[int]]:
    """One line of a reference dictionary file -> ``{layer: [neuron, ...]}``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"{where} is not a neuron dictionary (not a Python literal)") from None
    value = _literal(tree.body, where)
    if not isinstance(value, dict) or not all(isinstance(k, int) for k in value) or \
            not all(isinstance(v, list) and all(isinstance(x, int) for x in v) for v in value.values()):
        raise ValueError(f"{where} is not a neuron dictionary: expected {{layer: {{neuron, ...}}}} with integers")
    return value


def _query_to_kv(index: torch.Tensor, head_dim: int, group: int) -> torch.Tensor:
    return (index // head_dim) // group * head_dim + index % head_dim


def _kv_to_query(index: torch.Tensor, head_dim: int, group: int) -> torch.Tensor:
    head, dim = index // head_dim, index % head_dim
    heads = (head[:, None] * group + torch.arange(group)[None]).flatten()
    return torch.sort(heads * head_dim + dim.repeat_interleave(group)).values


def reference_text(ns: NeuronSet) -> str:
    """The reference dictionary file of ``ns`` (sorted; K/V expanded to the query-head space)."""
    fp = ns.fingerprint
    if fp is None:
        raise ValueError("the NeuronSet does not record the model's shape (its 'fingerprint')")
    head_dim, group = fp["head_dim"], fp["num_heads"] // fp["num_kv_heads"]
    lines = []
    for name in REFERENCE_LINES:
        kind = "ffn" if name.startswith("ffn") else name
        parts = []
        for layer in range(fp["num_layers"]):
            idx = ns.indices(kind, layer)
            if kind in ("k", "v"):
                idx = _kv_to_query(idx, head_dim, group)
            values = ", ".join(str(int(i)) for i in idx)
            parts.append(f"{layer}: {{{values}}}" if values else f"{layer}: set()")
        lines.append("{" + ", ".join(parts) + "}")
    return "\n".join(lines) + "\n"


def export_reference(neurons: NeuronSet | str | Path, out: str | Path) -> Path:
    """Write one language's set as a reference dictionary file ``out`` (and its side file); the
    same refusals as :func:`export_lape`."""
    from mwork.files import check_output_file

    check_output_file(out, ("text", "json"), inputs=[neurons], also={side_file(out): "json"}, what="reference neuron file")
    ns = as_neuron_set(neurons)
    out = Path(out)
    _write_atomically(out, reference_text(ns).encode("utf-8"))
    record = {"format": REFERENCE_FORMAT, "languages": [_label(ns, 0)], "fingerprint": ns.fingerprint,
              "model_id": ns.meta.get("model_id"), "counts": ns.counts()}
    _write_atomically(side_file(out), (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
    return out


def import_reference(path: str | Path, model: torch.nn.Module, lang: str, *,
                     model_id: str | None = None) -> NeuronSet:
    """A reference dictionary file as a NeuronSet of ``model`` (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reference neuron file at {path}")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != len(REFERENCE_LINES):
        raise ValueError(f"{path} has {len(lines)} non-empty lines; a reference neuron file has "
                         f"{len(REFERENCE_LINES)} ({', '.join(REFERENCE_LINES)})")
    adapter = get_adapter(model)
    side = side_file(path)
    if side.exists():
        _check_fingerprint(json.loads(side.read_text(encoding="utf-8")).get("fingerprint") or {}, model, path)
    counts = adapter.neuron_counts()
    head_dim, group = adapter.head_dim, adapter.kv_group_size
    query_space = adapter.num_heads * head_dim
    width = {"ffn_up": counts["ffn"], "ffn_down": counts["ffn"], "q": counts["q"], "k": query_space,
             "v": query_space}
    meta = _base_meta(model, lang, path, "reference", model_id)
    meta.update(method="plnd", rule="imported from a PLND reference dictionary file")
    ns = NeuronSet.empty_for(model, meta)
    ffn_lines: dict[str, torch.Tensor] = {}
    for n, (name, line) in enumerate(zip(REFERENCE_LINES, lines), start=1):
        value = parse_reference_line(line, f"{path}, line {n} ({name})")
        mask = torch.zeros(adapter.num_layers, counts["ffn" if name.startswith("ffn") else name], dtype=torch.bool)
        for layer, neurons in value.items():
            if not 0 <= layer < adapter.num_layers:
                raise ValueError(f"{path}, line {n} ({name}) has layer {layer}; this model has layers "
                                 f"0..{adapter.num_layers - 1}: the file was made for another model")
            twice = sorted({x for x in neurons if neurons.count(x) > 1})
            if twice:
                raise ValueError(f"{path}, line {n} ({name}), layer {layer} lists neuron"
                                 f"{'s' if len(twice) > 1 else ''} {', '.join(map(str, twice[:10]))} more than once")
            idx = torch.tensor(sorted(neurons), dtype=torch.int64)
            if idx.numel() and int(idx[0]) < 0:
                raise ValueError(f"{path}, line {n} ({name}), layer {layer} lists neuron {int(idx[0])}: neuron "
                                 "indices are 0 or more")
            if idx.numel() and int(idx[-1]) >= width[name]:
                raise ValueError(f"{path}, line {n} ({name}), layer {layer} lists neuron {int(idx[-1])}, beyond this "
                                 f"model's {width[name]} (0..{width[name] - 1}): the file was made for another model")
            if name in ("k", "v"):
                idx = _query_to_kv(idx, head_dim, group)
            mask[layer, idx] = True
        if name.startswith("ffn"):
            ffn_lines[name] = mask
        else:
            ns.masks[name] = mask
    ns.masks["ffn"] = ffn_lines["ffn_up"] | ffn_lines["ffn_down"]
    differ = int((ffn_lines["ffn_up"] ^ ffn_lines["ffn_down"]).sum())
    ns.meta["imported_from"]["ffn_up_down"] = ("identical" if not differ else
                                               f"{differ} neurons in one of the up/down lines only; their union kept")
    return ns


FORMATS = ("lape", "reference")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats: lape, reference")


def export_files(fmt: str, inputs: Sequence[str | Path], out: str | Path | None, *,
                 ffn_only: bool = False) -> list[Path]:
    """What ``mwork convert --to FMT`` does: the NeuronSets ``inputs`` written to ``out`` in format
    ``fmt`` (``ffn_only``: LAPE only, drop attention neurons); the written paths."""
    _check_format(fmt)
    if out is None:
        raise ValueError("exporting needs --out FILE")
    if fmt == "lape":
        return [export_lape(list(inputs), out, ffn_only=ffn_only)]
    if len(inputs) != 1:
        raise ValueError("a reference dictionary file holds one language: export one NeuronSet per file")
    return [export_reference(inputs[0], out)]


def import_files(fmt: str, inputs: Sequence[str | Path], model: torch.nn.Module | None, langs: Sequence[str],
                 out_dir: str | Path | None, *, model_id: str | None = None) -> list[Path]:
    """What ``mwork convert --from FMT`` does: the files ``inputs`` of format ``fmt``, checked
    against ``model`` (``model_id`` recorded), written to ``out_dir/<lang>.safetensors`` for each
    language of ``langs`` (in the files' order); the written paths."""
    _check_format(fmt)
    if model is None or out_dir is None or not langs:
        raise ValueError("importing needs --model M, --langs LANG[,LANG...] and --out-dir DIR")
    from mwork.files import child_path, parse_names

    langs = parse_names(langs, flag="--langs")  # each names a file LANG.safetensors in out_dir
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output folder {out_dir} is a file; choose another (--out-dir)")
    if fmt == "lape":
        if len(inputs) != 1:
            raise ValueError("import one LAPE file at a time (it holds every language)")
        sets = import_lape(inputs[0], model, langs, model_id=model_id)
    else:
        if len(inputs) != len(langs):
            raise ValueError(f"give one language per reference file: {len(inputs)} files, {len(langs)} languages")
        sets = {lang: import_reference(p, model, lang, model_id=model_id) for p, lang in zip(inputs, langs)}
    return [ns.save(child_path(out_dir, lang, ".safetensors")) for lang, ns in sets.items()]
