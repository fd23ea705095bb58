"""Content fingerprints: what every cache and checkpoint of mwork is keyed by (never a path).

A cached result is reused only when what it was computed from is the same: the model's
weights, the NeuronSets, the texts and the settings. Each has one digest here:

* :func:`model_digest`: the configuration and every byte of every weight (name, shape, dtype,
  values), so any retrained, merged or differently converted weight changes it. It costs about
  a second per GB of weights, once: the digest is kept on the model until a weight changes.
* :func:`neurons_digest`: the masks of a NeuronSet (and its kinds), not its file name.
* :func:`texts_digest`: documents in order (:class:`TextHasher`).
* :func:`file_digest`: the bytes of a file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import torch


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's configuration and weights; cached on the model until a weight changes
    (a new tensor or an in-place update, as when a delta is merged)."""
    params = list(model.named_parameters())
    state = tuple((p.data_ptr(), p._version) for _, p in params)
    cached = getattr(model, "_mwork_digest", None)
    if cached is not None and cached[0] == state:
        return cached[1]
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    config_dict = {k: v for k, v in config_dict.items() if k not in ("_name_or_path", "transformers_version")}
    h.update(json.dumps(config_dict, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in params:
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}".encode())
            if p.device.type == "meta":
                continue  # offloaded to disk by accelerate: shape and dtype only
            h.update(p.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data)
    digest = h.hexdigest()
    object.__setattr__(model, "_mwork_digest", (state, digest))
    return digest


def neurons_digest(neurons: Any) -> str:
    """sha256 of a NeuronSet's masks, kind by kind (what is switched off, not how it is named)."""
    h = hashlib.sha256()
    for kind in sorted(neurons.masks):
        m = neurons.masks[kind]
        h.update(f"{kind}|{tuple(m.shape)}".encode())
        h.update(m.to(torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()


def texts_digest(texts: Iterable[str]) -> str:
    return fingerprint_texts(texts)


class TextHasher:
    """sha256 of documents in order, each as its UTF-8 length (8 bytes, little endian) then
    its bytes, so that no two different document lists share a fingerprint."""

    RULE = ("sha256 over the documents in order, each as its UTF-8 length (8 bytes, little endian) then its "
            "UTF-8 bytes")

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, doc: str) -> None:
        data = doc.encode("utf-8")
        self._h.update(len(data).to_bytes(8, "little"))
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def fingerprint_texts(docs: Iterable[str]) -> str:
    """The content fingerprint of a list of documents (:class:`TextHasher`)."""
    h = TextHasher()
    for d in docs:
        h.update(d)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
