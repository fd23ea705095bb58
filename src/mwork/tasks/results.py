"""What every task evaluation returns: a :class:`TaskResult`.

A frozen dataclass (``result.score``, ``result.records``) that is also a read-only mapping of
its JSON form (``result["score"]``, ``result["exact_match"]``, ``json.dumps(result)``), so code
that reads results by key keeps working and results stay plain JSON.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NoReturn, Sequence

_FIELDS = ("task", "lang", "metric", "higher_is_better", "score", "n")


@dataclass(frozen=True)
class TaskResult(dict):
    """One task on one language: the score and how it was obtained.

    ``score`` is the task's metric (``metric``; ``higher_is_better`` says which way is better),
    ``n`` how many items it averages (examples; scored tokens for perplexity), ``extra`` the
    secondary metrics and settings (``exact_match``, ``accuracy_norm``, ``few_shot``,
    ``prompt_example`` ...), ``records`` one dict per example. As a mapping the extras sit at
    the top level, between ``n`` and ``records``, as the task dicts of earlier versions had them."""

    task: str
    lang: str
    metric: str
    higher_is_better: bool
    score: float
    n: int
    extra: Mapping[str, Any] = field(default_factory=dict)
    records: Sequence[Mapping[str, Any]] = field(default_factory=list)

    __hash__ = None  # type: ignore[assignment]  # holds dicts: unhashable, like a dict

    def __post_init__(self) -> None:
        clash = sorted(set(self.extra) & {*_FIELDS, "records", "extra"})
        if clash:
            raise ValueError(f"extra metrics may not be named {', '.join(clash)}: those are TaskResult fields")
        object.__setattr__(self, "extra", dict(self.extra))
        object.__setattr__(self, "records", list(self.records))
        view = {name: getattr(self, name) for name in _FIELDS}
        dict.update(self, {**view, **self.extra, "records": self.records})

    @classmethod
    def from_scores(cls, task: str, lang: str, metric: str, higher_is_better: bool, scores: Sequence[float],
                    records: Sequence[Mapping[str, Any]] = (), **extra: Any) -> "TaskResult":
        """The mean of per-example ``scores`` (NaN when there are none)."""
        n = len(scores)
        return cls(task=task, lang=lang, metric=metric, higher_is_better=higher_is_better,
                   score=sum(scores) / n if n else math.nan, n=n, extra=extra, records=list(records))

    def with_extra(self, **extra: Any) -> "TaskResult":
        """A copy with more (or replaced) extras."""
        return dataclasses.replace(self, extra={**self.extra, **extra})

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (the JSON form)."""
        return dict(self)

    # the mapping is a view of the fields: it cannot be changed on its own
    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("a TaskResult is read-only: use result.with_extra(...) or dataclasses.replace(result, ...)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:  # pickle / deepcopy through the fields, not dict items
        return (_rebuild, (self.task, self.lang, self.metric, self.higher_is_better, self.score, self.n,
                           dict(self.extra), list(self.records)))


def _rebuild(*values: Any) -> TaskResult:
    return TaskResult(*values)
