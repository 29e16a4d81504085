"""Data-parallel training with ``torchrun``: the same ``medlens train`` command runs on 1 or N processes.

``torchrun --nproc_per_node N -m medlens train ...`` sets ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``;
``init_distributed`` reads them and opens a process group (nccl on CUDA, gloo on CPU). Every rank caches the
whole training set and draws its own disjoint shard of a seeded per-epoch permutation (``shard_indices``), so
no ``DistributedSampler`` is needed. Only rank 0 writes files and shows progress bars.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Open the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise a single-process
    ``DistInfo``.

    Backend: nccl when the run uses CUDA, gloo on CPU. On CUDA each rank binds to ``cuda:LOCAL_RANK``.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    logger.info("distributed: rank %d/%d (local %d), backend %s", rank, world_size, local_rank, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)


def cleanup(info: DistInfo, wait: bool = True) -> None:
    """Barrier (unless ``wait`` is False, e.g. after an error), then destroy the process group (no-op
    alone)."""
    if info.enabled and dist.is_initialized():
        if wait:
            barrier(info)
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def shard_indices(indices: torch.Tensor, rank: int, world_size: int, per_rank: int) -> torch.Tensor:
    """This rank's disjoint share of an (already shuffled) index vector:
    ``indices[rank::world_size][:per_rank]``.

    Args:
        indices: (N,) int64, the same on every rank (drawn from a generator seeded by seed and epoch).
        per_rank: how many indices each rank keeps, so every rank runs the same number of steps (DDP needs
            that).
    """
    return indices[rank::world_size][:per_rank]


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model`` itself."""
    if not info.enabled:
        return model
    device_ids = (
        [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    )
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers (for saving state dicts)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def all_reduce_sum(values: Sequence[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise sum of a few scalars over ranks (float64)."""
    if not info.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on at least one (e.g. a time budget that ran out)."""
    if not info.enabled:
        return flag
    return all_reduce_sum([1.0 if flag else 0.0], info, device)[0] > 0


def gather_tensors(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate (along dim 0) a CPU tensor from every rank, in rank order; shapes may differ along dim
    0."""
    if not info.enabled:
        return tensor
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts, dim=0)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def parameters_in_sync(model: nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds the same weights (compares a float64 checksum per parameter tensor)."""
    if not info.enabled:
        return True
    sums = torch.stack([p.detach().double().sum().cpu() for p in unwrap_model(model).parameters()])
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, sums)
    return all(torch.allclose(parts[0], p, rtol=0, atol=1e-9) for p in parts[1:])
