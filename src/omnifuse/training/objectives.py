"""What one micro-batch of a stage computes: the stage's ``objective.type`` picks a step function.

A step function takes the model, the processor, the micro-batch's samples and the stage, and returns
the loss to back-propagate, its named parts (logged to metrics.jsonl beside the loss) and a token count
for the throughput figure. The table of objectives lives in ``training.loop``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from omnifuse.data.sample import Sample, with_transcript
from omnifuse.errors import OmnifuseError
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.processing.packing import collate_packed
from omnifuse.processing.processor import IGNORE_INDEX
from omnifuse.recipe import RuntimeSpec, StageSpec


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)  # named loss terms, logged as they are
    num_tokens: int = 0
    # What ``loss`` is a mean over (label tokens, or samples): the loop weights micro-batches and
    # processes by it, so a step's loss is the mean over all of its tokens however it is split.
    weight: int = 1


# Attention implementations for which transformers turns restarting position ids into per-sample
# attention (masking_utils.find_packed_sequence_indices; flash attention's variable-length path).
# Flash attention's path takes one row only (modeling_flash_attention_utils._is_packed_sequence).
PACKED_ATTENTION = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3")
ONE_ROW_ATTENTION = ("flash_attention_2", "flash_attention_3")

Step = Callable[[MultimodalLM, Processor, Sequence[Sample], StageSpec], StepOutput]


def generative_step(
    model: MultimodalLM, processor: Processor, samples: Sequence[Sample], stage: StageSpec
) -> StepOutput:
    """Next-token loss on the assistant turns, through the LLM (every stage before Q-Former existed)."""
    batch = processor.collate([processor.encode(s) for s in samples])
    out = model(**batch.model_inputs())
    return StepOutput(out.loss, {}, int(batch.attention_mask.sum()), out.num_label_tokens)


def packed_generative_step(
    model: MultimodalLM,
    processor: Processor,
    samples: Sequence[Sample],
    stage: StageSpec,
    budget: int | None = None,
) -> StepOutput:
    """:func:`generative_step` over packed rows (``runtime.packing``, omnifuse.processing.packing): the same
    samples and label tokens, so the same mean loss, with less padding."""
    attention = getattr(model.llm.config, "_attn_implementation", None)
    if attention not in PACKED_ATTENTION:
        raise OmnifuseError(
            f"runtime.packing: the LLM's attention implementation {attention!r} is not known to keep packed "
            f"samples apart (transformers does so for {', '.join(PACKED_ATTENTION)}); set runtime.attention "
            "to sdpa, or remove runtime.packing"
        )
    batch = collate_packed(processor, [processor.encode(s) for s in samples], budget)
    if attention in ONE_ROW_ATTENTION and batch.input_ids.shape[0] > 1:
        raise OmnifuseError(
            f"runtime.packing with {attention}: transformers keeps packed samples apart only in a batch of "
            "one row (its variable-length path), and this micro-batch packs into "
            f"{batch.input_ids.shape[0]} rows; remove runtime.packing_length"
        )
    out = model(**batch.model_inputs())
    return StepOutput(out.loss, {}, int(batch.attention_mask.sum()), out.num_label_tokens)


def with_packing(step: Step, stage: StageSpec, runtime: RuntimeSpec, note: Callable[[str], None]) -> Step:
    """The stage's step function under ``runtime.packing``: the next-token objective packs its rows; the
    others train as they are (a Q-Former's image-caption pairs and distillation's paired batches are not
    LLM rows to pack), said once through ``note``. DP-SGD, which needs one sample per row, is refused by
    the recipe (privacy with runtime.packing)."""
    if not runtime.packing:
        return step
    if stage.objective.type != "lm":
        note(
            f"stage {stage.name}: objective {stage.objective.type} trains unpacked (runtime.packing packs the "
            "rows of the next-token objective lm only)"
        )
        return step
    return functools.partial(packed_generative_step, budget=runtime.packing_length)


def _answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[n, V]`` and targets ``[n]`` at the predicted answer tokens, rows in order."""
    targets = labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    kept = targets[:, keep]
    where = kept != IGNORE_INDEX
    return logits[where], kept[where]


def distill_step(
    model: MultimodalLM, processor: Processor, samples: Sequence[Sample], stage: StageSpec
) -> StepOutput:
    """Knowledge distillation across modalities (Ultravox): the model hearing the question is pulled
    towards the answer distribution of the same model reading the transcript (the teacher runs without
    gradients), ``w·T²·KL(teacher ‖ student) + (1 − w)·next-token loss`` over the answer tokens."""
    heard = processor.collate([processor.encode(s) for s in samples])
    read = processor.collate([processor.encode(with_transcript(s)) for s in samples])
    with torch.no_grad():
        teacher = model(**read.model_inputs())
    student = model(**heard.model_inputs())
    s_logits, s_targets = _answer_logits(student.logits, heard.labels)
    t_logits, t_targets = _answer_logits(teacher.logits, read.labels)
    if not torch.equal(s_targets, t_targets):
        raise OmnifuseError(
            "distill: the answers tokenise differently with the clip and with its transcript; check that "
            "meta.transcript holds only the question"
        )
    temp, w = stage.objective.temperature, stage.objective.weight
    kd = F.kl_div(
        F.log_softmax(s_logits.float() / temp, dim=-1),
        F.log_softmax(t_logits.float() / temp, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (temp**2)
    loss = w * kd + (1 - w) * student.loss
    parts = {"kd": round(kd.item(), 6), "ce": round(student.loss.item(), 6)}
    return StepOutput(loss, parts, int(heard.attention_mask.sum()), int(s_targets.numel()))


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B]``: each sample's mean next-token loss over its own label tokens (0 for a sample without any),
    from the logits ``MultimodalLM`` keeps (the positions where some row has a label)."""
    targets = labels[:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    kept = targets[:, keep]
    ce = F.cross_entropy(logits.float().transpose(1, 2), kept, ignore_index=IGNORE_INDEX, reduction="none")
    return ce.sum(dim=1) / (kept != IGNORE_INDEX).sum(dim=1).clamp(min=1)


def private_lm_step(
    model: MultimodalLM, processor: Processor, samples: Sequence[Sample], stage: StageSpec
) -> StepOutput:
    """The next-token objective as DP-SGD needs it: the *sum* of per-sample losses, each the mean over that
    sample's answer tokens, so that one sample's gradient does not depend on the rest of its batch (the
    token-weighted mean of ``generative_step`` divides every sample by the batch's token count)."""
    batch = processor.collate([processor.encode(s) for s in samples])
    out = model(**batch.model_inputs())
    losses = per_sample_losses(out.logits, batch.labels)
    return StepOutput(losses.sum(), {}, int(batch.attention_mask.sum()), len(samples))
