"""A prompt prefix the rows of a batch share, computed once.

The prompts of a batch usually begin with the same tokens: the chat template's header and the system
prompt. With left padding they start at different columns, so the batch computes that prefix once per
row. :func:`prefix_first` moves each row's padding to just after the longest prefix whose input
embeddings are identical in every row (``[prefix | padding | rest]``); the attention mask hides the
padding and the positions skip it, so every row attends to the same tokens at the same positions as
before. :func:`prefill_plan` then tells the prefill to run those leading columns for one row only and
copy their keys and values to the others (``Cache.batch_repeat_interleave``, transformers' own).

Embeddings are compared, not token ids: a media placeholder only matches where the media are the same.
"""

from __future__ import annotations

import torch

# Fewer shared columns than this are not worth the extra forward pass of one row.
MIN_SHARED = 2


def shared_prefix(embeds: torch.Tensor, mask: torch.Tensor) -> int:
    """The number of leading prompt tokens (after each row's left padding) whose embeddings are identical
    in every row; at most the shortest prompt's length − 1, so that every row keeps a token of its own
    (its last token's logits come from the rows' own pass)."""
    n, width = mask.shape
    if n < 2:
        return 0
    lengths = mask.sum(-1)
    limit = int(lengths.min()) - 1
    if limit < MIN_SHARED:
        return 0
    cols = (width - lengths)[:, None] + torch.arange(limit, device=mask.device)  # each row's first tokens
    rows = embeds.gather(1, cols[..., None].expand(-1, -1, embeds.shape[-1]))
    same = (rows == rows[:1]).all(-1).all(0)
    differ = (~same).nonzero()
    return limit if differ.numel() == 0 else int(differ[0, 0])


def prefix_first(
    embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded rows as ``[prefix | padding | rest]`` when they share a prefix (else unchanged): the
    embeddings, attention mask and positions decoding goes on with. Each row's rest stays in its columns."""
    p = shared_prefix(embeds, mask)
    if p < MIN_SHARED:
        return embeds, mask, positions
    width = mask.shape[1]
    lengths = mask.sum(-1, keepdim=True)
    first = width - lengths  # each row's first real column
    # A row's tokens, shifted left by its padding, then the rest moved back to the end of the row.
    col = torch.arange(width, device=mask.device).expand(mask.shape[0], -1)
    head = col < p  # columns [0, p): the row's prefix tokens, taken from after its padding
    src = torch.where(head, col + first, col)
    new_embeds = embeds.gather(1, src[..., None].expand(-1, -1, embeds.shape[-1]))
    new_mask = torch.cat([mask.new_ones(mask.shape[0], p), mask[:, : width - p]], dim=1)
    new_positions = torch.where(head, col, positions)
    return new_embeds, new_mask, new_positions


def prefill_plan(embeds: torch.Tensor, mask: torch.Tensor) -> int:
    """How many leading columns the prefill may run for one row only: those unmasked in every row with
    identical embeddings everywhere, at most width − 1. 0 when the batch has one row."""
    n, width = mask.shape
    if n < 2:
        return 0
    full = mask.all(0)
    same = (embeds == embeds[:1]).all(-1).all(0) & full
    differ = (~same[: width - 1]).nonzero()
    p = width - 1 if differ.numel() == 0 else int(differ[0, 0])
    return p if p >= MIN_SHARED else 0
