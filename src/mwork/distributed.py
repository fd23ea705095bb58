"""Data parallelism on torch.distributed: the few collective steps detection needs.

Launch with ``torchrun --standalone --nproc_per_node N --no-python mwork detect ARGS``:
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, ``init()`` joins
the group (gloo on CPU, nccl on CUDA, one GPU per local rank). Without a group every helper
answers as a single process (rank 0 of 1), so callers need no second code path.

Sharding is by *block* (``owns(i)``: block i belongs to rank i % world_size) rather than by
document, so that each rank batches exactly the documents one process would batch together:
per-document scores, hence the result, are then bit-identical to a single process.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.distributed as dist


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from err


def is_active() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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


def owns(block: int) -> bool:
    """Whether this rank processes block number ``block`` (round robin over ranks)."""
    return block % world_size() == rank()


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
