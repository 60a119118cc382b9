"""Data parallelism for the training loop, on torch's own engine (DistributedDataParallel over the process
group that :mod:`omnifuse.runtime.distributed` joins).

DDP only averages the gradients of parameters used in its wrapped module's forward, so a stage's step
function (one micro-batch through the model, whatever the objective) runs as the forward of a small
wrapper module: every objective — next-token, distillation, Q-Former — is synchronised the same way.
The wrapper is rebuilt for each stage, because what trains (and so what DDP reduces) changes per stage.

FSDP (``runtime.distributed.strategy: fsdp``) is torch's ``fully_shard`` (FSDP2), applied once to the
model before the first stage: each decoder layer of the LLM is its own unit, everything else (encoders,
connectors, embeddings, head, fusion blocks) the root unit. Parameters become DTensors sharded over the
processes; they keep float32 storage (FSDP needs one dtype per unit) and the compute dtype is FSDP's
mixed-precision policy. A stage's step runs through the model's own forward, whose root unit gathers the
parameters. Checkpoints gather every sharded tensor into the one-process layout (``weights.full``), so a
run resumes with any process count and its files are those of a DDP or one-process run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.fusion.cross_attention import decoder_layers
from omnifuse.recipe import Recipe, RuntimeSpec, StageSpec
from omnifuse.runtime import Placement, World


class StepModule(nn.Module):
    """``forward(samples)`` = the stage's step function on the model (its parameters are the model's)."""

    def __init__(self, model: nn.Module, step: Callable, processor, stage: StageSpec) -> None:
        super().__init__()
        self.model = model
        self._step, self._processor, self._stage = step, processor, stage

    def forward(self, samples: Sequence):
        return self._step(self.model, self._processor, samples, self._stage)


def check_strategy(recipe: Recipe, world: World) -> None:
    """Refuse, before anything is built, what this launch cannot run (what no launch can run with this
    recipe — FSDP with a Q-Former objective or with evaluation during training — the recipe refuses)."""
    if recipe.runtime.distributed.strategy == "fsdp" and not world.distributed:
        raise OmnifuseError(
            "runtime.distributed.strategy: fsdp shards the model across processes, but this is a single "
            "process; launch several (`omnifuse train RECIPE --nproc N`, torchrun or accelerate launch) or use ddp"
        )


def shard(model: nn.Module, placement: Placement, world: World) -> nn.Module:
    """FSDP2 over a placed model: one unit per LLM decoder layer, the rest in the root unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(placement.device.type, (world.size,))
    policy = MixedPrecisionPolicy(param_dtype=placement.dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(model.llm):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


def sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def wrap(model: nn.Module, step: Callable, processor, stage: StageSpec, world: World, placement: Placement,
         spec: RuntimeSpec) -> nn.Module:  # fmt: skip
    """The module a stage's micro-batches run through: DDP-wrapped with several processes."""
    module = StepModule(model, step, processor, stage)
    if not world.distributed or sharded(model):  # FSDP synchronises through the model's own units
        return module
    ids = [placement.device] if placement.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=spec.distributed.find_unused_parameters
    )


def no_sync(module: nn.Module, last: bool):
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last micro-batch of an
    optimizer step."""
    if isinstance(module, StepModule) and sharded(module.model):
        module.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if last or not isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return module.no_sync()


def clip_gradients(params: Sequence[torch.Tensor], max_norm: float) -> float:
    """torch's clipping; with sharded gradients (DTensors) the norm is reduced over the processes first."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm.item()


@torch.no_grad()
def scale_gradients(params: Sequence[torch.Tensor], factor: float) -> None:
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)
