"""Padding-free training batches: several samples packed into one row (``runtime.packing``).

A micro-batch's samples are laid end to end, by default all in one row, or in as few rows as fit a token
budget (``runtime.packing_length``, first-fit decreasing), instead of one row per sample padded to the
longest. A budget keeps the attention work per row bounded where the mask is materialised: with
``sdpa`` / ``eager`` a row of L tokens costs L² attention scores whatever its samples (a padded batch
costs its rows' L² each), while ``flash_attention_2``'s variable-length kernel costs each sample alone. The rows follow transformers' flattening convention
(``DataCollatorWithFlattening``): ``position_ids`` restart at 0 for every sample and the LLM gets *no*
2-D attention mask. From the restarts transformers derives each token's sequence
(``masking_utils.find_packed_sequence_indices``) and keeps samples apart: a block-diagonal causal mask
for ``sdpa`` / ``eager`` / ``flex_attention``, variable-length kernels for ``flash_attention_2`` (where a
4-D mask would not be accepted at all). A row's unused tail is one more run of positions from 0, so it
is a sequence of its own that no sample attends to; it carries no label.

Rotary positions restart with the sample, so a packed sample computes what it computes alone in an
unpadded row. The first token of every sample carries no label (in a padded batch nothing predicts it),
so the loss stays the mean over exactly the same label tokens. Media follow their samples: items are
listed in the packed sample order, so early fusion scatters them row by row unchanged; cross-attention
fusion binds each row's media with a per-token mask (:func:`omnifuse.fusion.cross_attention.packed_media`).

Which rows a budget allows is decided here by hand (a few lines of first-fit decreasing): transformers
flattens a whole batch into one row and has no bin packing of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from omnifuse.processing.processor import IGNORE_INDEX, Batch, Encoded, Packing, Processor


def plan_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Sample indices per row, longest first, each row at most ``budget`` tokens (first-fit decreasing; a
    sample longer than the budget gets a row of its own). Rows are ordered by their first sample."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(budget - lengths[i])
    return rows


def row_budget(lengths: Sequence[int], budget: int | None) -> int:
    """The token budget of a row: the whole micro-batch in one row without a ``budget`` (transformers'
    flattening convention, no padding at all); else ``budget``, never below the longest sample."""
    return sum(lengths) if budget is None else max(budget, max(lengths))


def collate_packed(processor: Processor, encoded: Sequence[Encoded], budget: int | None = None) -> Batch:
    """A training batch with the samples packed into rows of at most ``row_budget`` tokens (right-padded
    to the longest row); media, their counts and lengths per sample in the packed order."""
    if not encoded:
        raise ValueError("cannot collate an empty batch")
    lengths = [len(e.input_ids) for e in encoded]
    rows = plan_rows(lengths, row_budget(lengths, budget))
    order = [i for row in rows for i in row]
    # Media, counts, lengths and keys per sample in packed order: exactly what collate makes of them.
    batch = processor.collate([encoded[i] for i in order])
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, processor.pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    sample_rows: list[int] = []
    s = 0
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n, e = lengths[i], encoded[i]
            sl = slice(start, start + n)
            ids[r, sl] = torch.tensor(e.input_ids)
            labels[r, sl] = torch.tensor(e.labels)
            labels[r, start] = IGNORE_INDEX  # nothing of this sample precedes its first token
            mask[r, sl] = 1
            segments[r, sl] = s
            positions[r, sl] = torch.arange(n)
            sample_rows.append(r)
            start, s = start + n, s + 1
        positions[r, start:] = torch.arange(width - start)  # the tail: a run of its own
    packing = Packing(positions, segments, tuple(sample_rows))
    device = processor.device
    has_labels = bool((labels != IGNORE_INDEX).any())
    return dataclasses.replace(
        batch,
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        labels=labels.to(device) if has_labels else None,
        packing=packing.to(device),
    )


def padding_fraction(
    lengths: Sequence[int], batch_size: int, packed: bool, budget: int | None = None
) -> float:
    """The share of a batched stream's token slots that hold padding, micro-batches of ``batch_size``
    in order: one padded row per sample, or packed rows (``collate_packed``'s layout)."""
    slots = pad = 0
    for b in range(0, len(lengths), batch_size):
        chunk = list(lengths[b : b + batch_size])
        if packed:
            rows = plan_rows(chunk, row_budget(chunk, budget))
            total = len(rows) * max(sum(chunk[i] for i in row) for row in rows)
        else:
            total = len(chunk) * max(chunk)
        slots += total
        pad += total - sum(chunk)
    return pad / slots if slots else 0.0
