"""Data-parallel training across processes: ``torchrun`` + PyTorch DistributedDataParallel.

Started by ``torchrun --nproc_per_node K -m sense_core.cli train-encoder ...`` (or any SENSE
trainer that supports it), every process reads the same ensemble, trains a replica of the model on
its own share of each epoch's batches, and DDP averages the gradients, so the replicas stay
identical. Rank 0 alone writes checkpoints, logs, plots and the exported bundle; the others wait
at barriers. Backend: ``nccl`` when each rank drives a CUDA device (``LOCAL_RANK`` picks it),
``gloo`` on CPUs (what the tests run here with 2 processes).

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) everything is a no-op and the
trainers run exactly as in a single process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sense_core.errors import SenseError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel run (one process: rank 0 of 1)."""

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

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for run reports."""
        return {"world_size": self.world_size, "backend": self.backend}


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as error:
        raise SenseError(f"environment variable {name}={value!r} is not an integer") from error


def launched_rank() -> int:
    """This process's rank as ``torchrun`` set it (0 outside ``torchrun``), known before
    :func:`init_distributed` joins the process group."""
    return _env_int("RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else 0


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group ``torchrun`` set up (``WORLD_SIZE`` > 1), else a 1-process context.

    With a CUDA ``device`` each rank uses GPU ``LOCAL_RANK`` and the nccl backend; on CPU, gloo.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SenseError(
                f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible; start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedContext(rank, world_size, local_rank, backend)


def device_for(device: torch.device, context: DistributedContext) -> torch.device:
    """The device this rank trains on: its own GPU under CUDA, else ``device``."""
    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def wrap_model(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel when distributed, else unchanged."""
    if not context.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    parameter = next(model.parameters())
    device_ids = [parameter.device.index] if parameter.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside a DDP wrapper (for saving, evaluation and export)."""
    return getattr(model, "module", model)


class RankShare:
    """This rank's share of an epoch's batches: batch ``i`` goes to rank ``i mod world_size``.

    Every rank gets the same number of batches (the last incomplete round is dropped), as DDP's
    gradient all-reduce needs; with one process this yields every batch unchanged.
    """

    def __init__(self, batches: Iterable, context: DistributedContext) -> None:
        self.batches = batches
        self.context = context

    def __iter__(self) -> Iterator:
        if not self.context.enabled:
            yield from self.batches
            return
        size = self.context.world_size
        round_: list = []
        for batch in self.batches:
            round_.append(batch)
            if len(round_) == size:
                yield round_[self.context.rank]
                round_ = []

    def __len__(self) -> int:
        total = len(self.batches)  # type: ignore[arg-type]
        return total if not self.context.enabled else total // self.context.world_size


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if context.enabled:
        import torch.distributed as dist

        dist.barrier()


def mean_over_ranks(values: Sequence[float], context: DistributedContext) -> list[float]:
    """Average per-rank numbers (e.g. batch losses) over all ranks."""
    if not context.enabled:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / context.world_size).tolist()


def broadcast_flag(flag: bool, context: DistributedContext) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. an early-stop decision made on rank 0)."""
    if not context.enabled:
        return flag
    import torch.distributed as dist

    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


def shutdown(context: DistributedContext) -> None:
    """Leave the process group (call once, at the end of the run, after dropping every
    DistributedDataParallel wrapper: a wrapper holds the group, which then outlives
    ``destroy_process_group`` and is torn down during interpreter exit, where gloo's threads
    abort the process with "terminate called without an active exception" — seen in test runs
    here). Collects garbage first (the wrappers sit in reference cycles through their hooks),
    and every rank waits at a barrier so that none leaves while another still uses the group."""
    if context.enabled:
        import gc

        import torch.distributed as dist

        gc.collect()
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
