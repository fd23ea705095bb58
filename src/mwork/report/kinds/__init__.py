"""mwork's own results kinds, registered on import (one module per kind; see
:mod:`mwork.report.registry` for adding one)."""

from mwork.report.kinds import (bench, deactivation, enhance, evaluation, generic, latent, lens, methods,  # noqa: F401
                                neurons, neuronsets, steering)
