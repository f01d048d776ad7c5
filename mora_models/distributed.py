"""Multi-process training with ``torchrun`` and DistributedDataParallel.

``torchrun --nproc-per-node G script.py`` starts G processes and sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
in each. :func:`init_distributed` reads them and joins the process group:
NCCL when the processes train on CUDA devices, gloo on the CPU. Without these
variables (or with ``WORLD_SIZE=1``) training runs in one process and nothing
here communicates.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

_ENV_WORLD_SIZE = "WORLD_SIZE"
_ENV_RANK = "RANK"
_ENV_LOCAL_RANK = "LOCAL_RANK"


@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process in the training job.

    Attributes:
        rank: Global rank, 0 in a single process.
        local_rank: Rank on this machine; selects the CUDA device.
        world_size: Number of processes.
        device: Device this process trains on.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints and logs results (rank 0)."""
        return self.rank == 0


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """Return the device for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` picks CUDA device ``local_rank`` when CUDA is available, else the CPU.

    Raises:
        ConfigError: CUDA is requested but not available, or the name is unknown.
    """
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"TrainConfig.device is {preference!r} but this torch build sees no CUDA device; "
                "use 'auto' or 'cpu'"
            )
        if preference == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device(preference)
    raise ConfigError(
        f"TrainConfig.device must be 'auto', 'cpu' or 'cuda[:N]', found {preference!r}"
    )


def init_distributed(device_preference: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes, or run alone.

    Joins once per process; later calls reuse the group.

    Args:
        device_preference: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        This process's rank, world size and device.
    """
    world_size = int(os.environ.get(_ENV_WORLD_SIZE, "1"))
    rank = int(os.environ.get(_ENV_RANK, "0"))
    local_rank = int(os.environ.get(_ENV_LOCAL_RANK, "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        logger.info("joined process group: rank %d of %d, backend %s", rank, world_size, backend)
    return DistributedContext(rank, local_rank, world_size, device)


def all_reduce_mean(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Return the mean of ``values`` over all processes (the values themselves when alone)."""
    if not context.is_distributed:
        return values
    reduced = values.detach().clone().to(context.device)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / context.world_size).cpu()


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """Return rank 0's ``flag`` on every process."""
    if not context.is_distributed:
        return flag
    value = torch.tensor([int(flag)], device=context.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def barrier(context: DistributedContext) -> None:
    """Wait until every process reaches this point."""
    if context.is_distributed:
        dist.barrier()
