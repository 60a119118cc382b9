"""Packed batches (runtime.packing): the row layout, and each sample's loss equal to its loss in a padded
batch, for early (placeholder) and cross-attention fusion, with sdpa and eager attention."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import Message, Sample, TextPart
from omnifuse.models import multimodal
from omnifuse.models.builders import build_model
from omnifuse.processing.packing import Packing, collate_packed, padding_fraction, plan_rows
from omnifuse.processing.processor import IGNORE_INDEX
from omnifuse.recipe import parse_recipe
from tiny import make_parts, tiny_recipe_dict


def test_plan_rows_packs_first_fit_decreasing_within_the_budget():
    lengths = [5, 9, 3, 7, 2, 12]
    rows = plan_rows(lengths, 12)
    assert sorted(i for row in rows for i in row) == list(range(6))  # every sample exactly once
    assert all(sum(lengths[i] for i in row) <= 12 for row in rows)
    assert rows == [[5], [1, 2], [3, 0], [4]]  # 12 | 9+3 | 7+5 | 2
    assert plan_rows([20, 4], 12) == [[0], [1]]  # longer than the budget: a row of its own


def test_padding_fraction_counts_token_slots():
    assert padding_fraction([4, 2, 2], 3, packed=False) == pytest.approx(4 / 12)
    assert padding_fraction([4, 2, 2], 3, packed=True) == 0.0  # rows 4 | 2+2
    assert padding_fraction([4, 3], 2, packed=True) == 0.0  # no budget: one row
    assert padding_fraction([4, 3], 2, packed=True, budget=4) == pytest.approx(1 / 8)  # 4 | 3


def _vary(sample: Sample, k: int, text_only: bool = False) -> Sample:
    """Samples of different lengths: a longer question and answer for larger k; optionally no image."""
    user, answer = sample.messages
    parts = tuple(
        TextPart(p.text + " hello world" * k) if isinstance(p, TextPart) else p
        for p in user.parts
        if isinstance(p, TextPart) or not text_only
    )
    reply = TextPart(answer.parts[0].text + " yes" * (k % 3))
    return Sample(f"{sample.id}-{k}", (Message("user", parts), Message("assistant", (reply,))))


def _samples(color_data) -> list[Sample]:
    base = load_jsonl(color_data)
    return [_vary(base[k % len(base)], k, text_only=k == 3) for k in range(7)]


def _model(color_data, fusion: str, attention: str):
    raw = tiny_recipe_dict(color_data)
    if fusion == "cross_attention":
        raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "heads": 4}
        raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    model, proc = build_model(parse_recipe(raw).model, **make_parts())
    model.llm.set_attn_implementation(attention)
    if fusion == "cross_attention":  # open gates: the blocks change the output (they start at 0)
        with torch.no_grad():
            for block in model.fusion.blocks:
                block.attn_gate.fill_(1.0)
                block.ffn_gate.fill_(0.5)
    return model.eval(), proc


def per_sample_loss(model, batch) -> dict[str, float]:
    """Each sample's mean next-token loss over its own label tokens, from the full logits of a batch."""
    with torch.no_grad():
        logits = model(**(batch.model_inputs() | {"labels": None})).logits
    if batch.packing is not None:
        owner = batch.packing.segments
    else:
        rows = torch.arange(batch.input_ids.shape[0])[:, None].expand_as(batch.input_ids)
        owner = torch.where(batch.attention_mask.bool(), rows, -1)
    targets = batch.labels[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    scored = (targets != IGNORE_INDEX) & (owner[:, 1:] == owner[:, :-1])  # predicted within the sample
    return {sid: float(ce[scored & (owner[:, 1:] == s)].mean()) for s, sid in enumerate(batch.sample_ids)}


def test_the_packed_layout(color_data, chatml_tokenizer):
    model, proc = _model(color_data, "early", "sdpa")
    encoded = [proc.encode(s) for s in _samples(color_data)]
    padded = proc.collate(encoded)
    packed = collate_packed(proc, encoded, budget=150)
    pk = packed.packing
    assert packed.input_ids.shape[0] < len(encoded) and packed.input_ids.shape[1] <= 150
    assert sorted(packed.sample_ids) == sorted(padded.sample_ids)
    assert int(packed.attention_mask.sum()) == int(padded.attention_mask.sum())  # every real token, once
    # The same label tokens (a padded batch never predicts a row's first token, so neither do packed rows).
    assert int((packed.labels != IGNORE_INDEX).sum()) == int((padded.labels[:, 1:] != IGNORE_INDEX).sum())
    by_id = {e.sample_id: e for e in encoded}
    for s, sid in enumerate(packed.sample_ids):
        where = pk.segments == s
        assert packed.input_ids[where].tolist() == by_id[sid].input_ids
        assert pk.position_ids[where].tolist() == list(range(len(by_id[sid].input_ids)))
        assert int(where.nonzero()[0, 0]) == pk.rows[s]
    # Media follow the samples, listed in the packed order (the text-only sample has none).
    counts = {sid: len(by_id[sid].media.get("image", [])) for sid in packed.sample_ids}
    assert packed.media_counts["image"] == list(counts.values()) and 0 in counts.values()
    assert packed.media["image"].shape[0] == sum(counts.values())


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_a_packed_batch_gives_each_sample_its_padded_loss(color_data, fusion, attention, monkeypatch):
    model, proc = _model(color_data, fusion, attention)
    encoded = [proc.encode(s) for s in _samples(color_data)]
    padded = proc.collate(encoded)
    packed = collate_packed(proc, encoded, budget=150)
    assert max(pk_row := [packed.packing.rows.count(r) for r in set(packed.packing.rows)]) >= 2, pk_row
    expected, got = per_sample_loss(model, padded), per_sample_loss(model, packed)
    assert expected.keys() == got.keys()
    for sid in expected:
        assert got[sid] == pytest.approx(expected[sid], abs=1e-5), sid
    with torch.no_grad():  # and the batch loss, the mean over all label tokens
        assert float(model(**packed.model_inputs()).loss) == pytest.approx(
            float(model(**padded.model_inputs()).loss), abs=1e-5
        )
    # The check can fail: positions that do not restart let samples of a row attend to each other …
    pk = packed.packing
    flat = torch.arange(pk.position_ids.shape[1]).expand_as(pk.position_ids).clone()
    leaky = per_sample_loss(model, dataclasses.replace(packed, packing=Packing(flat, pk.segments, pk.rows)))
    assert max(abs(leaky[s] - expected[s]) for s in expected) > 1e-4
    if fusion == "cross_attention":  # … and so do tokens that see every image of their row
        real = multimodal.packed_media

        def whole_row(features, mask, segments, rows):
            feats, row_mask, _ = real(features, mask, segments, rows)
            return feats, row_mask, row_mask[:, None, :].expand(-1, segments.shape[1], -1)

        monkeypatch.setattr(multimodal, "packed_media", whole_row)
        mixed = per_sample_loss(model, packed)
        assert max(abs(mixed[s] - expected[s]) for s in expected) > 1e-3
