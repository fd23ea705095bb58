"""What every mwork figure shares: its text drawn as written.

Titles, axis and tick labels, legends and annotations carry data (language codes, set names,
regions), and matplotlib reads a pair of ``$`` in any text as mathtext: a language code such as
``$x$`` would be typeset, and ``$\\foo$`` fails the whole plot with a parser error. Every
plotting function is wrapped in :func:`plain_text`, which turns mathtext off for the figure (its
texts, and the tick labels drawn at save time), so no ``$`` needs escaping (escaping as well
would show the backslash)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def plain_text(fn: F) -> F:
    """Run the plotting function ``fn`` with mathtext off (``text.parse_math``): every text of
    its figures is shown as written, ``$`` included."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def save_figure(fig: Any, path: str | Path, dpi: int = 120, **savefig: Any) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (:func:`mwork.files.atomic_write`: a killed or
    failed write leaves the old file) and close it, whatever happens; ``savefig``: more options
    of matplotlib's ``savefig`` (e.g. ``metadata={"Software": None}`` for reproducible bytes)."""
    import matplotlib.pyplot as plt

    from mwork.files import atomic_write

    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", **savefig)
    finally:
        plt.close(fig)
    return path
