"""Data parallelism on torch.distributed: the few collective steps detection needs.

Launch with ``torchrun --standalone --nproc_per_node N --no-python mwork detect ARGS``:
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, ``init()`` joins
the group (gloo on CPU, nccl on CUDA, one GPU per local rank). Without a group every helper
answers as a single process (rank 0 of 1), so callers need no second code path.

Sharding is by *block* (``owns(i)``: block i belongs to rank i % world_size) rather than by
document, so that each rank batches exactly the documents one process would batch together:
per-document scores, hence the result, are then bit-identical to a single process.

Evaluation follows the same rule: perplexity, greedy generation and log-likelihood build the
batches exactly as one process would (same sort, same batch size, hence the same padding),
rank r runs batches r, r + N, ... (``shard``), and ``gather_in_order`` hands every rank all
per-item values (per-window NLL, per-prompt output) in their original order, so the final
reduction is the single process's own arithmetic. The deactivation grid shards its *cells*
instead and computes each cell on one rank inside ``local()``, where evaluations do not shard.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from err


_LOCAL_DEPTH = 0  # > 0 inside local(): every helper answers as one process


def is_active() -> bool:
    """True inside an initialised process group of more than one process (and not in ``local()``)."""
    return _LOCAL_DEPTH == 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def local() -> Iterator[None]:
    """Inside, this rank works alone: the helpers answer rank 0 of 1, so an evaluation runs
    all its batches here and calls no collective (used for one deactivation cell per rank)."""
    global _LOCAL_DEPTH
    _LOCAL_DEPTH += 1
    try:
        yield
    finally:
        _LOCAL_DEPTH -= 1


def rank() -> int:
    return dist.get_rank() if is_active() else 0


def world_size() -> int:
    return dist.get_world_size() if is_active() else 1


def init() -> bool:
    """Join the process group torchrun describes when WORLD_SIZE > 1 (nccl if CUDA is
    available, with this process on GPU LOCAL_RANK; gloo otherwise). Returns True if this
    call created the group (then call ``teardown()``), False if there is nothing to do."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set; launch with torchrun "
                         "(torchrun --standalone --nproc_per_node N --no-python mwork ...)")
    cuda = torch.cuda.is_available()
    if cuda:
        local, n_gpu = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local >= n_gpu:
            raise ValueError(f"LOCAL_RANK {local} but only {n_gpu} CUDA device(s): use --nproc_per_node {n_gpu} or "
                             "fewer (one process per GPU), or CUDA_VISIBLE_DEVICES= to run on CPU with gloo")
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def teardown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def group() -> Iterator[None]:
    """``init()`` on entry and, if it created the group, ``teardown()`` on exit: wrap a CLI
    command with it to make the command data-parallel under torchrun. After a run that ended
    well the ranks meet at a barrier first: a rank that leaves the gloo group while another still
    talks to it can abort ("terminate called without an active exception"). After an error there
    is no barrier, since the other ranks may never reach it."""
    created = init()
    finished = False
    try:
        yield
        finished = True
    finally:
        if created:
            if finished:
                dist.barrier()
            teardown()


def owns(block: int) -> bool:
    """Whether this rank processes block number ``block`` (round robin over ranks)."""
    return block % world_size() == rank()


def shard(n: int) -> list[int]:
    """This rank's items of ``range(n)``, round robin (all of them in one process)."""
    return [i for i in range(n) if owns(i)]


def gather_in_order(n: int, mine: Mapping[int, Any]) -> list[Any]:
    """The values of items ``0 .. n-1`` in index order, on every rank, from each rank's
    ``{index: value}`` (picklable values, e.g. floats: they travel exactly). Every index must
    be computed by exactly one rank."""
    merged: dict[int, Any] = {}
    if is_active():
        parts: list[Any] = [None] * world_size()
        dist.all_gather_object(parts, dict(mine))
        for part in parts:
            merged.update(part or {})
    else:
        merged = dict(mine)
    missing = [i for i in range(n) if i not in merged]
    if missing:
        raise RuntimeError(f"gather_in_order: no rank computed items {missing[:5]} of {n}")
    return [merged[i] for i in range(n)]


def _device() -> torch.device:
    """Where collective tensors must live: nccl needs this rank's GPU, gloo the CPU."""
    if is_active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise sum over ranks of each tensor (same names and shapes on every rank);
    returns new CPU tensors of the input dtypes. Integer counts sum exactly."""
    if not is_active():
        return {k: v.clone() for k, v in tensors.items()}
    out = {}
    for name in sorted(tensors):  # same order on every rank
        t = tensors[name].to(_device(), copy=True)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        out[name] = t.cpu()
    return out


def gather_lists(items: list[Any]) -> list[Any]:
    """Concatenate every rank's list (picklable items), rank 0's first."""
    if not is_active():
        return list(items)
    parts: list[list[Any] | None] = [None] * world_size()
    dist.all_gather_object(parts, list(items))
    return [x for part in parts for x in (part or [])]


def barrier() -> None:
    if is_active():
        dist.barrier()
