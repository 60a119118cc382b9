"""Quantised LLMs: ``runtime.quantize`` / ``--quantize`` (none, int8, int4) turned into what loads the model.

Two libraries do the work, one per device kind, and nothing here quantises a weight by hand:

- **CPU, int8**: torch's dynamic quantisation (``torch.ao.quantization.quantize_dynamic``) of the LLM's
  ``nn.Linear`` layers that read hidden-size inputs (:func:`dynamic_int8_targets` says which and why) —
  int8 weights (per output channel), activations quantised per tensor at run time, int8 matrix products
  through fbgemm / oneDNN. Applied after the run's weights are loaded and its LoRA
  adapters merged (PEFT's merge, :func:`omnifuse.models.stages.unload_lora`). The token embeddings and the
  output layer (``get_output_embeddings``, tied to the embeddings in SmolLM2 and most small LLMs) stay
  float: the output layer decides every argmax, and quantising a tied matrix would store it twice.
  torch marks ``torch.ao.quantization`` deprecated in favour of torchao, but on this CPU torchao 0.18's
  int8 path in eager mode was 20× slower than torch.ao's kernels at a decoding step's shape and slower
  than float32 (benchmarks/int8_kernels.py, docs/serving.md), so torch.ao it is, while torch ships it.
- **CUDA, int8 / int4**: bitsandbytes through transformers' ``BitsAndBytesConfig`` (LLM.int8 with
  outlier decomposition; 4-bit NF4 with double quantisation, computing in the placement's dtype), applied
  when the LLM loads. On CUDA a recipe that trains with it freezes the LLM in that form and trains LoRA
  on top (QLoRA: PEFT's ``prepare_model_for_kbit_training``). bitsandbytes is the optional ``gpu`` extra.

int4 on a CPU is refused: no library kept here runs 4-bit matrix products on a CPU faster than float.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.models.stages import unload_lora
from omnifuse.recipe.runtime import RuntimeSpec
from omnifuse.runtime import Placement, resolve_placement

QUANTIZE = ("none", "int8", "int4")
WHY_CPU = (
    "on a CPU, omnifuse quantises with torch's dynamic int8 quantisation (inference only: its int8 layers have "
    "no backward pass)"
)


@dataclass(frozen=True)
class QuantizePlan:
    """What a quantisation choice means on a placement: ``dynamic`` (CPU int8 after loading) or the
    ``llm_kwargs`` that make transformers load the LLM through bitsandbytes (CUDA)."""

    mode: str
    dynamic: bool = False
    llm_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def bitsandbytes(self) -> bool:
        return bool(self.llm_kwargs)


def check_quantize(mode: str, where: str = "--quantize") -> str:
    """``mode`` if it is one of none, int8, int4; else one paragraph naming the choices."""
    if mode not in QUANTIZE:
        raise OmnifuseError(
            f"{where} {mode!r} is not one of {', '.join(QUANTIZE)}: int8 stores the LLM's linear layers in 8 bits "
            "(CPU: torch dynamic quantisation; CUDA: bitsandbytes), int4 in 4 bits (CUDA only)"
        )
    return mode


def bnb_config(mode: str, compute_dtype: torch.dtype):
    """The ``BitsAndBytesConfig`` a CUDA load passes to transformers: LLM.int8 (outlier threshold 6, its
    default) or NF4 4-bit with double quantisation (the QLoRA paper's choice), computing in ``compute_dtype``."""
    from transformers import BitsAndBytesConfig

    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def plan_quantize(mode: str, placement: Placement, where: str, training: bool = False) -> QuantizePlan:
    """How ``mode`` is done on ``placement``, or one paragraph saying why it cannot be (checked before
    anything loads): int8 on CPU is dynamic quantisation at inference, refused for float16/bfloat16
    compute and for training; bitsandbytes needs CUDA and the ``gpu`` extra."""
    check_quantize(mode, where)
    if mode == "none":
        return QuantizePlan("none")
    device = placement.device
    if device.type == "cpu" and training:
        raise OmnifuseError(
            f"{where} {mode}: training with a quantised LLM (QLoRA: a 4-bit or 8-bit frozen LLM with LoRA on "
            f"top) needs a CUDA GPU and bitsandbytes; {WHY_CPU}. Train with runtime.quantize: none on this "
            "machine and quantise the trained run when you use it: `omnifuse eval RUN --quantize int8` (also on "
            "chat and serve)"
        )
    if device.type == "cpu" and mode == "int4":
        raise OmnifuseError(
            f"{where} int4 needs CUDA (bitsandbytes 4-bit); {WHY_CPU}, and no library omnifuse keeps runs 4-bit "
            "matrix products on a CPU faster than float32. Use int8 here, or int4 on a CUDA GPU"
        )
    if device.type == "cpu":
        if placement.mixed:
            raise OmnifuseError(
                f"{where} int8 on a CPU computes in float32 between its int8 matrix products; drop --dtype "
                f"{str(placement.dtype).removeprefix('torch.')} (or set runtime.dtype: float32)"
            )
        return QuantizePlan(mode, dynamic=True)
    if device.type != "cuda":
        raise OmnifuseError(
            f"{where} {mode} needs CUDA (bitsandbytes) or a CPU (int8); {device.type} has neither: use --device "
            "cpu --quantize int8, or drop --quantize"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise OmnifuseError(
            f"{where} {mode} on CUDA loads the LLM through bitsandbytes, which is not installed: "
            "`pip install 'omnifuse[gpu]'` (or `pip install bitsandbytes`), or drop --quantize"
        )
    index = device.index if device.index is not None else 0
    config = bnb_config(mode, placement.dtype)
    return QuantizePlan(mode, llm_kwargs={"quantization_config": config, "device_map": {"": index}})


def training_quantize(runtime: RuntimeSpec, placement: Placement | None = None) -> QuantizePlan:
    """The plan of a recipe that trains with ``runtime.quantize`` (``validate`` and ``train`` ask before
    anything loads): bitsandbytes on CUDA (QLoRA); refused on other devices, in one paragraph."""
    if runtime.quantize == "none":
        return QuantizePlan("none")
    placement = placement or resolve_placement(runtime)
    return plan_quantize(runtime.quantize, placement, "runtime.quantize", training=True)


def dynamic_int8_targets(llm: nn.Module) -> list[str]:
    """The names of the LLM's linear layers that CPU int8 quantises: those that read hidden-size inputs
    (attention projections, the MLPs' gate and up projections), but not the output layer, and not the
    layers whose input is wider than the hidden size — the MLPs' down projections. Those read the gated
    intermediate activations, where LLMs carry their few huge outlier activations ("massive
    activations"), and torch's dynamic quantisation takes one activation scale per tensor: the outliers
    would round every other value to zero. Measured on the quickstart run (docs/serving.md): with the
    down projections quantised too, 1000-question accuracy fell to 50.3 %."""
    head = llm.get_output_embeddings()
    head = getattr(head, "base", head)  # inside the grounding tokens' wrapper (llm.grounding_tokens)
    hidden = llm.get_input_embeddings().embedding_dim
    return [
        n
        for n, m in llm.named_modules()
        if type(m) is nn.Linear and m is not head and m.in_features <= hidden
    ]


def quantize_dynamic_int8(model: nn.Module) -> int:
    """Merge ``model``'s LoRA adapters, then replace its LLM's linear layers (but the output layer) by
    torch's dynamically quantised int8 ones, in place; returns how many were replaced. The model must be
    on the CPU in float32 and is for inference only from here on."""
    unload_lora(model, merge=True)
    llm = model.llm
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    spec = dict.fromkeys(dynamic_int8_targets(llm), qconfig)
    with warnings.catch_warnings():  # torch.ao's deprecation notices: omnifuse's choice, not the user's
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(llm, qconfig_spec=spec, inplace=True)
    _own_memory(llm)
    return len(spec)


def _own_memory(module: nn.Module) -> None:
    """Copy the module's remaining float tensors into memory of their own. transformers loads safetensors
    through a memory map and the tensors kept float (embeddings, norms) are views of it: they would keep
    the whole file mapped, the float decoder weights that quantising just read included (~400 MB of
    resident pages for SmolLM2-135M, measured). One copy of the kept tensors lets the mapping go."""
    for sub in module.modules():
        for _, param in sub.named_parameters(recurse=False):
            param.data = param.data.clone()
        for name, buf in sub.named_buffers(recurse=False):
            if buf is not None:
                setattr(sub, name, buf.clone())


def prepare_kbit_training(model: nn.Module, gradient_checkpointing: bool) -> None:
    """QLoRA's preparation of a bitsandbytes-loaded LLM (PEFT): freeze it, keep norms and the output
    layer in float32, make the input embeddings' output require grad (so gradients reach LoRA layers
    under checkpointing). Stages then inject and train LoRA on top as usual."""
    from peft import prepare_model_for_kbit_training

    prepare_model_for_kbit_training(
        model.llm,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gradient_checkpointing else None,
    )


def quantized_linear_count(model: nn.Module) -> int:
    """How many of the LLM's linear layers are quantised (torch's dynamic int8 or bitsandbytes')."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    kinds: tuple[type, ...] = (DynamicLinear,)
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        kinds += (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    return sum(isinstance(m, kinds) for m in model.llm.modules())


__all__ = [
    "QUANTIZE",
    "QuantizePlan",
    "bnb_config",
    "check_quantize",
    "dynamic_int8_targets",
    "plan_quantize",
    "prepare_kbit_training",
    "quantize_dynamic_int8",
    "quantized_linear_count",
    "training_quantize",
]
