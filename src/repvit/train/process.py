"""Processes: the device, torchrun's process group, collectives, and seeding (both loops use these).

Seeding is what makes resume exact: every random generator is re-seeded from the run's seed and
the position in the run (epoch or iteration, and the rank or the sample), so a resumed run replays
what an uninterrupted one does.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..utils import resolve_device

__all__ = ["ProcessContext", "setup_process", "end_process", "all_reduce_sum", "all_gather_objects", "all_agree",
           "sync_buffers", "wrap_ddp", "derive_seed", "seed_everything", "seed_worker", "sample_generator"]


@dataclass
class ProcessContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    started_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def collective_device(self) -> torch.device:
        """Where collectives run: NCCL needs CUDA tensors, gloo takes CPU ones."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def setup_process(device: str = "auto") -> ProcessContext:
    """Pick the device; join the process group when launched by torchrun (RANK/WORLD_SIZE set)."""
    resolved = resolve_device(device)
    ctx = ProcessContext(device=resolved)
    if "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        ctx.rank, ctx.world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        ctx.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if resolved.type == "cuda":
            ctx.device = torch.device("cuda", ctx.local_rank)
            torch.cuda.set_device(ctx.device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
            ctx.started_group = True
    return ctx


def end_process(ctx: ProcessContext) -> None:
    """Leave the process group this process started (if any)."""
    if ctx.started_group:
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], ctx: ProcessContext) -> list[float]:
    """``values`` summed over all processes (unchanged in a single process)."""
    if not ctx.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.collective_device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_agree(flag: bool, ctx: ProcessContext) -> bool:
    """True when ``flag`` holds on every process: steps that all processes skip together."""
    if not ctx.distributed:
        return flag
    tensor = torch.tensor([int(flag)], device=ctx.collective_device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def all_gather_objects(obj, ctx: ProcessContext) -> list:
    """Every process's ``obj``, on every process (a list with one entry per rank)."""
    if not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def sync_buffers(model: nn.Module, ctx: ProcessContext) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), so that a sharded
    evaluation measures exactly the model that rank 0 saves: each DDP process updates its own
    statistics from its own batches during training."""
    if ctx.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap_ddp(model: nn.Module, ctx: ProcessContext) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun, else itself."""
    if not ctx.distributed:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


def derive_seed(seed: int, step: int, stream: int = 0) -> int:
    """A 31-bit seed for one ``step`` (epoch or iteration) of one ``stream`` (a rank, or a sample).

    A fixed linear mix (the classification loop's formula since the first release, so its runs
    replay as before). Two (step, stream) pairs share a seed only when their steps differ by a
    multiple of 101 and their streams by a multiple of 10007: never for (iteration, rank) or
    (epoch, rank), and for (epoch, sample index) only between epochs at least 101 apart.
    """
    return (seed * 1_000_003 + step * 10_007 + stream * 101) % 2**31


def seed_everything(value: int) -> None:
    """Python's, numpy's and torch's global generators, from one value."""
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def seed_worker(worker_id: int) -> None:
    # DataLoader seeds torch and random in each worker; timm's transforms also draw from numpy.
    np.random.seed(torch.initial_seed() % 2**32)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random generator of one sample's augmentation: depends on nothing else."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch, index))
