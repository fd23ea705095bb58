"""What every mwork figure shares: its text drawn as written.

Titles, axis and tick labels, legends and annotations carry data (language codes, set names,
regions), and matplotlib reads a pair of ``$`` in any text as mathtext: a language code such as
``$x$`` would be typeset, and ``$\\foo$`` fails the whole plot with a parser error. Every
plotting function is wrapped in :func:`plain_text`, which turns mathtext off for the figure (its
texts, and the tick labels drawn at save time), so no ``$`` needs escaping (escaping as well
would show the backslash)."""

from __future__ import annotations

import functools
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
