"""Early fusion (LLaVA): placeholder tokens in the text are replaced by connector outputs.

Placeholder ids live *outside* the LLM's vocabulary (``vocab_size + k``), so no token is added to the
tokenizer and no embedding row is resized: the LLM's weights stay exactly the pretrained ones. Before
the embedding lookup the placeholders are mapped to id 0 and then overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnifuse.errors import OmnifuseError


def placeholder_mask(input_ids: torch.Tensor, placeholder_ids: Sequence[int]) -> torch.Tensor:
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for pid in placeholder_ids:
        mask |= input_ids == pid
    return mask


def scatter_features(
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    placeholder_id: int,
    features: torch.Tensor,
    counts: Sequence[int],
    sample_ids: Sequence[str] | None = None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write ``features`` ([N_items, T, D], items in batch order) into the placeholder positions.

    ``counts[b]`` is the number of items (e.g. images) of batch row ``b``. Each row must hold exactly
    ``counts[b] * T`` placeholders; otherwise the error names both counts and the sample. Items of
    their own length (audio) give ``lengths`` ([N_items]): only the first ``lengths[i]`` tokens of item
    ``i`` are real, and a row must hold the sum over its items.
    """
    tokens_per_item = features.shape[1]
    per_item = [tokens_per_item] * features.shape[0] if lengths is None else [int(n) for n in lengths]
    is_ph = input_ids == placeholder_id
    found = is_ph.sum(dim=1).tolist()
    start = 0
    for b, (n_found, n_items) in enumerate(zip(found, counts, strict=True)):
        expected = sum(per_item[start : start + n_items])
        start += n_items
        if n_found != expected:
            sid = sample_ids[b] if sample_ids is not None else f"batch row {b}"
            sizes = f"{n_items} item(s) × {tokens_per_item}" if lengths is None else f"{n_items} item(s)"
            raise OmnifuseError(
                f"sample {sid}: the text holds {n_found} placeholder tokens but the connector produced "
                f"{expected} feature tokens ({sizes}); the processor must expand "
                "each media placeholder to the connector's token count (use omnifuse's Processor for this model)"
            )
    if lengths is None:
        flat = features.reshape(-1, features.shape[-1])
    else:
        flat = torch.cat([item[:n] for item, n in zip(features, per_item, strict=True)])
    flat = flat.to(embeds.dtype)
    # masked_scatter fills positions in row-major order, i.e. batch rows in order and, within a row,
    # items left to right: the order in which the processor listed the media.
    return embeds.masked_scatter(is_ph.unsqueeze(-1).expand_as(embeds), flat)
