"""Where and how a recipe runs: device, precision, memory options and the distributed strategy.

The ``runtime:`` section is the only part of a recipe that changes between a laptop and a cluster; the
model, data and stages stay as they are. It is not part of what a run *is*: a run started on one GPU
may be resumed on two, or evaluated on a CPU (``--device`` / ``--dtype`` on every verb override it), so
resuming compares recipes without it. :mod:`omnifuse.runtime` turns it into a placement.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from omnifuse.recipe.schema import Spec

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
Dtype = Literal["auto", "fast", "float32", "bfloat16", "float16"]


def check_device(value: str) -> str:
    """``value`` if it names a device omnifuse places models on, else ``ValueError`` naming the choices."""
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"device {value!r} is not one of auto, cpu, cuda, cuda:N (N = 0, 1, …), mps")
    return value


class DistributedSpec(Spec):
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every process holds the whole model, gradients are averaged (the default); fsdp: "
        "parameters, gradients and optimizer state are sharded across processes (torch's fully_shard, one "
        "unit per decoder layer), for LLMs that do not fit one device; needs several processes",
    )
    find_unused_parameters: bool = Field(
        False,
        description="DDP only: let parameters that get no gradient in a step pass (slower; needed only when "
        "a trained part is skipped by some batches)",
    )


def one_process_only(runtime: RuntimeSpec, task: str, privacy: bool = False) -> None:
    """Tasks that train in one process (classify, align) refuse a sharding strategy; with DP-SGD, saying
    why: Opacus' per-sample clipping and noise are not set up over sharded parameters."""
    if runtime.distributed.strategy == "ddp":
        return
    why = "DP-SGD (privacy) clips and noises per-sample gradients in one process (Opacus), not over " \
          "sharded parameters" if privacy else "its models are small"  # fmt: skip
    raise ValueError(
        f"runtime.distributed.strategy: {runtime.distributed.strategy}: task {task} trains in one process "
        f"({why}); remove runtime.distributed (strategy ddp, the default)"
    )


class RuntimeSpec(Spec):
    device: str = Field(
        "auto",
        description="auto (cuda when there is one, else cpu), cpu, cuda, cuda:N, mps; with several processes "
        "each takes the GPU of its local rank",
    )
    dtype: Dtype = Field(
        "auto",
        description="compute precision under autocast: auto (bfloat16 on a GPU that supports it, else float32), "
        "fast (as auto, and bfloat16 on a CPU that computes it natively: AVX512-BF16 or AMX), "
        "float32, bfloat16, float16 (GPU only, with a gradient scaler). Trained parameters keep float32 master "
        "weights; parameters no stage trains are stored in this dtype",
    )
    gradient_checkpointing: tuple[Literal["llm", "encoders"], ...] = Field(
        (),
        description="recompute these components' activations in the backward pass (less memory, ~30 % slower)",
    )
    compile: bool = Field(
        False, description="torch.compile the LLM (first steps are slower while it compiles)"
    )
    packing: bool = Field(
        False,
        description="training: lay several samples end to end in one row of a micro-batch instead of padding "
        "each to the longest (position ids restart per sample, attention and cross-attention media stay per "
        "sample; the loss is unchanged). Next-token stages only; refused with DP-SGD (docs/scaling.md)",
    )
    packing_length: int | None = Field(
        None,
        ge=1,
        description="with packing: the most tokens in a packed row (never below the micro-batch's longest "
        "sample); null: all of a micro-batch in one row (no padding at all). With sdpa / eager attention a row "
        "of L tokens costs L² attention scores, so cap it for long samples; flash_attention_2 needs no cap",
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="the LLM's attention implementation, passed to transformers (auto: its default)"
    )
    threads: int | Literal["auto"] = Field(
        "auto",
        description="CPU only: torch's thread count. auto: the cores other processes leave free, re-measured "
        "every few seconds (OMP_NUM_THREADS, when set, counts as a choice); N: exactly N",
    )
    quantize: Literal["none", "int8", "int4"] = Field(
        "none",
        description="how the LLM's weights are stored at inference (eval, chat, serve, report; --quantize "
        "overrides): int8 on a CPU: torch's dynamic int8 quantisation of the decoder's linear layers (LoRA "
        "merged first; embeddings and the output layer stay float); int8 / int4 on CUDA: bitsandbytes "
        "(LLM.int8 / 4-bit NF4). On CUDA, training with it freezes the LLM in that form (QLoRA with a LoRA "
        "stage); on a CPU training refuses it (docs/serving.md)",
    )
    # YAML reads a bare `off` / `on` as a boolean: false and true are admitted and read as off and auto.
    feature_cache: Literal["auto", "off", False, True] = Field(
        "auto",
        description="keep frozen encoders' outputs on disk (<run>/feature_cache), keyed by the encoder's weights, "
        "its preprocessing and each image's content, and read them back instead of encoding again (later steps, "
        "epochs, stages, evaluation during training): auto = wherever an encoder is frozen in eval mode and the "
        "item is a fixed-size image (not audio or video); off = encode on every step. Off under DDP / FSDP",
    )
    distributed: DistributedSpec = DistributedSpec()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _packing_length(self) -> RuntimeSpec:
        if self.packing_length is not None and not self.packing:
            raise ValueError(
                f"runtime.packing_length: {self.packing_length} sizes packed rows, but runtime.packing is "
                "false; set runtime.packing: true, or remove packing_length"
            )
        if self.packing_length is not None and self.attention == "flash_attention_2":
            raise ValueError(
                f"runtime.packing_length: {self.packing_length} with attention flash_attention_2: transformers "
                "keeps packed samples apart under flash attention only when a micro-batch is one row (its "
                "variable-length path), which is what packing does without packing_length; remove it"
            )
        return self

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _feature_cache(cls, value: object) -> object:
        return ("auto" if value else "off") if isinstance(value, bool) else value

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: object) -> int | str:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        if isinstance(value, str) and value.isdigit() and int(value) >= 1:
            return int(value)
        raise ValueError("threads is auto or a count of threads ≥ 1")


def no_packing(runtime: RuntimeSpec, task: str) -> None:
    """Packing lays token sequences of a generate recipe end to end; other tasks train on fixed-size inputs."""
    if runtime.packing:
        raise ValueError(
            f"runtime.packing: true: task {task} trains on fixed-size features, not token sequences, so there "
            "is no padding to pack away (packing is for generate recipes); remove runtime.packing"
        )


def no_quantize(runtime: RuntimeSpec, task: str) -> None:
    """Quantisation is of a generative recipe's LLM; a classifier's or an alignment's small models have none."""
    if runtime.quantize != "none":
        raise ValueError(
            f"runtime.quantize: {runtime.quantize}: task {task} has no LLM to quantise (quantisation stores a "
            "generate recipe's LLM in int8 / int4); remove runtime.quantize"
        )


__all__ = ["DistributedSpec", "RuntimeSpec", "check_device", "no_quantize", "one_process_only"]
