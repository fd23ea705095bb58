"""Layer-wise decoding (logit lens) over prompts and greedily generated tokens.

Lens layer 0 is the input of decoder layer 0 (the embedding output, after any embedding
scaling or embedding norm the model applies), lens layer i >= 1 is the output of decoder layer
i - 1. Each is decoded through the adapter's final norm and LM head (the paper's code skipped
the final norm), so the last lens layer reproduces the model's own logits.

Positions decoded, per prompt: every prompt position (except special tokens such as BOS,
whose hidden state is the same for every prompt and language) and, while generating greedily,
the position of each fed-back token, i.e. the position that produced the next generated
token. Padding is never decoded.
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from mwork.hooks import Hooks, zero_padding
from mwork.lens.prompts import Prompt
from mwork.models.adapters import Adapter, get_adapter
from mwork.models.loading import input_device


@dataclass
class PromptLens:
    """The lens of one prompt.

    ``token_ids`` is the prompt's tokens followed by the generated ones; ``positions`` are the
    indices into ``token_ids`` whose hidden states were decoded; ``topk_ids[l, j]`` are the
    top-k tokens of lens layer ``l`` at ``positions[j]`` (best first), ``topk_logits`` their
    logits. ``logsumexp[l, j]`` is the log-sum-exp of that layer's logits over the whole
    vocabulary, so ``exp(topk_logits - logsumexp[..., None])`` are the tokens' probabilities
    (:meth:`topk_probs`); None for a result loaded from ``lens_topk.safetensors``, which does not
    store it.
    """

    text: str
    lang: str
    token_ids: list[int]
    n_prompt: int
    positions: list[int]
    topk_ids: torch.Tensor  # (num_layers + 1, len(positions), k) int64
    topk_logits: torch.Tensor  # same shape, float32
    logsumexp: torch.Tensor | None = None  # (num_layers + 1, len(positions)) float32

    def topk_probs(self) -> torch.Tensor:
        """Softmax probabilities of the top-k tokens over the whole vocabulary (same shape as
        ``topk_ids``)."""
        if self.logsumexp is None:
            raise ValueError("this lens result has no log-sum-exp (a file loaded from lens_topk.safetensors); "
                             "run the lens again, or use lens_explorer.json, which stores the probabilities")
        return torch.exp(self.topk_logits - self.logsumexp[..., None])

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.n_prompt:]

    def segment_mask(self, segment: str) -> torch.Tensor:
        """Boolean mask over ``positions``: ``all``, ``prompt`` (input is a prompt token) or
        ``generated`` (input is a generated token fed back)."""
        pos = torch.tensor(self.positions, dtype=torch.long)
        if segment == "all":
            return torch.ones(len(self.positions), dtype=torch.bool)
        if segment == "prompt":
            return pos < self.n_prompt
        if segment == "generated":
            return pos >= self.n_prompt
        raise ValueError(f"unknown segment {segment!r}; use all, prompt or generated")


@dataclass
class LensResult:
    """Top-k decodings of every layer for a list of prompts, plus the settings that made them."""

    model_name: str
    num_layers: int  # decoder layers; there are num_layers + 1 lens layers
    top_k: int
    max_new_tokens: int
    prompts: list[PromptLens]
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        """Input languages in order of first appearance."""
        return list(dict.fromkeys(p.lang for p in self.prompts))

    def top_tokens(self, tokenizer, prompt: int, layer: int) -> list[list[str]]:
        """Decoded strings of the top-k tokens at each position of one prompt and layer."""
        ids = self.prompts[prompt].topk_ids[layer]
        return [[tokenizer.decode([int(t)]) for t in row] for row in ids]

    def meta(self) -> dict[str, Any]:
        return {
            "model": self.model_name, "num_layers": self.num_layers, "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens, "seconds": self.seconds, "settings": self.settings,
            "prompts": [
                {"text": p.text, "lang": p.lang, "token_ids": p.token_ids, "n_prompt": p.n_prompt,
                 "positions": p.positions}
                for p in self.prompts
            ],
        }

    def save(self, path: str | Path) -> Path:
        """Write the top-k tensors to a safetensors file (metadata in its header)."""
        from mwork.files import save_safetensors

        tensors = {}
        for i, p in enumerate(self.prompts):
            tensors[f"{i}.topk_ids"] = p.topk_ids.contiguous()
            tensors[f"{i}.topk_logits"] = p.topk_logits.contiguous()
        path = Path(path)
        save_safetensors(path, tensors, metadata={"mwork_lens": json.dumps(self.meta())})  # atomic, usual permissions
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LensResult":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["mwork_lens"])
            prompts = [
                PromptLens(
                    text=m["text"], lang=m["lang"], token_ids=m["token_ids"], n_prompt=m["n_prompt"],
                    positions=m["positions"], topk_ids=f.get_tensor(f"{i}.topk_ids"),
                    topk_logits=f.get_tensor(f"{i}.topk_logits"),
                )
                for i, m in enumerate(meta["prompts"])
            ]
        return cls(meta["model"], meta["num_layers"], meta["top_k"], meta["max_new_tokens"], prompts,
                   meta["seconds"], meta["settings"])


def _lens_hooks(adapter: Adapter, states: list) -> Hooks:
    """Readers that fill ``states`` with the lens hidden states of one forward pass: the input
    of decoder layer 0, then the output of every decoder layer."""
    hooks = Hooks().read(adapter.site("layer.in", 0), lambda h: states.__setitem__(0, h))
    for i in range(adapter.num_layers):
        hooks.read(adapter.site("layer.out", i), lambda h, i=i: states.__setitem__(i + 1, h))
    return hooks


def _step_kwargs(model: torch.nn.Module) -> tuple[str, dict[str, Any]]:
    """The KV-cache argument's name (transformers 5 renamed ``past_key_values`` to ``cache``)
    and ``logits_to_keep=1`` where supported (the lens computes every layer's logits itself)."""
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    return cache_kw, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _decode_topk(
    adapter: Adapter, hidden: torch.Tensor, top_k: int, chunk: int, decode: Callable | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, D) hidden states -> top-k ids and logits and the log-sum-exp over the vocabulary,
    in chunks so (chunk, vocab) stays small. ``decode`` (default ``adapter.decode``) maps a chunk
    of hidden states to logits."""
    decode = decode or adapter.decode
    ids, vals, lse = [], [], []
    for start in range(0, hidden.shape[0], chunk):
        logits = decode(hidden[start:start + chunk]).float()
        v, i = logits.topk(top_k, dim=-1)
        ids.append(i.cpu())
        vals.append(v.cpu())
        lse.append(logits.logsumexp(dim=-1).cpu())
    if not ids:
        return torch.empty(0, top_k, dtype=torch.long), torch.empty(0, top_k), torch.empty(0)
    return torch.cat(ids), torch.cat(vals), torch.cat(lse)


def _eos_ids(model, tokenizer) -> set[int]:
    eos: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        eos.update([value] if isinstance(value, int) else list(value))
    return eos


@torch.inference_mode()
def _run_batch(
    model, adapter: Adapter, sequences: list[list[int]], *, pad_id: int, eos: set[int], special: set[int],
    top_k: int, max_new_tokens: int, chunk: int, on_step: Callable[[], None] = lambda: None, lens: Any = None,
) -> list[tuple[list[int], list[int], torch.Tensor, torch.Tensor]]:
    """Greedy generation with a KV cache over one left-padded batch, decoding every layer.

    Returns per sequence: all token ids, decoded positions, top-k ids and logits
    (layers, positions, k) and the log-sum-exp of the logits (layers, positions)."""
    device = input_device(model)
    B, L = len(sequences), max(len(s) for s in sequences)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, L - len(s):] = torch.tensor(s)
        mask[b, L - len(s):] = 1
    ids, mask = ids.to(device), mask.to(device)
    tokens = [list(s) for s in sequences]
    positions: list[list[int]] = [[] for _ in range(B)]
    found_ids: list[list[torch.Tensor]] = [[] for _ in range(B)]
    found_vals: list[list[torch.Tensor]] = [[] for _ in range(B)]
    found_lse: list[list[torch.Tensor]] = [[] for _ in range(B)]
    special_t = torch.tensor(sorted(special), dtype=torch.long, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    (cache_kw, keep), cache = _step_kwargs(model), None
    step_input = ids
    offsets = [len(s) - L for s in sequences]  # column c of the padded batch is token c + offset

    pad: list[torch.Tensor | None] = [None]  # the padding of the current pass (the masked policy)
    states: list[torch.Tensor | None] = [None] * (adapter.num_layers + 1)
    hooks = zero_padding(_lens_hooks(adapter, states), adapter, lambda: pad[0])
    with hooks:
        for step in range(max(max_new_tokens, 1)):
            width = step_input.shape[1]
            # only the prompt pass holds padding queries (later steps feed one real token per row)
            pad[0] = ~mask.bool() if step == 0 and not bool(mask.all()) else None
            extra = {k: v[:, -width:] for k, v in adapter.forward_kwargs(mask).items()}
            states[:] = [None] * len(states)
            out = model(input_ids=step_input, attention_mask=mask, use_cache=max_new_tokens > 1,
                        **{cache_kw: cache}, **keep, **extra)
            cache = out.get(cache_kw)
            if any(h is None for h in states):
                raise RuntimeError("a decoder layer did not run; the adapter's layer list does not match the model")

            # which (row, column) of this step are real, non-special tokens of live sequences
            valid = mask[:, -width:].bool() & ~torch.isin(step_input, special_t) & ~finished[:, None]
            rows, cols = valid.nonzero(as_tuple=True)
            if rows.numel():
                # (layers+1, n, D); under a device_map the layers' states live on several devices
                hidden = torch.stack([s[rows.to(s.device), cols.to(s.device)].to(device) for s in states])
                n_layers = hidden.shape[0]
                if lens is not None and lens.through_head:  # logit / tuned: translate, then the usual decode
                    hidden = torch.stack([lens.translate(i, hidden[i]) for i in range(n_layers)])
                if lens is None or lens.through_head:
                    top_ids, top_vals, top_lse = _decode_topk(adapter, hidden.flatten(0, 1), top_k, chunk)
                    top_ids = top_ids.view(n_layers, -1, top_k)
                    top_vals = top_vals.view(n_layers, -1, top_k)
                    top_lse = top_lse.view(n_layers, -1)
                else:  # a lens of mwork.lens.lenses, layer by layer (a patchscope runs the model: no padding edit then)
                    pad[0] = None
                    parts = [_decode_topk(adapter, hidden[i], top_k, chunk, lambda h, i=i: lens.decode(i, h))
                             for i in range(n_layers)]
                    top_ids, top_vals, top_lse = (torch.stack([p[k] for p in parts]) for k in range(3))
                first_col = mask.shape[1] - width
                for j, (r, c) in enumerate(zip(rows.tolist(), cols.tolist())):
                    positions[r].append(first_col + c + offsets[r])
                    found_ids[r].append(top_ids[:, j])
                    found_vals[r].append(top_vals[:, j])
                    found_lse[r].append(top_lse[:, j])
            on_step()

            if step >= max_new_tokens:
                break
            next_tok = out.logits[:, -1].argmax(-1).to(device)
            for b in range(B):
                if not finished[b]:
                    tokens[b].append(int(next_tok[b]))
            finished |= torch.isin(next_tok, torch.tensor(sorted(eos), dtype=torch.long, device=device))
            if step + 1 >= max_new_tokens or bool(finished.all()):
                break
            step_input = torch.where(finished, torch.full_like(next_tok, pad_id), next_tok)[:, None]
            mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], dim=1)

    results = []
    for b in range(B):
        if found_ids[b]:
            t_ids, t_vals = torch.stack(found_ids[b], dim=1), torch.stack(found_vals[b], dim=1)
            t_lse = torch.stack(found_lse[b], dim=1)
        else:
            t_ids = torch.empty(adapter.num_layers + 1, 0, top_k, dtype=torch.long)
            t_vals = torch.empty(adapter.num_layers + 1, 0, top_k)
            t_lse = torch.empty(adapter.num_layers + 1, 0)
        results.append((tokens[b], positions[b], t_ids, t_vals, t_lse))
    return results


@dataclass(frozen=True)
class LensOptions:
    """How :func:`logit_lens` runs, beyond what it decodes: ``batch_size`` prompts per batch,
    ``decode_chunk`` hidden states through the LM head at once (memory, never the result);
    ``template`` wraps each prompt text (``{prompt}`` is replaced); ``include_special``: also
    decode the positions of special tokens such as BOS; ``model_name``: the name the result
    records (default the model's own)."""

    batch_size: int = 64
    decode_chunk: int = 256
    template: str = "{prompt}"
    include_special: bool = False
    model_name: str | None = None


def logit_lens(
    model,
    tokenizer,
    prompts: Sequence[Prompt | str],
    top_k: int = 10,
    max_new_tokens: int = 8,
    *,
    options: LensOptions | None = None,
    lens: Any = None,
    progress: bool = True,
) -> LensResult:
    """Decode every layer's hidden state to its top-k tokens, over each prompt and over up to
    ``max_new_tokens`` greedily generated tokens.

    ``prompts``: :class:`Prompt` objects, or plain strings (language ``"?"``). Prompts are
    batched by length with left padding; position ids come from the adapter, so padding never
    changes a result. ``options``: batching, the prompt template, special tokens, the recorded
    model name (:class:`LensOptions`).

    ``lens``: how each layer is decoded (a :class:`mwork.lens.lenses.Lens`: logit, tuned or
    patchscope); None is the logit lens (``Adapter.decode``).
    """
    options = options or LensOptions()
    batch_size, template, include_special = options.batch_size, options.template, options.include_special
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if "{prompt}" not in template:
        raise ValueError("template must contain '{prompt}'")
    prompts = [p if isinstance(p, Prompt) else Prompt(str(p), "?") for p in prompts]
    if not prompts:
        raise ValueError("no prompts given")
    adapter = get_adapter(model)
    vocab = adapter.lm_head.weight.shape[0]
    if top_k > vocab:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {vocab}")

    special = set(getattr(tokenizer, "all_special_ids", []) or []) if not include_special else set()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = _eos_ids(model, tokenizer)
    encoded = [tokenizer(template.replace("{prompt}", p.text)).input_ids for p in prompts]
    for p, e in zip(prompts, encoded):
        if not e:
            raise ValueError(f"prompt {p.text!r} encodes to no tokens")
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # less padding per batch

    start = time.time()
    out: list[PromptLens | None] = [None] * len(prompts)
    n_batches = -(-len(prompts) // batch_size)
    steps = max(max_new_tokens, 1)
    with tqdm(total=n_batches * steps, desc=f"{lens.name if lens is not None else 'logit'} lens ({len(prompts)} prompts)", unit="step",
              disable=not progress) as bar:
        for b0 in range(0, len(order), batch_size):
            idx = order[b0:b0 + batch_size]
            batch = _run_batch(
                model, adapter, [encoded[i] for i in idx], pad_id=pad_id, eos=eos, special=special,
                top_k=top_k, max_new_tokens=max_new_tokens, chunk=options.decode_chunk, on_step=lambda: bar.update(1),
                lens=lens,
            )
            for i, (tokens, pos, t_ids, t_vals, t_lse) in zip(idx, batch):
                out[i] = PromptLens(prompts[i].text, prompts[i].lang, tokens, len(encoded[i]), pos, t_ids, t_vals,
                                    t_lse)
            bar.update((b0 // batch_size + 1) * steps - bar.n)  # steps skipped when all rows ended
    settings = {"batch_size": batch_size, "template": template, "include_special": include_special,
                "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                "lens": lens.settings() if lens is not None else {"lens": "logit"}}
    name = options.model_name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    return LensResult(name, adapter.num_layers, top_k, max_new_tokens, out, time.time() - start, settings)
