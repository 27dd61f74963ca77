"""torchrun set-up and the few collectives the trainers need, in one place.

Launch detection and process-group start are timm's
(:func:`timm.utils.distributed.is_distributed_env`,
:func:`~timm.utils.distributed.init_distributed_device_so`: torchrun or
SLURM, NCCL on CUDA, gloo on CPU); what is added is "leave an existing group
alone" and "tell the caller whether it owns the group", so that library calls
nest inside a runner that already started one.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["dist_info", "launched_distributed", "setup_distributed", "cleanup_distributed", "all_reduce_sum",
           "broadcast_buffers"]


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_distributed() -> bool:
    """True in a process started by torchrun (or SLURM) with more than one process in the job."""
    from timm.utils.distributed import is_distributed_env

    return is_distributed_env()


def setup_distributed() -> tuple[torch.device, bool]:
    """Pick this process's device; start the process group when launched distributed and none is running.

    Returns ``(device, owned)``: ``owned`` is True when this call started the
    group (the caller then ends it with :func:`cleanup_distributed`).
    """
    cuda = torch.cuda.is_available()
    if dist.is_available() and not dist.is_initialized() and launched_distributed():
        from timm.utils.distributed import init_distributed_device_so

        found = init_distributed_device_so(device="cuda" if cuda else "cpu")
        return torch.device(found["device"]), True
    if cuda:
        if dist.is_available() and dist.is_initialized():
            from timm.utils.distributed import world_info_from_env

            return torch.device("cuda", world_info_from_env()[0]), False
        return torch.device("cuda", torch.cuda.current_device()), False
    return torch.device("cpu"), False


def cleanup_distributed(owned: bool) -> None:
    """End the process group if ``owned`` (as :func:`setup_distributed` returned) and it is still up."""
    if owned and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64; unchanged when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics, masks) to every rank.

    timm's ``distribute_bn`` broadcasts only BatchNorm's running mean/var; all
    buffers are sent here so that checkpoints and evaluations see one model.
    """
    if dist.is_available() and dist.is_initialized():
        for b in model.buffers():
            dist.broadcast(b, 0)
