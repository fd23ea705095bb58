"""The layer ranges a control experiment sweeps (``--layers``): region names or layer numbers,
written one way, and resolved in a model (the regions from U and G: ``mwork.layer_regions``)."""

from __future__ import annotations

from mwork.intervene import parse_layers
from mwork.units.edit import check_layers

#: layer names (``--layers``) and the region each stands for; ``all`` is every layer
LAYER_NAMES: dict[str, str] = {"all": "all", "understanding": "understanding", "u": "understanding",
                               "task-solving": "task-solving", "t": "task-solving", "generation": "generation",
                               "g": "generation"}
REGIONS: tuple[str, ...] = ("understanding", "task-solving", "generation")


def layer_spec(text: str) -> str:
    """One ``--layers`` entry, checked and written one way: a region name (``all``,
    ``understanding``/``U``, ``task-solving``/``T``, ``generation``/``G``) or layer numbers and
    ranges joined by ``+`` (``6-12``, ``3+7-9``)."""
    entry = text.strip()
    if entry.lower() in LAYER_NAMES:
        return LAYER_NAMES[entry.lower()]
    try:
        parse_layers(entry.replace("+", ","))
    except ValueError:
        raise ValueError(f"--layers: {text!r} is neither a region ({', '.join(sorted(set(LAYER_NAMES.values())))}, "
                         "or U, T, G) nor layers such as 6-12 or 3+7-9") from None
    return entry


def resolve_layers(spec: str, num_layers: int, regions: dict[str, range] | None) -> list[int] | None:
    """The layers of a ``--layers`` entry in a model of ``num_layers`` (None: every layer)."""
    if spec == "all":
        return None
    if spec in REGIONS:
        if regions is None:
            raise ValueError(f"--layers {spec}: give --understanding and --generation, or --lens")
        layers = list(regions[spec])
        if not layers:
            raise ValueError(f"--layers {spec}: the region is empty with these --understanding / --generation")
        return layers
    layers = parse_layers(spec.replace("+", ","))
    check_layers(num_layers, layers)
    return layers
