"""Data parallelism for the training loop, on torch's own engine (DistributedDataParallel over the process
group that :mod:`omnifuse.runtime.distributed` joins).

DDP only averages the gradients of parameters used in its wrapped module's forward, so a stage's step
function (one micro-batch through the model, whatever the objective) runs as the forward of a small
wrapper module: every objective — next-token, distillation, Q-Former — is synchronised the same way.
The wrapper is rebuilt for each stage, because what trains (and so what DDP reduces) changes per stage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import RuntimeSpec, StageSpec
from omnifuse.runtime import Placement, World


class StepModule(nn.Module):
    """``forward(samples)`` = the stage's step function on the model (its parameters are the model's)."""

    def __init__(self, model: nn.Module, step: Callable, processor, stage: StageSpec) -> None:
        super().__init__()
        self.model = model
        self._step, self._processor, self._stage = step, processor, stage

    def forward(self, samples: Sequence):
        return self._step(self.model, self._processor, samples, self._stage)


def check_strategy(spec: RuntimeSpec, world: World, privacy: bool = False) -> None:
    """Refuse, before anything is built, what this launch cannot run."""
    strategy = spec.distributed.strategy
    if strategy == "fsdp" and not world.distributed:
        raise OmnifuseError(
            "runtime.distributed.strategy: fsdp shards the model across processes, but this is a single "
            "process; launch several (`omnifuse train RECIPE --nproc N`, torchrun or accelerate launch) or use ddp"
        )
    if strategy == "fsdp":
        raise OmnifuseError(
            "runtime.distributed.strategy: fsdp is not available in this version of omnifuse (DDP is: "
            "strategy: ddp); see docs/scaling.md for what is verified"
        )
    if privacy and world.distributed:
        raise OmnifuseError(
            "privacy (DP-SGD) trains in one process here: Opacus' per-sample clipping and noise are not set up "
            "across processes; drop --nproc (or launch one process)"
        )


def wrap(model: nn.Module, step: Callable, processor, stage: StageSpec, world: World, placement: Placement,
         spec: RuntimeSpec) -> nn.Module:  # fmt: skip
    """The module a stage's micro-batches run through: DDP-wrapped with several processes."""
    module = StepModule(model, step, processor, stage)
    if not world.distributed:
        return module
    ids = [placement.device] if placement.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=spec.distributed.find_unused_parameters
    )


def no_sync(module: nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an optimizer step."""
    if last or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


@torch.no_grad()
def scale_gradients(params: Sequence[torch.Tensor], factor: float) -> None:
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)
