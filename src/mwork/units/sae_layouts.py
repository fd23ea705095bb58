"""Readers of published dictionary layouts into a :class:`~mwork.units.dictionary.Dictionary`.

Nothing is unpickled: safetensors holds tensors only, a ``.npz`` is read with
``numpy.load(..., allow_pickle=False)`` (an archive holding Python objects is refused), and a
config is JSON. What a reader cannot reproduce exactly is refused with what to change, never
approximated.

* **SAELens** (``cfg.json`` + ``sae_weights.safetensors``): ``architecture`` ``standard`` (ReLU),
  ``topk`` (``k`` in the config, or ``activation_fn_kwargs``) or ``jumprelu`` (``threshold``, or
  ``log_threshold`` = log of it); keys ``W_enc`` (d, m), ``b_enc``, ``W_dec`` (m, d), ``b_dec``.
  ``apply_b_dec_to_input = false`` (the encoder reads ``x``, not ``x - b_dec``) is folded into
  ``b_enc`` exactly (``b_enc + b_dec W_enc``). The hook name (``hook_name``, top level or in
  ``metadata``) gives the site and layer (:data:`HOOK_SITES`); a transcoder's ``hook_name_out``
  the site it writes (``read_site``: the one it reads). The encoder reads ``x - b_dec`` unless the
  config says ``apply_b_dec_to_input: false``.
* **Gemma Scope** (``params.npz``, or ``params.safetensors`` as Gemma Scope 2 publishes it, with an
  optional ``config.json`` beside it): JumpReLU, keys ``W_enc``, ``b_enc``, ``threshold``,
  ``W_dec``, ``b_dec`` (any letter case); the encoder reads ``x`` (folded as above). The layer
  and site come from the path (``layer_6/...`` or ``layer_6_width_16k...``; ``resid_post`` /
  ``-res`` -> ``layer.out``, ``mlp_out`` / ``-mlp`` -> ``ffn.out``, ``att`` -> ``attn.out``),
  or are given.

:func:`read_dictionary` takes a local folder or file, or a hub id (``owner/repo`` or
``owner/repo/sub/folder``, downloaded through ``huggingface_hub`` unless the hub is offline).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from mwork.units.dictionary import Codebook, Dictionary

#: TransformerLens hook names (SAELens' ``hook_name``: ``blocks.L.NAME``) -> mwork's site names
HOOK_SITES: dict[str, str] = {
    "hook_resid_pre": "layer.in",
    "hook_resid_post": "layer.out",
    "hook_mlp_out": "ffn.out",
    "hook_attn_out": "attn.out",
    "attn.hook_z": "attn.ctx",
    "mlp.hook_post": "ffn.in",
}
#: Hugging Face module points (Gemma Scope 2's ``hf_hook_point_in`` / ``_out``:
#: ``model.layers.L.NAME``) -> mwork's site names
HF_POINT_SITES: dict[str, str] = {
    "input": "layer.in",
    "output": "layer.out",
    "mlp.output": "ffn.out",
    "mlp.down_proj.output": "ffn.out",
    "mlp.down_proj.input": "ffn.in",
    "self_attn.output": "attn.out",
    "self_attn.o_proj.output": "o.out",
    "self_attn.o_proj.input": "attn.ctx",
}
#: TransformerLens puts Gemma 2/3's hook_mlp_out and hook_attn_out after the block's post-norm,
#: a point no mwork site names (mwork's ffn.out / attn.out are before it)
_POST_NORM = ("hook_mlp_out", "hook_attn_out")
_POST_NORM_MODELS = re.compile(r"gemma[-_ ]?[23]", re.IGNORECASE)
_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_HF_POINT = re.compile(r"^(?:model\.(?:language_model\.)?)?layers\.(\d+)\.(.+)$")
ARCHITECTURES = ("standard", "relu", "topk", "jumprelu", "jump_relu")
NORMALIZE_NONE = (None, "none", "None")
FORMATS = ("saelens", "gemma-scope", "mwork")


def site_of_hook(hook: str, model_name: str | None = None) -> tuple[str, int]:
    """``blocks.6.hook_resid_post`` or ``model.layers.6.output`` -> ``("layer.out", 6)``; a point
    with no mwork site is refused (and Gemma 2/3's post-norm TransformerLens hooks, which
    ``model_name`` tells)."""
    text = str(hook)
    m = _HOOK.match(text)
    if m and m.group(2) in HOOK_SITES:
        if m.group(2) in _POST_NORM and model_name and _POST_NORM_MODELS.search(model_name):
            raise ValueError(f"dictionary hook {hook!r} of {model_name}: TransformerLens reads Gemma 2/3's "
                             f"{m.group(2)} after the post-norm, a point mwork's sites do not name (ffn.out and "
                             "attn.out are before it); residual-stream dictionaries (hook_resid_post) are readable")
        return HOOK_SITES[m.group(2)], int(m.group(1))
    m = _HF_POINT.match(text)
    if m and m.group(2) in HF_POINT_SITES:
        return HF_POINT_SITES[m.group(2)], int(m.group(1))
    known = ", ".join([f"blocks.L.{h}" for h in HOOK_SITES] + [f"model.layers.L.{h}" for h in HF_POINT_SITES])
    raise ValueError(f"dictionary hook {hook!r} has no mwork site; readable hooks: {known}")


def _fold_input_bias(W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """The ``b_enc`` of an encoder that reads ``x - b_dec`` and computes what one reading ``x`` does."""
    return (b_enc.double() + b_dec.double() @ W_enc.double()).to(b_enc.dtype)


def _shapes(tensors: Mapping[str, torch.Tensor], where: Path) -> tuple[int, int]:
    d, m = tensors["W_enc"].shape
    want = {"b_enc": (m,), "W_dec": (m, d), "b_dec": (d,), "threshold": (m,)}
    for name, shape in want.items():
        if name in tensors and tuple(tensors[name].shape) != shape:
            raise ValueError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, and W_enc {(d, m)} needs "
                             f"{shape}: the file is damaged or not a dictionary")
    return d, m


def _need(tensors: Mapping[str, torch.Tensor], names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)} (it has {', '.join(sorted(tensors)) or 'nothing'}): "
                         "not a dictionary of this layout")


def _threshold(t: torch.Tensor, where: Path) -> torch.Tensor:
    if bool((t < 0).any()):
        raise ValueError(f"{where}: a JumpReLU threshold below 0 is not supported (mwork's JumpReLU keeps a "
                         "pre-activation above its threshold, which must be >= 0)")
    return t.float()


# ---- SAELens ------------------------------------------------------------------------------------


def read_saelens(folder: str | Path, *, meta: Mapping[str, Any] | None = None) -> Dictionary:
    """The dictionary of a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    from mwork.files import read_json, read_safetensors

    root = Path(folder)
    for name in ("cfg.json", "sae_weights.safetensors"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"no {name} in {root}: a SAELens dictionary is a folder with cfg.json and "
                                    "sae_weights.safetensors")
    cfg = read_json(root / "cfg.json", "SAELens config", "download the dictionary again")
    if not isinstance(cfg, dict):
        raise ValueError(f"{root / 'cfg.json'} is not a JSON object")
    inner = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    arch = str(cfg.get("architecture") or ("topk" if cfg.get("activation_fn_str", cfg.get("activation_fn")) == "topk"
                                           else "standard"))
    if arch not in ARCHITECTURES:
        raise ValueError(f"{root}: SAELens architecture {arch!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    norm = cfg.get("normalize_activations")
    if norm not in NORMALIZE_NONE:
        raise ValueError(f"{root}: normalize_activations={norm!r} rescales the input by a factor the files do not "
                         "hold; only dictionaries trained on raw activations ('none') are supported")
    hook = cfg.get("hook_name") or inner.get("hook_name")
    if not hook:
        raise ValueError(f"{root / 'cfg.json'} names no hook_name: cannot tell the site and layer")
    model_name = cfg.get("model_name") or inner.get("model_name")
    for unsupported in ("hook_head_index", "rescale_acts_by_decoder_norm"):
        if cfg.get(unsupported) or inner.get(unsupported):
            raise ValueError(f"{root}: {unsupported} is not supported (mwork reads dictionaries of a whole site whose "
                             "features are the activations themselves)")
    read_site, read_layer = site_of_hook(hook, model_name)
    hook_out = cfg.get("hook_name_out") or inner.get("hook_name_out")
    site, layer = site_of_hook(hook_out, model_name) if hook_out else (read_site, read_layer)
    if layer != read_layer:
        raise ValueError(f"{root} reads layer {read_layer} and writes layer {layer}: cross-layer dictionaries are not "
                         "supported")
    tensors, _ = read_safetensors(root / "sae_weights.safetensors", "SAELens dictionary",
                                  "download the dictionary again")
    where = root / "sae_weights.safetensors"
    _need(tensors, ("W_enc", "b_enc", "W_dec", "b_dec"), where)
    if "W_skip" in tensors:
        raise ValueError(f"{where}: a skip transcoder (W_skip) is not supported: its skip path is not a feature")
    scale = tensors.get("scaling_factor")
    if scale is not None and not bool((scale == 1).all()):
        raise ValueError(f"{where}: a decoder scaling_factor other than 1 is not supported; fold it into W_dec first")
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors["log_threshold"].exp()
    d, m = _shapes(tensors, where)
    for key, size in (("d_in", d), ("d_sae", m)):
        if cfg.get(key) is not None and int(cfg[key]) != size:
            raise ValueError(f"{root}: cfg.json says {key}={cfg[key]} and the weights have {size}")
    b_enc = tensors["b_enc"].float()
    if cfg.get("apply_b_dec_to_input") is False:
        b_enc = _fold_input_bias(tensors["W_enc"].float(), b_enc, tensors["b_dec"].float())
    k, threshold, act = None, None, "relu"
    if arch == "topk":
        act = "topk"
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise ValueError(f"{root / 'cfg.json'}: a topk dictionary without k")
        k = int(k)
    elif arch in ("jumprelu", "jump_relu"):
        _need(tensors, ("threshold",), where)
        act, threshold = "jumprelu", _threshold(tensors["threshold"], where)
    book = Codebook(tensors["W_enc"].float(), b_enc, tensors["W_dec"].float(), tensors["b_dec"].float(),
                    activation=act, k=k, threshold=threshold)
    info = {"format": "saelens", "source": str(root), "hook_name": hook, "hook_name_out": hook_out,
            "architecture": arch, "model_name": model_name, **(meta or {})}
    return Dictionary({layer: book}, site=site, meta=info, read_site=read_site)


# ---- Gemma Scope ------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(f"{path} holds pickled Python objects, which mwork never loads: a Gemma Scope "
                             "params.npz holds plain arrays only") from None
        raise ValueError(f"{path} is not a readable .npz archive ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz archive ({err}): download it again") from None


def where_in_path(path: Path) -> tuple[str | None, int | None]:
    """The site and layer a Gemma Scope path names (``gemma-scope-2b-pt-res/layer_6/...``,
    ``resid_post/layer_6_width_16k_l0_small``); ``"transcoder"`` or ``"mlp"`` for those kinds."""
    text = "/".join(path.parts).lower()
    layer = re.findall(r"layer_(\d+)", text)
    site = None
    if "transcoder" in text:
        site = "transcoder"
    elif "resid_post" in text or re.search(r"-res(-|/|$)", text):
        site = "layer.out"
    elif re.search(r"-att(-|/|$)", text):
        site = "attn.ctx"  # Gemma Scope's attention dictionaries read the heads' outputs (hook_z)
    elif "mlp" in text:
        site = "mlp"
    return site, (int(layer[-1]) if layer else None)


def _gemma_scope_sites(p: Path, config: Mapping[str, Any], layer: int | None,
                       site: str | None) -> tuple[str, str | None, int]:
    """(write site, read site or None, layer) of a Gemma Scope dictionary: given, else from its
    config.json's ``hf_hook_point_in`` / ``_out``, else from its path."""
    named_site, named_layer = where_in_path(p.parent)
    point_in, point_out = config.get("hf_hook_point_in"), config.get("hf_hook_point_out")
    read_site = None
    if site is None and point_in:
        site_in, layer_in = site_of_hook(point_in)
        site_out, layer_out = site_of_hook(point_out) if point_out else (site_in, layer_in)
        if layer_in != layer_out:
            raise ValueError(f"{p} reads layer {layer_in} and writes layer {layer_out}: cross-layer dictionaries "
                             "are not supported")
        if named_layer is not None and named_layer != layer_in:
            raise ValueError(f"{p}: its config.json names layer {layer_in} and its folder layer {named_layer}; "
                             "the download is mixed up")
        site, read_site = site_out, (site_in if site_in != site_out else None)
        layer = layer_in if layer is None else layer
    if site is None:
        site = named_site
    if site == "transcoder":
        raise ValueError(f"{p} is a transcoder without a config.json naming its points: Gemma Scope transcoders "
                         "read the MLP input after the pre-FFN norm, a point mwork's sites do not name")
    if site == "mlp":
        raise ValueError(f"{p} is an MLP-output dictionary without a config.json naming its point: Gemma Scope's "
                         "read Gemma's MLP output after the post-FFN norm, a point mwork's sites do not name "
                         "(give --site ffn.out only if you know it reads the down projection's output)")
    layer = layer if layer is not None else named_layer
    if site is None or layer is None:
        raise ValueError(f"cannot tell the site and layer of {p} from its path: give them (mwork sae load ... "
                         "--site layer.out --layer N)")
    return site, read_site, int(layer)


def read_gemma_scope(path: str | Path, *, layer: int | None = None, site: str | None = None,
                     meta: Mapping[str, Any] | None = None) -> Dictionary:
    """A Gemma Scope JumpReLU dictionary (``params.npz``, or Gemma Scope 2's ``params.safetensors``
    with its ``config.json``; a file or its folder); ``layer`` and ``site`` when neither its
    config nor its path names them."""
    from mwork.files import read_json, read_safetensors

    p = Path(path)
    if p.is_dir():
        found = [p / n for n in ("params.safetensors", "params.npz") if (p / n).is_file()]
        if not found:
            raise FileNotFoundError(f"no params.npz or params.safetensors in {p}: not a Gemma Scope dictionary folder")
        p = found[0]
    if not p.is_file():
        raise FileNotFoundError(f"no Gemma Scope dictionary at {p}")
    if p.suffix == ".npz":
        raw = _read_npz(p)
    else:
        raw, _ = read_safetensors(p, "Gemma Scope dictionary", "download it again")
    by_lower = {k.lower(): v for k, v in raw.items()}
    tensors = {name: by_lower[name.lower()] for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
               if name.lower() in by_lower}
    _need(tensors, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), p)
    _shapes(tensors, p)
    config: Any = {}
    if (p.parent / "config.json").is_file():
        config = read_json(p.parent / "config.json", "Gemma Scope config", "download it again")
        config = config if isinstance(config, dict) else {}
    site, read_site, layer = _gemma_scope_sites(p, config, layer, site)
    W_enc, W_dec, b_dec = (tensors[n].float() for n in ("W_enc", "W_dec", "b_dec"))
    book = Codebook(W_enc, _fold_input_bias(W_enc, tensors["b_enc"].float(), b_dec), W_dec, b_dec,
                    activation="jumprelu", threshold=_threshold(tensors["threshold"], p))
    info = {"format": "gemma-scope", "source": str(p), "architecture": "jumprelu", "config": config, **(meta or {})}
    return Dictionary({layer: book}, site=site, meta=info, read_site=read_site)


# ---- any source -------------------------------------------------------------------------------


def layout_of(path: Path) -> str:
    """Which layout a local file or folder holds (:data:`FORMATS`), or a FileNotFoundError."""
    if path.is_dir():
        if (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
            return "saelens"
        if (path / "params.npz").is_file() or (path / "params.safetensors").is_file():
            return "gemma-scope"
        if (path / "dictionary.safetensors").is_file():
            return "mwork"
        raise FileNotFoundError(f"{path} holds no dictionary: expected cfg.json + sae_weights.safetensors (SAELens), "
                                "params.npz / params.safetensors (Gemma Scope) or dictionary.safetensors (mwork)")
    if path.name in ("params.npz", "params.safetensors") or path.suffix == ".npz":
        return "gemma-scope"
    if path.name in ("cfg.json", "sae_weights.safetensors"):
        return "saelens"
    if path.suffix in (".safetensors", ".json") and path.is_file():
        return "mwork"
    raise FileNotFoundError(f"no dictionary at {path}")


def _download(hub_id: str) -> Path:
    """The local copy of ``owner/repo[/sub/folder]`` from the hub (only that folder's files)."""
    from huggingface_hub import snapshot_download

    from mwork.hub import offline_env

    parts = hub_id.strip("/").split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    patterns = None if not sub else [f"{sub}/*"]
    try:
        root = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=offline_env()))
    except Exception as err:  # huggingface_hub's errors: offline, not found, no access
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FileNotFoundError(f"no local folder {hub_id}, and the Hugging Face hub did not give it ({reason}); "
                                "give a local folder, or a hub id owner/repo[/folder] while online") from None
    return root / sub if sub else root


def read_dictionary(source: str | Path, *, layer: int | None = None, site: str | None = None) -> Dictionary:
    """A dictionary from a local file or folder in any known layout, or a hub id; ``layer`` and
    ``site`` where a Gemma Scope path does not name them."""
    path = Path(source)
    if not path.exists():
        text = str(source)
        if text.count("/") >= 1 and not text.startswith((".", "/", "~")) and not Path(text.split("/")[0]).exists():
            path = _download(text)
        else:
            raise FileNotFoundError(f"no dictionary at {source} (a folder, a file or a hub id owner/repo[/folder])")
    layout = layout_of(path)
    meta = {"loaded_from": str(source)}
    if layout == "saelens":
        return read_saelens(path if path.is_dir() else path.parent, meta=meta)
    if layout == "gemma-scope":
        return read_gemma_scope(path, layer=layer, site=site, meta=meta)
    file = path / "dictionary.safetensors" if path.is_dir() else path
    return Dictionary.load(file)


def describe(units: Dictionary) -> str:
    """One line per layer: what was read."""
    lines = []
    for layer, book in sorted(units.books.items()):
        setting = f", k={book.k}" if book.k else ""
        reads = f" reading {units.read_site}" if units.read_site else ""
        lines.append(f"layer {layer}: {book.width} {book.activation} features{setting} at {units.site}{reads}, "
                     f"input width {int(book.W_enc.shape[0])}")
    facts = {k: units.meta[k] for k in ("hook_name", "architecture", "model_name") if units.meta.get(k)}
    if facts:
        lines.append(json.dumps(facts))
    return f"{units.meta.get('format', 'mwork')} dictionary ({units.count()} features)\n" + "\n".join(lines)
