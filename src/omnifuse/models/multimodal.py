"""MultimodalLM: encoders → connectors → fusion → any Hugging Face causal LM.

Composition by constructor injection (built parts in, no configs): ``omnifuse.models.builders``
turns a recipe into the parts. Parameter names are ``encoders.<modality>.*``,
``connectors.<modality>.*``, ``llm.*`` and, with cross-attention fusion, ``fusion.*``; a stage's
``trainable`` keys are these module paths.

Two fusions: early (``fusion=None``: connector outputs replace placeholder tokens in the text) and
intermediate (``fusion`` = a :class:`~omnifuse.fusion.CrossAttentionFusion` already attached to the
LLM: the text holds no media tokens, gated blocks in the decoder cross-attend to the connector outputs).
:meth:`MultimodalLM.fuse` is the one entry point for both: it yields the LLM's input embeddings and,
for cross-attention, keeps the media bound to the blocks while the caller runs the LLM.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from omnifuse.errors import OmnifuseError
from omnifuse.fusion import CrossAttentionFusion, placeholder_mask, scatter_features
from omnifuse.fusion.cross_attention import packed_media
from omnifuse.processing.processor import IGNORE_INDEX, Packing


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
        fusion: CrossAttentionFusion | None = None,
    ) -> None:
        super().__init__()
        if set(encoders) != set(connectors) or set(encoders) != set(placeholder_ids):
            raise ValueError("encoders, connectors and placeholder_ids must name the same modalities")
        self.encoders = nn.ModuleDict(encoders)
        self.connectors = nn.ModuleDict(connectors)
        self.llm = llm
        self.placeholder_ids = dict(placeholder_ids)
        self.fusion = fusion  # None = early fusion
        # Frozen encoders' outputs on disk, looked up by each item's content hash (Batch.media_keys): a
        # FeatureCache, attached by whoever runs the model (omnifuse.models.feature_cache; not imported
        # here, as it imports this module's builders).
        self.feature_cache = None

    def media_tokens_per_item(self, modality: str, length: int | None = None) -> int:
        """How many feature tokens the connector makes of one item (image) of this modality; for
        variable-length media (audio) of an item of ``length`` frames (default: the longest allowed)."""
        encoder = self.encoders[modality]
        n = encoder.num_tokens() if length is None else encoder.num_tokens(length)
        return self.connectors[modality].num_output_tokens(n)

    def media_grid(self, modality: str) -> tuple[int, int] | None:
        """(rows, cols) when the connector's tokens for one item are a row-major grid over the encoder's
        input image (each token stands for one region), else None: a single pooled token, learned
        latents or queries, or an encoder whose tokens are no single grid. Encoders declare
        ``token_grid()``, connectors ``output_grid(input_grid)`` (omnifuse.components); either may say None."""
        grid = self.connectors[modality].output_grid(self.encoders[modality].token_grid())
        if grid is None or grid[0] * grid[1] != self.media_tokens_per_item(modality):
            return None
        return grid

    def tokens_per_item(self, modality: str, length: int | None = None) -> int:
        """How many placeholder tokens one item of this modality becomes in the text: the connector's
        token count with early fusion, none with cross-attention (the media never enter the text)."""
        return 0 if self.fusion is not None else self.media_tokens_per_item(modality, length)

    def encode(
        self,
        modality: str,
        pixel_values: torch.Tensor,
        lengths: torch.Tensor | None = None,
        keys: Sequence[str | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Connector outputs ``[N, T, D]`` of a modality's items, and for variable-length media (audio,
        ``lengths`` = each item's real length along the padded last axis) each item's token count.
        Variable-length encoders and connectors take and return ``(features, lengths)``. ``keys``: each
        item's content hash; with a feature cache attached, a frozen encoder's outputs come from it."""
        encoder = self.encoders[modality]
        # A frozen encoder needs no autograd graph (saves memory and time), unless the caller asks for
        # gradients with respect to the pixels themselves (attribution, omnifuse.explain).
        trains = any(p.requires_grad for p in encoder.parameters()) or pixel_values.requires_grad
        cache = self.feature_cache
        if cache is not None and keys is not None and lengths is None and not trains and not encoder.training:
            return self.connectors[modality](cache.encode(modality, encoder, pixel_values, keys)), None
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            features = encoder(pixel_values) if lengths is None else encoder(pixel_values, lengths)
        if lengths is None:
            return self.connectors[modality](features), None
        return self.connectors[modality](*features)

    def embed(
        self,
        input_ids: torch.Tensor,
        media: Mapping[str, torch.Tensor],
        media_counts: Mapping[str, Sequence[int]],
        sample_ids: Sequence[str] | None = None,
        media_lengths: Mapping[str, torch.Tensor] | None = None,
        media_keys: Mapping[str, Sequence[str | None]] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with each modality's placeholders replaced by its connector outputs (early
        fusion; :meth:`fuse` covers both fusions)."""
        is_ph = placeholder_mask(input_ids, list(self.placeholder_ids.values()))
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_ph, 0))
        media_lengths, media_keys = media_lengths or {}, media_keys or {}
        for modality, pid in self.placeholder_ids.items():
            pixels = media.get(modality)
            counts = media_counts.get(modality) or [0] * input_ids.shape[0]
            lengths = None
            if pixels is None or pixels.shape[0] == 0:
                features = embeds.new_zeros(0, 0, embeds.shape[-1])
            else:
                features, lengths = self.encode(
                    modality, pixels, media_lengths.get(modality), media_keys.get(modality)
                )
            embeds = scatter_features(embeds, input_ids, pid, features, counts, sample_ids, lengths)
        return embeds

    def media_sequence(
        self,
        media: Mapping[str, torch.Tensor],
        media_counts: Mapping[str, Sequence[int]],
        batch_size: int,
        media_lengths: Mapping[str, torch.Tensor] | None = None,
        media_keys: Mapping[str, Sequence[str | None]] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each sample's connector outputs, all its items (modalities in model order, items in text order)
        concatenated and padded: ``[B, M, D]`` features and a ``[B, M]`` mask; (None, None) without media."""
        rows: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
        for modality in self.connectors:
            pixels = media.get(modality)
            if pixels is None or pixels.shape[0] == 0:
                continue
            counts = list(media_counts.get(modality) or [])
            if len(counts) != batch_size or sum(counts) != pixels.shape[0]:
                raise OmnifuseError(
                    f"{modality}: media_counts {counts} do not account for the {pixels.shape[0]} item(s) of a "
                    f"batch of {batch_size}; build batches with omnifuse's Processor.collate"
                )
            features, lengths = self.encode(
                modality, pixels, (media_lengths or {}).get(modality), (media_keys or {}).get(modality)
            )
            per_item = [features.shape[1]] * features.shape[0] if lengths is None else lengths.tolist()
            start = 0
            for b, n_items in enumerate(counts):
                rows[b].extend(features[i, : per_item[i]] for i in range(start, start + n_items))
                start += n_items
        if not any(rows):
            return None, None
        seqs = [torch.cat(r) if r else features.new_zeros(0, features.shape[-1]) for r in rows]
        padded = nn.utils.rnn.pad_sequence(seqs, batch_first=True)
        lengths = torch.tensor([s.shape[0] for s in seqs], device=padded.device)
        mask = torch.arange(padded.shape[1], device=padded.device)[None, :] < lengths[:, None]
        return padded, mask

    @contextmanager
    def fuse(
        self,
        input_ids: torch.Tensor,
        media: Mapping[str, torch.Tensor],
        media_counts: Mapping[str, Sequence[int]],
        sample_ids: Sequence[str] | None = None,
        media_lengths: Mapping[str, torch.Tensor] | None = None,
        media_keys: Mapping[str, Sequence[str | None]] | None = None,
        packing: Packing | None = None,
    ) -> Iterator[torch.Tensor]:
        """``with model.fuse(...) as embeds: model.llm(inputs_embeds=embeds, ...)`` — the one way to feed
        a batch to the LLM. Early fusion: the embeddings carry the media. Cross-attention: plain token
        embeddings, and the media stay bound to the gated blocks until the ``with`` ends (a generation
        loop keeps them bound across all its decoding steps). ``packing``: several samples per row
        (``media_counts`` per sample, omnifuse.processing.packing); each token meets its sample's media."""
        if packing is not None and self.fusion is None:  # placeholders are scattered row by row
            media_counts = {m: packing.row_counts(c) for m, c in media_counts.items()}
            sample_ids = packing.row_names(sample_ids) if sample_ids is not None else None
        if self.fusion is None:
            yield self.embed(input_ids, media, media_counts, sample_ids, media_lengths, media_keys)
            return
        embeds = self.llm.get_input_embeddings()(input_ids)
        samples = input_ids.shape[0] if packing is None else len(packing.rows)
        features, mask = self.media_sequence(media, media_counts, samples, media_lengths, media_keys)
        if features is None:
            features = embeds.new_zeros(samples, 0, embeds.shape[-1])
            mask = torch.zeros(samples, 0, dtype=torch.bool, device=embeds.device)
        token_mask = None
        if packing is not None:
            features, mask, token_mask = packed_media(features, mask, packing.segments, packing.rows)
        with self.fusion.bind(features, mask, token_mask):
            yield embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: Mapping[str, torch.Tensor],
        media_counts: Mapping[str, Sequence[int]],
        labels: torch.Tensor | None = None,
        sample_ids: Sequence[str] | None = None,
        media_lengths: Mapping[str, torch.Tensor] | None = None,
        media_keys: Mapping[str, Sequence[str | None]] | None = None,
        packing: Packing | None = None,
    ) -> LMOutput:
        fused = (input_ids, media, media_counts, sample_ids, media_lengths, media_keys, packing)
        # Packed rows follow transformers' flattening convention: no 2-D mask, positions restarting per
        # sample, from which the LLM's attention keeps the samples apart (omnifuse.processing.packing).
        masking = {"attention_mask": attention_mask} if packing is None else \
            {"attention_mask": None, "position_ids": packing.position_ids}  # fmt: skip
        if labels is None:
            with self.fuse(*fused) as embeds:
                out = self.llm(inputs_embeds=embeds, **masking, use_cache=False)
            return LMOutput(None, out.logits, 0)
        # Logits only where a label is predicted: the LM head over a 49k vocabulary would otherwise
        # cost about a quarter of a small LLM's forward pass on prompt tokens that carry no loss.
        targets = labels[:, 1:]
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        with self.fuse(*fused) as embeds:
            out = self.llm(inputs_embeds=embeds, **masking, use_cache=False, logits_to_keep=keep)
        logits = out.logits
        kept_targets = targets[:, keep]
        n = int((kept_targets != IGNORE_INDEX).sum())
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), kept_targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return LMOutput(loss, logits, n)
