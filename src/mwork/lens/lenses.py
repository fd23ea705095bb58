"""Three ways to decode a middle layer's hidden state into next-token logits, behind one interface.

A *lens layer* is what :mod:`mwork.lens.logit_lens` calls a layer: 0 is the input of decoder
layer 0 (the embedding output), ``i >= 1`` the output of decoder layer ``i - 1``; there are
``num_layers + 1``. Every lens maps (N, D) hidden states of one lens layer to (N, vocab) logits:

* :class:`LogitLens`: the final norm and the LM head (``Adapter.decode``), as the model decodes
  its last layer (nostalgebraist 2020; the final norm included, unlike the paper's code).
* :class:`~mwork.lens.tuned.TunedLens`: an affine translator per layer, trained so that the
  decoded distribution matches the final layer's (Belrose et al. 2023), then ``Adapter.decode``.
* :class:`PatchscopeLens`: the hidden state is patched, at the same lens layer, into an identity
  prompt (``cat -> cat; 1135 -> 1135; hello -> hello; ?``) at the placeholder's position, the
  model runs on, and the logits at the prompt's last position are the decoding (Ghandeharioun
  et al. 2024's token-identity patchscope, as nnterp's ``patchscope_lens``). With the placeholder
  last (the default) the patched and the read position are one, so the last lens layer
  reproduces the logit lens exactly. The patch goes through :mod:`mwork.hooks` (an edit of
  ``layer.in`` / ``layer.out``); it costs one forward pass of the identity prompt per lens layer
  and batch of hidden states.

``mwork.lens.make.make_lens(name, model, tokenizer, tuned_lens=DIR)`` builds one by name (:data:`LENSES`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mwork.hooks import Hooks
from mwork.models.adapters import Adapter, get_adapter
from mwork.models.loading import input_device

LENSES = ("logit", "tuned", "patchscope")
IDENTITY_PROMPT = "cat -> cat; 1135 -> 1135; hello -> hello; ?"
PLACEHOLDER = "?"


class Lens:
    """The interface: ``decode(layer, hidden) -> logits`` for (N, D) hidden states of one lens
    layer; ``settings()`` what a results file records about it."""

    name = "lens"
    #: decode = ``Adapter.decode(translate(layer, hidden))`` (logit, tuned); False: ``decode`` runs the model
    through_head = True

    def __init__(self, adapter: Adapter):
        self.adapter = adapter

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def translate(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The hidden state the LM head decodes (lenses that decode through the head)."""
        return hidden

    def decode(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        self._check_layer(layer)
        return self.adapter.decode(self.translate(layer, hidden))

    def settings(self) -> dict[str, Any]:
        return {"lens": self.name}

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer <= self.num_layers:
            raise ValueError(f"lens layer {layer} out of range 0..{self.num_layers}")


class LogitLens(Lens):
    """``Adapter.decode``: the final norm and the LM head (and any logit scaling or soft-capping)."""

    name = "logit"


def lens_site(adapter: Adapter, layer: int):
    """The hook site that holds lens layer ``layer``: ``layer.in`` of decoder layer 0 for lens
    layer 0, ``layer.out`` of decoder layer ``layer - 1`` otherwise."""
    return adapter.site("layer.in", 0) if layer == 0 else adapter.site("layer.out", layer - 1)


class PatchscopeLens(Lens):
    """The token-identity patchscope: patch the hidden state into ``prompt`` at the
    ``placeholder`` token (the last one in the prompt), at the same lens layer, and read the
    logits at the prompt's last position."""

    name = "patchscope"
    through_head = False

    def __init__(self, model, tokenizer, prompt: str = IDENTITY_PROMPT, placeholder: str = PLACEHOLDER,
                 batch_size: int = 64):
        super().__init__(get_adapter(model))
        if placeholder not in prompt:
            raise ValueError(f"the patchscope prompt {prompt!r} has no placeholder {placeholder!r}")
        self.model, self.prompt, self.placeholder, self.batch_size = model, prompt, placeholder, batch_size
        self.ids = list(tokenizer(prompt).input_ids)
        self.patch_position = self._placeholder_position(tokenizer)
        self.read_position = len(self.ids) - 1
        self._prefix: Any = None  # the KV cache of the prompt before the placeholder (computed once)

    def _placeholder_position(self, tokenizer) -> int:
        """The index of the token that holds the placeholder's last occurrence."""
        cut = self.prompt.rindex(self.placeholder)
        spans = tokenizer(self.prompt, return_offsets_mapping=True)["offset_mapping"]
        for pos, (a, b) in enumerate(spans):
            if a <= cut < b:
                return pos
        raise ValueError(f"cannot find the placeholder {self.placeholder!r} among the tokens of {self.prompt!r}")

    def settings(self) -> dict[str, Any]:
        return {"lens": self.name, "prompt": self.prompt, "placeholder": self.placeholder,
                "patch_position": self.patch_position, "read_position": self.read_position}

    @torch.inference_mode()
    def decode(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        self._check_layer(layer)
        out = []
        for start in range(0, hidden.shape[0], self.batch_size):
            out.append(self._decode(layer, hidden[start:start + self.batch_size]))
        return torch.cat(out) if out else hidden.new_zeros(0, self.adapter.lm_head.weight.shape[0])

    def _decode(self, layer: int, part: torch.Tensor) -> torch.Tensor:
        """One batch. With the placeholder last, the prompt before it is run once (batch 1) and
        its KV cache repeated, so each patched row costs a one-token pass."""
        from mwork.lens.logit_lens import _step_kwargs

        device = input_device(self.model)
        n, pos = part.shape[0], self.patch_position
        cache_kw, keep = _step_kwargs(self.model)
        cached = pos == self.read_position and pos > 0
        cache = None
        if cached:
            if self._prefix is None:  # the prompt before the placeholder never changes: run it once
                prefix = torch.tensor([self.ids[:pos]], dtype=torch.long, device=device)
                self._prefix = self.model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True,
                                          **keep).get(cache_kw)
            if self._prefix is None or not hasattr(self._prefix, "batch_repeat_interleave"):
                cached = False
            else:
                cache = copy.deepcopy(self._prefix)
                cache.batch_repeat_interleave(n)
        if cached:
            ids = torch.tensor([self.ids[pos:]] * n, dtype=torch.long, device=device)
            mask = torch.ones(n, pos + 1, dtype=torch.long, device=device)
            column, extra = 0, {cache_kw: cache, "use_cache": True, **keep}
        else:
            ids = torch.tensor([self.ids] * n, dtype=torch.long, device=device)
            mask = torch.ones_like(ids)
            column, extra = pos, {}

        def patch(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[:, column] = part.to(x.device, x.dtype)
            return x

        with Hooks().edit(lens_site(self.adapter, layer), patch):
            logits = self.model(input_ids=ids, attention_mask=mask, **extra).logits
        return logits[:, -1].float()
