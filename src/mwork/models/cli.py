"""``mwork models`` / ``mwork convert``: list built-in models, prepare the default model."""

from __future__ import annotations

import argparse
import json

from mwork.models.adapters import get_adapter, supported_model_types
from mwork.models.loading import BUILTIN_ALIASES, DEFAULT_MODEL, cache_dir, load_model


def _models(args: argparse.Namespace) -> int:
    print("built-in aliases: " + ", ".join(BUILTIN_ALIASES))
    print("supported model types (any hub id or local folder of these): " + ", ".join(supported_model_types()))
    print(f"cache: {cache_dir()}")
    return 0


def _info(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model, device="cpu")
    adapter = get_adapter(model)
    info = dict(adapter.fingerprint(), total_neurons=adapter.total_neurons())
    print(json.dumps(info))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list built-in model aliases and supported families")
    p.set_defaults(func=_models)
    p = sub.add_parser("info", help="load a model (converting and caching the default one) and print its shape")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.set_defaults(func=_info)
