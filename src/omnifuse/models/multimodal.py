"""MultimodalLM: encoders → connectors → early fusion → any Hugging Face causal LM.

Composition by constructor injection (built parts in, no configs): ``omnifuse.models.builders``
turns a recipe into the parts. Parameter names are ``encoders.<modality>.*``,
``connectors.<modality>.*`` and ``llm.*``; a stage's ``trainable`` keys are these module paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from omnifuse.fusion import placeholder_mask, scatter_features

IGNORE_INDEX = -100


@dataclass
class LMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # only at the positions that predict a label when labels are given
    num_label_tokens: int


class MultimodalLM(nn.Module):
    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        connectors: Mapping[str, nn.Module],
        llm: nn.Module,
        placeholder_ids: Mapping[str, int],
    ) -> None:
        super().__init__()
        if set(encoders) != set(connectors) or set(encoders) != set(placeholder_ids):
            raise ValueError("encoders, connectors and placeholder_ids must name the same modalities")
        self.encoders = nn.ModuleDict(encoders)
        self.connectors = nn.ModuleDict(connectors)
        self.llm = llm
        self.placeholder_ids = dict(placeholder_ids)

    def tokens_per_item(self, modality: str) -> int:
        """How many placeholder tokens one item (image) of this modality becomes in the text."""
        return self.connectors[modality].num_output_tokens(self.encoders[modality].num_tokens())

    def encode(self, modality: str, pixel_values: torch.Tensor) -> torch.Tensor:
        encoder = self.encoders[modality]
        # A frozen encoder needs no autograd graph: skip it to save memory and time.
        trains = any(p.requires_grad for p in encoder.parameters())
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            features = encoder(pixel_values)
        return self.connectors[modality](features)

    def embed(
        self,
        input_ids: torch.Tensor,
        media: Mapping[str, torch.Tensor],
        media_counts: Mapping[str, Sequence[int]],
        sample_ids: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with each modality's placeholders replaced by its connector outputs."""
        is_ph = placeholder_mask(input_ids, list(self.placeholder_ids.values()))
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_ph, 0))
        for modality, pid in self.placeholder_ids.items():
            pixels = media.get(modality)
            counts = media_counts.get(modality) or [0] * input_ids.shape[0]
            if pixels is None or pixels.shape[0] == 0:
                features = embeds.new_zeros(0, self.tokens_per_item(modality), embeds.shape[-1])
            else:
                features = self.encode(modality, pixels)
            embeds = scatter_features(embeds, input_ids, pid, features, counts, sample_ids)
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: Mapping[str, torch.Tensor],
        media_counts: Mapping[str, Sequence[int]],
        labels: torch.Tensor | None = None,
        sample_ids: Sequence[str] | None = None,
    ) -> LMOutput:
        embeds = self.embed(input_ids, media, media_counts, sample_ids)
        if labels is None:
            out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
            return LMOutput(None, out.logits, 0)
        # Logits only where a label is predicted: the LM head over a 49k vocabulary would otherwise
        # cost about a quarter of a small LLM's forward pass on prompt tokens that carry no loss.
        targets = labels[:, 1:]
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        out = self.llm(
            inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep
        )
        logits = out.logits
        kept_targets = targets[:, keep]
        n = int((kept_targets != IGNORE_INDEX).sum())
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), kept_targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return LMOutput(loss, logits, n)
