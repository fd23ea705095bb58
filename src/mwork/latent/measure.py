"""Per lens layer and prompt: P(target word), P(English word) and the entropy of the decoded
distribution at the prompt's last position (where the answer's first token is predicted).

One forward pass per batch of prompts (the *packed* padding policy: real tokens first, an
all-ones mask, so the last real position never sees padding), reading the lens hidden states
(``layer.in`` 0, ``layer.out`` of every layer) through :mod:`mwork.hooks` at the last real
position only; then each lens decodes the ``num_layers + 1`` states. With the logit lens the
extra cost over a forward pass is ``num_layers + 1`` LM-head rows per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mwork.hooks import Hooks, packed_ids
from mwork.latent.tasks import WordPrompt
from mwork.lens.lenses import Lens, lens_site
from mwork.models.loading import input_device


@dataclass
class LayerProbs:
    """(prompts, num_layers + 1) tensors, float64 (computed in float32)."""

    p_target: torch.Tensor
    p_english: torch.Tensor
    entropy: torch.Tensor  # nats


@torch.inference_mode()
def last_states(model, tokenizer, prompts: list[str], batch_size: int = 16) -> torch.Tensor:
    """(prompts, num_layers + 1, D) lens hidden states at each prompt's last token."""
    from mwork.lens.logit_lens import _step_kwargs
    from mwork.models.adapters import get_adapter

    adapter = get_adapter(model)
    device = input_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [tokenizer(p).input_ids for p in prompts]
    keep = _step_kwargs(model)[1]
    out: list[torch.Tensor | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # less padding per batch
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids = packed_ids([encoded[i] for i in idx], pad).to(device)
        last = torch.tensor([len(encoded[i]) - 1 for i in idx], device=device)
        rows = torch.arange(len(idx), device=device)
        states: list[torch.Tensor | None] = [None] * (adapter.num_layers + 1)
        hooks = Hooks()
        for layer in range(adapter.num_layers + 1):
            hooks.read(lens_site(adapter, layer),
                       lambda h, layer=layer: states.__setitem__(layer, h[rows.to(h.device), last.to(h.device)]))
        with hooks:
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **keep)
        stacked = torch.stack([s.to(device) for s in states], dim=1)  # (B, L+1, D)
        for j, i in enumerate(idx):
            out[i] = stacked[j]
    return torch.stack(out) if out else torch.empty(0)


@torch.inference_mode()
def layer_probs(lens: Lens, states: torch.Tensor, prompts: list[WordPrompt]) -> LayerProbs:
    """Decode ``states`` (prompts, L + 1, D) with ``lens`` and sum the probability of each
    prompt's target and English start tokens per layer."""
    n, layers = states.shape[0], states.shape[1]
    pt, pe, ent = (torch.zeros(n, layers, dtype=torch.float64) for _ in range(3))
    target = [torch.tensor(p.target_tokens, dtype=torch.long) for p in prompts]
    english = [torch.tensor(p.english_tokens, dtype=torch.long) for p in prompts]
    for layer in range(layers):
        logp = torch.log_softmax(lens.decode(layer, states[:, layer]).float(), -1)
        prob = logp.exp()
        ent[:, layer] = -(prob * logp).sum(-1).double().cpu()
        for r in range(n):  # start-token sets differ per prompt
            pt[r, layer] = float(prob[r, target[r].to(prob.device)].sum())
            pe[r, layer] = float(prob[r, english[r].to(prob.device)].sum())
    return LayerProbs(pt, pe, ent)
