"""What one micro-batch of a stage computes: the stage's ``objective`` picks a step function.

A step function takes the model, the processor and the micro-batch's samples and returns the loss to
back-propagate, its named parts (logged to metrics.jsonl beside the loss) and a token count for the
throughput figure. The table of objectives lives in ``training.loop``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from omnifuse.data.sample import Sample
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor


@dataclass
class StepOutput:
    loss: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)  # named loss terms, logged as they are
    num_tokens: int = 0


def generative_step(model: MultimodalLM, processor: Processor, samples: Sequence[Sample]) -> StepOutput:
    """Next-token loss on the assistant turns, through the LLM (every stage before Q-Former existed)."""
    batch = processor.collate([processor.encode(s) for s in samples])
    out = model(**batch.model_inputs())
    return StepOutput(out.loss, {}, int(batch.attention_mask.sum()))
