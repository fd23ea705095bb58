"""``mwork models`` / ``mwork convert``: list built-in models, prepare the default model."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from mwork.config import add_arguments, from_args, option
from mwork.models.adapters import get_adapter, supported_families, supported_model_types
from mwork.models.loading import BUILTIN_ALIASES, DEFAULT_MODEL, cache_dir, load_model
from mwork.models.tiny import tiny_model_types


def _models(args: argparse.Namespace) -> int:
    print("built-in aliases: " + ", ".join(BUILTIN_ALIASES))
    families = supported_families()
    tiny = tiny_model_types()
    n_types = sum(len(t) for t in families.values())
    print(f"supported model types ({n_types}, in {len(families)} adapter families; any hub id or local folder of these):")
    width = max(len(f) for f in families)
    for family, types in families.items():
        aliases = [a for a, t in tiny.items() if t in types]
        print(f"  {family:<{width}}  model types: {', '.join(types)}" + (f"  tiny: {', '.join(aliases)}" if aliases else ""))
    print("supported model types: " + ", ".join(supported_model_types()))
    print(f"cache: {cache_dir()}")
    return 0


@dataclass(frozen=True, kw_only=True)
class InfoOptions:
    """The options of ``mwork info``: which model (loaded on the CPU, in float32)."""

    model: str = option(DEFAULT_MODEL, "built-in alias, local folder or hub id")


def _info(args: argparse.Namespace) -> int:
    from mwork.neurons.importance import qk_paths  # lazy: the neuron layer sits above models

    model, _ = load_model(from_args(InfoOptions, args).model, device="cpu")
    adapter = get_adapter(model)
    info = dict(adapter.fingerprint(), total_neurons=adapter.total_neurons(), qk_paths=qk_paths(model))
    print(json.dumps(info))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list built-in model aliases and supported families")
    p.set_defaults(func=_models)
    p = sub.add_parser("info", help="load a model (converting and caching the default one) and print its shape "
                       "and the Q/K importance path of each layer")
    add_arguments(p, InfoOptions)
    p.set_defaults(func=_info)
