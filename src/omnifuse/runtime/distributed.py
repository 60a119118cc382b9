"""Several processes, one model: the process group comes from the launcher's environment (torchrun,
``accelerate launch``, or ``omnifuse train --nproc N``, which runs torchrun), through accelerate's
``PartialState`` (gloo on CPUs, NCCL on GPUs). Gradients are averaged by torch's DistributedDataParallel.

Data parallelism here keeps one invariant: an optimizer step sees the same samples, in the same order,
whatever the number of processes — rank ``r`` of ``W`` takes the ``r``-th slice of each micro-batch of
the one-process stream — and the loss of a step is the mean over all its label tokens (summed across
micro-batches and processes, then divided once), so 1 and N processes reach the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import distributed as dist

from omnifuse.errors import OmnifuseError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int | None = None  # None: a single process (no launcher)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def current_world() -> World:
    """What the launcher's environment says (RANK / WORLD_SIZE / LOCAL_RANK); one process without one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: torch.device) -> World:
    """Join the process group of this launch (idempotent); a single process joins nothing."""
    world = current_world()
    if world.distributed and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=device.type == "cpu")
        if not dist.is_initialized():
            raise OmnifuseError(
                f"WORLD_SIZE={world.size} but no process group could be started on {device}; launch with "
                "`omnifuse train RECIPE --nproc N`, torchrun or accelerate launch"
            )
    return world


def sum_across(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums over all processes (float64, so token counts stay exact)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_error(message: str | None) -> None:
    """Rank 0's outcome of a step only it performs: every process raises the same error, or none does
    (a process left waiting at the next collective would hang)."""
    if not (dist.is_available() and dist.is_initialized()):
        if message:
            raise OmnifuseError(message)
        return
    box = [message]
    dist.broadcast_object_list(box, src=0)
    if box[0]:
        raise OmnifuseError(box[0])


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def gather_dicts(mine: dict) -> dict:
    """The union of every process's ``mine`` (picklable values; keys disjoint across processes)."""
    if not (dist.is_available() and dist.is_initialized()):
        return dict(mine)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return {k: v for part in parts for k, v in part.items()}
