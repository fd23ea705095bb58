"""An lm-evaluation-harness model backend (``--model mwork``): lm-eval's own ``HFLM`` on a model
loaded by mwork (any alias, the tiny models included; an enhancement delta merged), with neurons
switched off around every request lm-eval makes.

    lm_eval --model mwork --model_args pretrained=gemma-3-270m,neurons=sets/zh.safetensors \\
        --tasks belebele_zho_Hans

Model args (besides HFLM's own, e.g. ``batch_size``, ``max_length``): ``pretrained`` (an mwork
model name), ``neurons`` (a NeuronSet to switch off) or ``random_like`` + ``seed`` (random
neurons of the same count per layer and kind, as ``mwork ppl``), ``layers`` / ``kinds`` (restrict
the set; lm-eval splits model args at commas, so join several with ``+``: ``kinds=ffn+q``,
``layers=0-5+9``), ``scale`` (multiply instead of zeroing), ``delta`` (a folder written by
``mwork enhance``, merged at load: not HFLM's ``delta``), ``dtype``, ``device``.

Everything lm-eval computes is HFLM's, unchanged, with one exception, the BOS: lm-eval puts its
prefix token (the BOS) before every rolling log-likelihood text, and a tokenizer that adds a BOS
itself (Gemma, Llama) gives it a second one. Here the tokenizer's own BOS is dropped from rolling
texts, so every family sees exactly one BOS, as in its other requests and in ``mwork ppl``
(Gemma, Llama: one BOS; GPT-2, Qwen, whose tokenizers add none: lm-eval's end-of-text prefix).
Log-likelihood and generation requests keep HFLM's tokenisation (the tokenizer's own special
tokens, once).

Registered with lm-eval's registry (``lm_eval.api.registry.register_model``, the mechanism
lm-eval 0.4 offers) when this module is imported; ``mwork.tasks.lm_eval_plugin`` makes the
``lm_eval`` command import it.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lm_eval.models  # noqa: F401  (lm-eval's own models first: its registry is filled on this import)
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from mwork.intervene import deactivate
from mwork.tasks.switch_off import neurons_to_switch_off


def _model_arg_list(value: Any) -> str | None:
    """``layers`` / ``kinds`` from model args: ``+`` joins items (commas split lm-eval's args)."""
    if value is None or value == "":
        return None
    return str(value).replace("+", ",")


def _device(device: str | None) -> str | None:
    """``--device`` (or lm-eval's ``device``) under mwork's one device rule, as for every other
    command (``mwork.models.loading.check_device``): a device this machine does not have is
    refused, never replaced by the CPU behind the user's back; None picks CUDA when available."""
    from mwork.models.loading import check_device

    return None if device is None or device == "" else str(check_device(device))


@register_model("mwork")
class MworkLM(HFLM):
    """HFLM on an mwork-loaded model, with neurons off during every request (module docstring).

    ``pretrained`` is an mwork model name, or an already loaded model (then give ``tokenizer``)."""

    def __init__(self, pretrained: Any = "gemma-3-270m", *, neurons: Any = None, random_like: Any = None,
                 seed: int | None = None, layers: Any = None, kinds: Any = None, scale: float = 0.0,
                 delta: str | None = None, dtype: str | None = None, device: str | None = None,
                 tokenizer: Any = None, batch_size: int | str = 1, **kwargs: Any):
        from mwork.models.loading import load_model

        self.mwork_name = pretrained if isinstance(pretrained, str) else getattr(pretrained, "name_or_path", "model")
        if isinstance(pretrained, str):
            if tokenizer is not None:
                raise ValueError("tokenizer is mwork's own for a model name; pass tokenizer only with a loaded model")
            model, tokenizer = load_model(pretrained, dtype=dtype, device=_device(device), delta=delta)
        else:
            if tokenizer is None:
                raise ValueError("pass the tokenizer with an already loaded model")
            if delta is not None:
                raise ValueError("a delta is merged when the model is loaded: pass a model name, not a loaded model")
            model = pretrained
        self._rolling = False
        super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)
        self.off, self.intervention = neurons_to_switch_off(
            model, neurons, random_like, seed, _model_arg_list(layers), _model_arg_list(kinds))
        self.scale = float(scale)
        if self.off is not None:
            self.intervention["scale"] = self.scale
        if delta is not None:
            self.intervention["delta"] = str(delta)
        ids = self.tokenizer("a").input_ids
        self.tokenizer_adds_bos = bool(ids) and ids[0] == self.prefix_token_id and self.tokenizer.bos_token_id is not None

    @contextlib.contextmanager
    def _intervening(self) -> Iterator[None]:
        if self.off is None or self.off.count() == 0:
            yield
            return
        with deactivate(self.model, self.off, scale=self.scale):
            yield

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        ids = super().tok_encode(string, add_special_tokens, left_truncate_len, **kwargs)
        if self._rolling and add_special_tokens is None and self.tokenizer_adds_bos and ids[:1] == [self.prefix_token_id]:
            return ids[1:]  # the rolling windows' prefix token is the BOS already
        return ids

    def _model_call(self, inps: Any, attn_mask: Any = None, labels: Any = None) -> Any:
        """HFLM's forward pass, with mwork's rule for logits that cannot be measured
        (``mwork.numerics``): NaN / inf / all-equal logits are an error, not scores."""
        from mwork.numerics import NONFINITE, NonFiniteError, unusable_logits

        logits = super()._model_call(inps, attn_mask, labels)
        if bool(unusable_logits(logits).any()):
            raise NonFiniteError(f"{NONFINITE} in lm-eval's requests: no log-likelihood can be computed; an "
                                 "intervention this strong (e.g. --scale) overflows")
        return logits

    def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
        with self._intervening():
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
        self._rolling = True
        try:
            with self._intervening():
                return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)
        finally:
            self._rolling = False

    def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
        with self._intervening():
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model: mwork's name, content digest and intervention
        (no hub look-up: the model may be a local or built-in one)."""
        from mwork.fingerprints import model_digest

        return {"model_num_parameters": sum(p.numel() for p in self.model.parameters()),
                "model_dtype": str(self.model.dtype), "mwork_model": self.mwork_name,
                "mwork_model_digest": model_digest(self.model), "mwork_intervention": dict(self.intervention)}
