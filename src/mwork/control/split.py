"""The dev/test split of the control items: settings are chosen on dev, reported on test.

Rule: an item is ``dev`` when ``u(group) < dev_fraction``, else ``test``, where ``u`` is the first
8 bytes of SHA-256 of ``"mwork-control-split:" + group`` read as a number in [0, 1). The group is
the item's :attr:`~mwork.control.items.ParallelItem.group` (an XQuAD paragraph, an MGSM problem):
a function of the group alone, so

* dev and test are disjoint by construction (each group has one value of ``u``);
* an item is in the same split for every source / target pair, every run, every order of loading;
* a larger ``dev_fraction`` only moves items from test to dev.

The fraction is of groups, not of items: the split sizes are near ``dev_fraction`` on many
groups, not exact on few.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence, TypeVar

from mwork.control.items import ParallelItem

SPLITS: tuple[str, ...] = ("dev", "test")
DEV_FRACTION = 0.5
_SALT = "mwork-control-split:"

T = TypeVar("T", bound=ParallelItem)


def split_value(group: str) -> float:
    """``u(group)`` in [0, 1) (module docstring)."""
    digest = hashlib.sha256((_SALT + group).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_of(group: str, dev_fraction: float = DEV_FRACTION) -> str:
    """``"dev"`` or ``"test"`` for a split key (an item's ``group``)."""
    _check_fraction(dev_fraction)
    return "dev" if split_value(group) < dev_fraction else "test"


def _check_fraction(dev_fraction: float) -> None:
    if not 0.0 <= dev_fraction <= 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1], got {dev_fraction}")


def split_items(items: Iterable[T], dev_fraction: float = DEV_FRACTION) -> dict[str, list[T]]:
    """``{"dev": [...], "test": [...]}``, each in the order of ``items``."""
    _check_fraction(dev_fraction)
    out: dict[str, list[T]] = {s: [] for s in SPLITS}
    for item in items:
        out[split_of(item.group, dev_fraction)].append(item)
    return out


def items_of_split(items: Sequence[T], split: str, dev_fraction: float = DEV_FRACTION,
                   limit: int | None = None) -> list[T]:
    """The items of one split, in order, the first ``limit`` of them (None: all)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    chosen = split_items(items, dev_fraction)[split]
    return chosen if limit is None else chosen[:limit]
