"""The engine's fast paths give the tokens of the plain path: oneDNN-packed linear weights (repacked
when a weight changes) and a shared prompt prefix computed for one row."""

from __future__ import annotations

import pytest
import torch

from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import Message, Sample, TextPart
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.generation.packed import packed_linears, packing_supported
from omnifuse.generation.prefix import prefill_plan, prefix_first, shared_prefix
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import tiny_recipe_dict

needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN (mkldnn)"
)


def early_engine(tiny_parts, color_data) -> Engine:
    model, proc = build_model(parse_recipe(tiny_recipe_dict(color_data)).model, **tiny_parts)
    return Engine(model.eval(), proc)


def xattn_engine(tiny_parts, color_data) -> Engine:
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "heads": 4}
    raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    model, proc = build_model(parse_recipe(raw).model, **tiny_parts)
    return Engine(model.eval(), proc)


def _prompts(color_data) -> list[Sample]:
    samples = load_jsonl(color_data)
    text = Sample("text", (Message("user", (TextPart("the quick brown fox"),)),))
    return [samples[0], samples[3], text, samples[1]]


@needs_onednn
def test_packed_weights_give_the_plain_tokens(tiny_parts, color_data):
    engine, prompts = early_engine(tiny_parts, color_data), _prompts(color_data)
    assert packing_supported(engine.model.llm)
    for cfg in (GenerationConfig(6), GenerationConfig(6, 1.0, 0.9, seed=3)):
        engine.pack_weights = True
        packed = engine.generate_ids(prompts, cfg)
        engine.pack_weights = False
        assert engine.generate_ids(prompts, cfg) == packed
    linears = [m for m in engine.model.llm.modules() if type(m) is torch.nn.Linear]
    assert set(packed_linears(engine.model.llm)._packed) == set(linears)
    # Nothing of the model is left patched once generation is over.
    assert all("forward" not in vars(m) for m in linears)


@needs_onednn
def test_no_packed_copies_where_they_would_not_fit_in_memory(tiny_parts, color_data, monkeypatch):
    from omnifuse.generation import packed

    engine, prompts = early_engine(tiny_parts, color_data), _prompts(color_data)
    monkeypatch.setattr(packed, "MEMORY_SHARE", 0.0)  # no memory to spare: decode unpacked
    assert not packing_supported(engine.model.llm)
    tokens = engine.generate_ids(prompts, GenerationConfig(4))
    assert engine.model.llm not in packed._BY_MODEL
    monkeypatch.setattr(packed, "MEMORY_SHARE", 0.25)
    assert packing_supported(engine.model.llm) and engine.generate_ids(prompts, GenerationConfig(4)) == tokens
    assert engine.model.llm in packed._BY_MODEL
    monkeypatch.setattr(packed, "MEMORY_SHARE", 0.0)  # once packed, memory taken since does not unpack it
    assert packing_supported(engine.model.llm)


@needs_onednn
def test_a_changed_weight_is_packed_again(tiny_parts, color_data):
    engine, prompts = early_engine(tiny_parts, color_data), _prompts(color_data)
    engine.generate_ids(prompts, GenerationConfig(2))
    head = engine.model.llm.lm_head
    before = packed_linears(engine.model.llm)._packed[head][2]
    with torch.no_grad():
        head.weight.mul_(-1.0)  # in place, as an optimiser step does: the version changes, not the storage
    cfg = GenerationConfig(5)
    packed = engine.generate_ids(prompts, cfg)
    assert packed_linears(engine.model.llm)._packed[head][2] is not before
    engine.pack_weights = False
    assert engine.generate_ids(prompts, cfg) == packed


def test_prefix_first_keeps_every_row_in_order():
    torch.manual_seed(0)
    shared, own = torch.randn(4, 3), [torch.randn(k, 3) for k in (2, 5, 1)]
    rows = [torch.cat([shared, o]) for o in own]
    width = max(len(r) for r in rows)
    embeds = torch.zeros(3, width, 3)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):  # left padding, as the engine collates
        embeds[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    assert shared_prefix(embeds, mask) == 4
    new_embeds, new_mask, new_pos = prefix_first(embeds, mask, positions)
    assert new_mask[:, :4].all() and prefill_plan(new_embeds, new_mask) == 4
    for i, r in enumerate(rows):
        keep = new_mask[i].bool()
        assert torch.equal(new_embeds[i, keep], r)
        assert new_pos[i, keep].tolist() == list(range(len(r)))
    # A row of its own, or rows that differ from the first token: nothing moves.
    one = mask[:1]
    assert prefix_first(embeds[:1], one, positions[:1])[1] is one
    assert prefill_plan(embeds, mask) == 0


def test_a_shared_prefix_runs_once_and_gives_the_same_tokens(tiny_parts, color_data, monkeypatch):
    engine, prompts = early_engine(tiny_parts, color_data), _prompts(color_data)
    rows_per_pass = []
    forward = type(engine.model.llm).forward

    def spy(self, **kwargs):
        rows_per_pass.append(kwargs["inputs_embeds"].shape[0])
        return forward(self, **kwargs)

    monkeypatch.setattr(type(engine.model.llm), "forward", spy)
    for cfg in (GenerationConfig(6), GenerationConfig(6, 1.0, 0.9, seed=4)):
        rows_per_pass.clear()
        shared = engine.generate_ids(prompts, cfg)
        assert rows_per_pass[:2] == [1, len(prompts)]  # the prefix for one row, then every row's rest
        assert shared == engine.generate_ids(prompts, cfg, use_cache=False)
        assert shared == engine.generate_ids(prompts, cfg, prefill_chunk=2)
    assert [engine.generate_ids([p], GenerationConfig(6))[0] for p in prompts] == engine.generate_ids(
        prompts, GenerationConfig(6)
    )


def test_cross_attention_shares_no_prefix(tiny_parts, color_data, monkeypatch):
    engine = xattn_engine(tiny_parts, color_data)
    rows_per_pass = []
    forward = type(engine.model.llm).forward

    def spy(self, **kwargs):
        rows_per_pass.append(kwargs["inputs_embeds"].shape[0])
        return forward(self, **kwargs)

    monkeypatch.setattr(type(engine.model.llm), "forward", spy)
    prompts = _prompts(color_data)
    engine.generate_ids(prompts, GenerationConfig(2))
    assert 1 not in rows_per_pass  # every token attends to its own row's media
