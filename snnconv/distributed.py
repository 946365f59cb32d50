"""Process-group helpers for ``torchrun`` (DDP training, sharded evaluation).

``torchrun --nproc-per-node N -m snnconv train|evaluate ...`` starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set.
:func:`setup` joins them into one process group (gloo on CPU, nccl on CUDA, one GPU
per local rank). Without torchrun every helper is the single-process identity
(rank 0 of 1), so the library code calls them unconditionally.

All ranks must make the same sequence of collective calls; every helper here is
called by the training and evaluation code on every rank, in the same order.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .errors import SnnconvError


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process run (``WORLD_SIZE`` > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True once a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints results."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the torchrun process group if launched by torchrun (idempotent); return this rank's device.

    CUDA ranks get ``cuda:LOCAL_RANK`` and the nccl backend; CPU ranks use gloo.

    Raises:
        SnnconvError: a local rank has no GPU, or this PyTorch has no torch.distributed.
    """
    if device.type == "cuda" and launched_by_torchrun():
        if local_rank() >= torch.cuda.device_count():
            raise SnnconvError(
                f"local rank {local_rank()} has no GPU ({torch.cuda.device_count()} visible): "
                "pass --nproc-per-node no larger than the number of GPUs per node"
            )
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if launched_by_torchrun() and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise SnnconvError("this PyTorch build has no torch.distributed: run without torchrun")
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (if one was joined), so every rank exits cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (no-op for one process)."""
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    # nccl only moves CUDA tensors; gloo only CPU ones.
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over all ranks (a new tensor on ``tensor``'s device)."""
    if not is_distributed():
        return tensor
    buffer = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def sum_int(value: int) -> int:
    """Sum an integer (a count) over all ranks, exactly (int64)."""
    return int(all_reduce_sum(torch.tensor([value], dtype=torch.int64))[0])


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (other ranks' argument is ignored)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only and hand its result, or its :class:`SnnconvError`, to every rank.

    So a user error found by rank 0 (say, a checkpoint from another configuration)
    stops every rank with the same message instead of leaving them waiting.

    Raises:
        SnnconvError: the one ``fn`` raised on rank 0 (on every rank).
    """
    if not is_distributed():
        return fn()
    payload = None
    if is_main():
        try:
            payload = ("ok", fn())
        except SnnconvError as err:
            payload = ("error", str(err))
    status, value = broadcast_object(payload)
    if status == "error":
        raise SnnconvError(value)
    return value


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank, in place."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        data = buffer.data.to(_comm_device())
        dist.broadcast(data, src=src)
        buffer.data.copy_(data)


def shard_indices(count: int) -> range:
    """The items ``rank, rank + world, ...`` of ``range(count)``: disjoint across ranks, together all of it."""
    return range(rank(), count, world_size())


def print_main(*args, **kwargs) -> None:
    """``print`` on rank 0 only."""
    if is_main():
        print(*args, **kwargs)
