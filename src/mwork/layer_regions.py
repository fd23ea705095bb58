"""The paper's layer regions from U and G, the one place they are computed: understanding = the
first U decoder layers, generation = the last G, task-solving = the layers in between.

The lens estimate (``mwork.lens.regions``), the deactivation grid's rows
(``mwork.experiments.deactivation.plan.layer_regions``) and the steering sweep's ``--region``
(``mwork.experiments.steering.runner``) all take their layers from :func:`region_layers`.
"""

from __future__ import annotations

UNDERSTANDING, TASK_SOLVING, GENERATION = "understanding", "task-solving", "generation"
REGIONS = (UNDERSTANDING, TASK_SOLVING, GENERATION)


def region_layers(num_layers: int, understanding: int, generation: int) -> dict[str, range]:
    """Decoder-layer indices of each region of a ``num_layers``-layer model: ``{"understanding":
    range(U), "task-solving": range(U, n - G), "generation": range(n - G, n)}`` (a region may be
    empty). A ValueError if U or G is negative or U + G exceeds the layers."""
    if understanding < 0 or generation < 0 or understanding + generation > num_layers:
        raise ValueError(
            f"understanding ({understanding}) + generation ({generation}) layers must be >= 0 and "
            f"fit in the model's {num_layers} layers"
        )
    return {UNDERSTANDING: range(understanding), TASK_SOLVING: range(understanding, num_layers - generation),
            GENERATION: range(num_layers - generation, num_layers)}
