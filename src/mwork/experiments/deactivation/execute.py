"""Executing the planned cells: the missing ones are measured, in rounds, and kept as they finish.

Data parallel (``mwork.distributed``): the missing cells are dealt out in rounds of one cell per
rank; each rank computes its cell alone (``local()``: the evaluation does not shard), so every
cell is the single process's number; after each round every rank has all the round's cells
and rank 0 appends them to ``cells.jsonl`` (a crash loses one round at most).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from mwork import distributed
from mwork.experiments.deactivation.cells import CellStore
from mwork.experiments.deactivation.plan import Cell, CellKey


def execute(cells: Sequence[Cell], store: CellStore, measure: Callable[[Cell], dict[str, Any]], *,
            progress: bool = True) -> dict[CellKey, dict[str, Any]]:
    """Every cell's record (reused from ``store`` or measured with ``measure``), in plan order."""
    todo = [cell for cell in cells if cell.key not in store.done]
    world, rank = distributed.world_size(), distributed.rank()
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="deactivation cells",
               disable=not progress or rank != 0, unit="cell")
    for start in range(0, len(todo), world):
        round_ = todo[start:start + world]
        bar.set_postfix_str(str(round_[0].key)[:40])
        mine = {}
        if rank < len(round_):
            cell = round_[rank]
            with distributed.local():
                mine[rank] = store.record(cell.key, measure(cell))
        for record in distributed.gather_in_order(len(round_), mine):
            store.add(record)
        bar.update(len(round_))
    bar.close()
    return {cell.key: store.done[cell.key] for cell in cells}
