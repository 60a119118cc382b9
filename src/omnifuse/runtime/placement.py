"""Device and precision: a recipe's ``runtime`` section (or ``--device`` / ``--dtype``) → a Placement.

Precision follows the usual mixed-precision scheme (torch autocast): parameters that some stage trains
keep float32 master weights; parameters that no stage trains are stored in the compute dtype (half the
memory for a frozen LLM or vision tower); matrix products run in the compute dtype under autocast;
float16 gets a gradient scaler. ``auto`` picks bfloat16 on a GPU that supports it and float32 elsewhere:
on CPUs without bf16 matrix units bfloat16 is slower than float32 (it is still available explicitly).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.recipe.runtime import RuntimeSpec, check_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # compute dtype under autocast; float32 = no autocast

    @property
    def mixed(self) -> bool:
        return self.dtype != torch.float32

    def autocast(self):
        """The context every forward pass of training, evaluation and generation runs in."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """float16 gradients underflow without loss scaling; bfloat16 and float32 need none."""
        return torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None

    def describe(self) -> str:
        kind = "float32" if not self.mixed else f"{str(self.dtype).removeprefix('torch.')} autocast"
        return f"{self.device} · {kind}"


def _device(name: str, local_rank: int | None, where: str) -> torch.device:
    try:
        check_device(name)
    except ValueError as err:
        raise OmnifuseError(f"{where}: {err}") from None
    cuda = torch.cuda.is_available()
    if name == "auto":
        name = "cuda" if cuda else "cpu"
    if name.startswith("cuda"):
        if not cuda:
            raise OmnifuseError(
                f"{where}: {name} was asked for, but torch sees no CUDA GPU on this machine (torch "
                f"{torch.__version__}); use device cpu (or auto), or install a CUDA build of torch on a GPU machine"
            )
        if name == "cuda":
            return torch.device("cuda", local_rank or 0)
        index = int(name.split(":")[1])
        if local_rank is not None:
            raise OmnifuseError(
                f"{where}: {name} names one GPU, but this is one of several processes (each takes the GPU of its "
                "local rank); write device: cuda (or auto)"
            )
        if index >= torch.cuda.device_count():
            raise OmnifuseError(
                f"{where}: {name} does not exist; this machine has {torch.cuda.device_count()} GPU(s), "
                f"cuda:0 … cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device(name)
    if name == "mps" and not torch.backends.mps.is_available():
        raise OmnifuseError(
            f"{where}: mps (Apple GPU) is not available on this machine; use device cpu or auto"
        )
    return torch.device(name)


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX tiles). Without it bfloat16
    matrix products are emulated and slower than float32, so ``dtype: fast`` keeps float32 there."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def _dtype(name: str, device: torch.device, where: str, inference: bool) -> torch.dtype:
    if name in ("auto", "fast"):
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        if name == "fast" and device.type == "cpu":
            # Training: the quickstart trained 1.36x faster under bf16 autocast on an AVX512-BF16 CPU;
            # inference: float32 on oneDNN-packed weights decoded 2x faster than bf16 (README, quickstart).
            bf16 = native_cpu_bf16() and not inference
        return torch.bfloat16 if bf16 else torch.float32
    if name not in DTYPES:
        raise OmnifuseError(f"{where}: dtype {name!r} is not one of auto, fast, {', '.join(DTYPES)}")
    if name == "float16" and device.type != "cuda":
        raise OmnifuseError(
            f"{where}: float16 training and inference run on CUDA GPUs only (with a gradient scaler); on "
            f"{device.type} use bfloat16 or float32"
        )
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise OmnifuseError(f"{where}: this GPU does not support bfloat16; use float16 or float32")
    return DTYPES[name]


def resolve_placement(
    spec: RuntimeSpec | None = None,
    device: str | None = None,
    dtype: str | None = None,
    local_rank: int | None = None,
    inference: bool = False,
) -> Placement:
    """``device`` / ``dtype`` (command-line flags) override the recipe's ``runtime`` section. With several
    processes, ``local_rank`` picks each one's GPU. ``inference``: the placement of a model that only
    answers (eval, chat, serve, explain) — ``dtype: fast`` is float32 there on a CPU."""
    spec = spec or RuntimeSpec()
    where = "--device" if device else "runtime.device"
    dev = _device(device or spec.device, local_rank, where)
    name, where = (dtype, "--dtype") if dtype else (spec.dtype, "runtime.dtype")
    return Placement(dev, _dtype(name, dev, where, inference))


def place_model(model: nn.Module, placement: Placement, trained: Collection[str] | None = None) -> nn.Module:
    """Move ``model`` to the placement's device. With mixed precision, floating parameters not named in
    ``trained`` (the parameters no stage trains; None = none is trained: inference) are stored in the
    compute dtype, the trained ones in float32."""
    model.to(placement.device)
    if placement.mixed:
        keep = set(trained or ())
        for name, param in model.named_parameters():
            if param.is_floating_point():
                param.data = param.data.to(torch.float32 if name in keep else placement.dtype)
        _match_buffers(model)
    return model


def _match_buffers(model: nn.Module) -> None:
    """A module's floating buffers follow its own parameters' dtype where those are all in one low dtype:
    a frozen batch norm's running statistics must match its bf16 weight (torch's batch_norm refuses mixed
    dtypes). Buffers of modules without parameters of their own (rotary frequencies) stay as they are."""
    for module in model.modules():
        dtypes = {p.dtype for p in module.parameters(recurse=False) if p.is_floating_point()}
        if len(dtypes) != 1 or dtypes == {torch.float32}:
            continue
        for name, buf in module.named_buffers(recurse=False):
            if buf.is_floating_point():
                setattr(module, name, buf.to(next(iter(dtypes))))


def load_dtype(placement: Placement, float32_storage: bool = False) -> torch.dtype:
    """The dtype a base part's weights are loaded in: under mixed precision a part that no stage trains
    whole is stored in the compute dtype anyway (:func:`place_model`), so it is loaded in it — the load
    never holds a float32 copy of an 8B LLM. ``float32_storage``: the part trains whole, or FSDP keeps
    float32 storage."""
    return placement.dtype if placement.mixed and not float32_storage else torch.float32


def place(model: nn.Module, processor, placement: Placement, trained: Collection[str] | None = None) -> None:
    """:func:`place_model`, and the processor's batches on the same device: the one call that puts a
    built (model, processor) pair somewhere."""
    place_model(model, placement, trained)
    processor.device = placement.device


def placement_of(model: nn.Module) -> Placement:
    """Where a placed model is, and its compute dtype (the low-precision dtype its frozen parameters are
    stored in, if any): what the engine, eval and explain run a forward pass under."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    device = params[0].device if params else torch.device("cpu")
    low = [p.dtype for p in params if p.dtype in (torch.bfloat16, torch.float16)]
    return Placement(device, low[0] if low else torch.float32)


def configure_model(model: nn.Module, spec: RuntimeSpec) -> None:
    """The memory and speed options of ``runtime`` on a built MultimodalLM: attention implementation,
    gradient checkpointing per component, torch.compile of the LLM."""
    if spec.attention != "auto":
        try:
            model.llm.set_attn_implementation(spec.attention)
        except (ValueError, ImportError) as err:
            raise OmnifuseError(f"runtime.attention: {spec.attention} cannot be used here: {err}") from None
    for component in spec.gradient_checkpointing:
        parts = [model.llm] if component == "llm" else list(model.encoders.values())
        for part in parts:
            enable = getattr(part, "gradient_checkpointing_enable", None) or getattr(
                getattr(part, "tower", None), "gradient_checkpointing_enable", None
            )
            if enable is None:
                raise OmnifuseError(
                    f"runtime.gradient_checkpointing: {component}: {type(part).__name__} does not support "
                    "gradient checkpointing (transformers models do); remove it from the list"
                )
            enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.compile:
        model.llm.compile()
