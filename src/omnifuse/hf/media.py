"""How a batch's media travel between the hf processor and the hf model, as keyword tensors.

Per modality ``m``: ``<m>_values`` (``pixel_values`` for images, transformers' name) holds the
preprocessed items of the whole batch, ``<m>_counts`` how many items each row has (a cross-attention
model's text holds no placeholder to count them by), and for variable-length media (audio)
``<m>_lengths`` each item's real length along the padded last axis."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from omnifuse.errors import OmnifuseError
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Encoded
from omnifuse.processing.processor import IGNORE_INDEX, Batch


def values_key(modality: str) -> str:
    return "pixel_values" if modality == "image" else f"{modality}_values"


def counts_key(modality: str) -> str:
    return f"{modality}_counts"


def lengths_key(modality: str) -> str:
    return f"{modality}_lengths"


def batch_media(model: MultimodalLM) -> set[str]:
    return {f(m) for m in model.encoders for f in (values_key, counts_key, lengths_key)}


def features_of(batch: Batch) -> dict[str, torch.Tensor]:
    """A collated batch as the keyword tensors the hf model takes."""
    out = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    for m, values in batch.media.items():
        out[values_key(m)] = values
        out[counts_key(m)] = torch.tensor(batch.media_counts[m], dtype=torch.long)
        if m in batch.media_lengths:
            out[lengths_key(m)] = batch.media_lengths[m]
    return out


def media_inputs(
    model: MultimodalLM, media: Mapping[str, torch.Tensor], rows: int
) -> tuple[dict[str, torch.Tensor], dict[str, list[int]], dict[str, torch.Tensor]]:
    """(values, counts, lengths) per modality from the keyword tensors; a key this model has no modality
    for is refused (it would otherwise be ignored and the answer given without that input)."""
    unknown = sorted(set(media) - batch_media(model))
    if unknown:
        keys = ", ".join(sorted(batch_media(model)) + ["input_ids", "attention_mask"])
        raise OmnifuseError(f"unknown input(s) {', '.join(unknown)}; this model takes {keys}")
    values, counts, lengths = {}, {}, {}
    for m in model.encoders:
        items = media.get(values_key(m))
        if items is None:
            continue
        per_row = media.get(counts_key(m))
        if per_row is None and rows != 1:
            raise OmnifuseError(f"{values_key(m)} of a batch of {rows} needs {counts_key(m)} (items per row)")
        values[m] = items
        counts[m] = [items.shape[0]] if per_row is None else [int(c) for c in per_row]
        if media.get(lengths_key(m)) is not None:
            lengths[m] = media[lengths_key(m)]
    return values, counts, lengths


def encoded_rows(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    values: Mapping[str, torch.Tensor],
    counts: Mapping[str, list[int]],
    lengths: Mapping[str, torch.Tensor],
) -> list[Encoded]:
    """The batch split back into the encoded prompts omnifuse's engine takes (padding removed)."""
    rows = []
    starts = dict.fromkeys(values, 0)
    for b in range(input_ids.shape[0]):
        ids = input_ids[b][attention_mask[b].bool()].tolist()
        media = {}
        for m, items in values.items():
            n, start = counts[m][b], starts[m]
            own = [items[i] for i in range(start, start + n)]
            if m in lengths:
                own = [t[..., : int(lengths[m][start + k])] for k, t in enumerate(own)]
            media[m], starts[m] = own, start + n
        rows.append(Encoded(f"row-{b}", ids, [IGNORE_INDEX] * len(ids), media))
    return rows
