"""Capture: the values of named sites during forward passes, kept for the caller
(:func:`capture`, ``mwork.capture``).

A client of the hook layer (:mod:`mwork.hooks`: one read per site) that finds its sites through
the model's adapter (:mod:`mwork.models.adapters`), so it sits above both.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from mwork.hooks import MOE_SITES, SITES, Hooks, Site
from mwork.models.adapters import get_adapter


class Capture:
    """Values of sites during forward passes, kept for the caller (see :func:`capture`)."""

    def __init__(self, model: nn.Module, sites: str | Sequence[str], layers: Iterable[int] | None = None, *,
                 keep: str = "last", detach: bool = True, device: str | torch.device | None = None,
                 channels: bool = True, clone: bool = True):
        if keep not in ("last", "all"):
            raise ValueError(f"keep must be 'last' or 'all', got {keep!r}")
        names = [sites] if isinstance(sites, str) else list(sites)
        unknown = [n for n in names if n not in SITES and n not in MOE_SITES]
        if unknown:
            raise ValueError(f"unknown site {unknown[0]!r}; sites are {', '.join(SITES)} "
                             f"(and in mixture-of-experts layers {', '.join(MOE_SITES)})")
        adapter = get_adapter(model)
        layer_list = list(range(adapter.num_layers)) if layers is None else sorted(set(int(i) for i in layers))
        bad = [i for i in layer_list if not 0 <= i < adapter.num_layers]
        if bad:
            raise ValueError(f"layers {bad} out of range: the model has layers 0..{adapter.num_layers - 1}")
        self.keep, self.detach, self.device, self.channels, self.clone = keep, detach, device, channels, clone
        self._values: dict[tuple[str, int | None], list[Any]] = {}
        self.hooks = Hooks()
        for name in names:
            for layer in ([None] if name == "final_norm.in" else layer_list):
                site = adapter.site(name, layer)
                self._values[name, layer] = []
                self.hooks.read(site, self._keeper(site))

    def _keeper(self, site: Site) -> Callable[[Any], None]:
        store = self._values[site.name, site.layer]

        def keep(value: Any) -> None:
            raw = value
            if isinstance(value, torch.Tensor):
                if self.channels:
                    value = site.channels(value)
                if self.detach:
                    value = value.detach()
                if self.device is not None:
                    value = value.to(self.device)
                if self.clone and value.data_ptr() == getattr(raw, "data_ptr", lambda: None)():
                    value = value.clone()
            if self.keep == "last":
                store[:] = [value]
            else:
                store.append(value)

        return keep

    def __enter__(self) -> "Capture":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)

    def __getitem__(self, key: str | tuple[str, int | None]) -> Any:
        """``cap["ffn.in", 3]``: the last value at that site (``cap["final_norm.in"]`` has no layer)."""
        name, layer = (key, None) if isinstance(key, str) else key
        values = self.values(name, layer)
        if not values:
            raise KeyError(f"nothing captured at {name}[{layer}]: did the forward pass run through it?")
        return values[-1]

    def values(self, name: str, layer: int | None = None) -> list[Any]:
        """Every value kept at a site (one per forward call with ``keep="all"``)."""
        if (name, layer) not in self._values:
            raise KeyError(f"{name}[{layer}] is not captured here; captured: "
                           + ", ".join(f"{n}[{i}]" for n, i in self._values))
        return self._values[name, layer]

    def clear(self) -> None:
        for v in self._values.values():
            v.clear()


def capture(model: nn.Module, sites: str | Sequence[str], layers: Iterable[int] | None = None, **options: Any) -> Capture:
    """Context manager that keeps the values of ``sites`` (names in :data:`SITES`) in ``layers``
    (default: all) during the forward passes run inside it::

        with mwork.capture(model, "ffn.in", layers=range(3, 8)) as cap:
            model(**batch)
        h = cap["ffn.in", 3]            # (batch, tokens, FFN neurons) of layer 3

    Options: ``keep="all"`` keeps every call's value (e.g. each step of ``generate``), not only
    the last; ``detach`` (default True); ``device`` to move values (e.g. "cpu"); ``channels``
    (default True) gives the site's channels only (q of a fused projection, not q|k|v);
    ``clone`` (default True): values are copies, so what the model later does in place (Falcon
    adds its attention output into the FFN output) does not show in them."""
    return Capture(model, sites, layers, **options)
