"""FastV token pruning in the engine: keeping every token changes nothing, pruning shortens the KV cache
of every layer, batches equal one prompt at a time, the ranking is the layer's real attention, and
models it cannot apply to are refused."""

from __future__ import annotations

import pytest
import torch

from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.fusion import placeholder_mask
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.generation.fastv import TokenPruning, last_token_attention, pruned_prefill
from omnifuse.models.builders import build_model
from omnifuse.models.stages import prepare_lora
from omnifuse.recipe import parse_recipe
from tiny import tiny_recipe_dict


def built(tiny_parts, color_data, **model):
    raw = tiny_recipe_dict(color_data)
    raw["model"].update(model)
    return build_model(parse_recipe(raw).model, **tiny_parts)


def prompts(color_data) -> list[Sample]:
    """Images with questions of several lengths (left padding), and a text-only prompt."""
    samples = load_jsonl(color_data)
    longer = Sample(
        "long", (Message("user", (ImagePart(path=samples[2].images()[0]), TextPart("red blue " * 8))),)
    )
    text_only = Sample("text", (Message("user", (TextPart("the quick brown fox"),)),))
    return [samples[0], longer, text_only, samples[1]]


def prefill(engine: Engine, batch_prompts, pruning: TokenPruning):
    encoded = [engine.processor.encode(p, for_generation=True) for p in batch_prompts]
    batch = engine.processor.collate(encoded, padding_side="left")
    model = engine.model
    with torch.no_grad():
        embeds = model.embed(batch.input_ids, batch.media, batch.media_counts)
    mask = batch.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    media = placeholder_mask(batch.input_ids, list(model.placeholder_ids.values()))
    return batch, pruned_prefill(model.llm, embeds, mask, positions, media, pruning)


def test_keeping_every_token_gives_the_same_tokens(tiny_parts, color_data):
    model, proc = built(tiny_parts, color_data)
    model.eval()
    batch = prompts(color_data)
    cfg = GenerationConfig(6)
    plain = Engine(model, proc).generate_ids(batch, cfg)
    assert Engine(model, proc, TokenPruning(layer=1, keep=1.0)).generate_ids(batch, cfg) == plain
    # The same logits too: the split prefill is the same computation.
    _, whole = prefill(Engine(model, proc, TokenPruning(1, 1.0)), batch, TokenPruning(1, 1.0))
    encoded = [proc.encode(p, for_generation=True) for p in batch]
    b = proc.collate(encoded, padding_side="left")
    with torch.no_grad():
        ref = model.llm(
            inputs_embeds=model.embed(b.input_ids, b.media, b.media_counts),
            attention_mask=b.attention_mask,
            position_ids=(b.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits[:, -1:]
    torch.testing.assert_close(whole.logits, ref, rtol=1e-5, atol=1e-5)


def test_pruning_shortens_every_layers_cache_and_keeps_positions(tiny_parts, color_data):
    model, proc = built(tiny_parts, color_data)
    model.eval()
    batch = [load_jsonl(color_data)[0], load_jsonl(color_data)[1]]
    engine = Engine(model, proc, TokenPruning(layer=1, keep=0.25))
    b, out = prefill(engine, batch, TokenPruning(layer=1, keep=0.25))
    n_media = model.media_tokens_per_item("image")  # 16 tokens per image, 4 kept
    assert out.mask.shape[1] == b.input_ids.shape[1] - (n_media - 4)
    lengths = {layer.keys.shape[2] for layer in out.cache.layers}
    assert lengths == {out.mask.shape[1]}
    # Kept tokens keep their original positions: the last prompt token's position is unchanged.
    assert out.positions[:, -1].tolist() == (b.attention_mask.sum(-1) - 1).tolist()
    answers = engine.generate_ids(batch, GenerationConfig(5))
    assert all(len(a) > 0 for a in answers)


def test_batched_left_padded_prompts_equal_one_by_one(tiny_parts, color_data):
    model, proc = built(tiny_parts, color_data)
    model.eval()
    engine = Engine(model, proc, TokenPruning(layer=1, keep=0.5))
    batch = prompts(color_data)
    cfg = GenerationConfig(6)
    together = engine.generate_ids(batch, cfg)
    assert together == [engine.generate_ids([p], cfg)[0] for p in batch]


def test_ranking_is_the_layers_attention(tiny_parts, color_data):
    """The attention rebuilt from q_proj / the cached keys equals transformers' eager attention weights,
    with LoRA adapters (trained-looking) on the projections as a trained run has them."""
    model, proc = built(tiny_parts, color_data)
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    prepare_lora(model, ["llm"], recipe.lora)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    b_prompts = prompts(color_data)[:2]
    encoded = [proc.encode(p, for_generation=True) for p in b_prompts]
    b = proc.collate(encoded, padding_side="left")
    mask = b.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    llm = model.llm
    layer = llm.model.layers[0]
    seen = {}
    hook = layer.self_attn.register_forward_pre_hook(
        lambda _m, a, kw: seen.update(
            x=kw.get("hidden_states", a[0] if a else None), pe=kw["position_embeddings"]
        ),
        with_kwargs=True,
    )
    llm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            embeds = model.embed(b.input_ids, b.media, b.media_counts)
            out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                      output_attentions=True)  # fmt: skip
    finally:
        hook.remove()
        llm.set_attn_implementation("sdpa")
    expected = out.attentions[0][:, :, -1, :].mean(dim=1)
    cos, sin = (t[:, -1:] for t in seen["pe"])
    keys = out.cache.layers[0].keys
    got = last_token_attention(layer.self_attn, seen["x"][:, -1:], cos, sin, keys, mask)
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)


def test_refused_where_it_cannot_apply(tiny_parts, color_data):
    model, proc = built(tiny_parts, color_data)
    with pytest.raises(OmnifuseError, match="decoder layers"):
        Engine(model, proc, TokenPruning(layer=2, keep=0.5))  # the tiny LLM has 2 layers
    with pytest.raises(ValueError, match="keep ratio"):
        TokenPruning(layer=1, keep=0.0)
    xattn, xproc = built(
        tiny_parts,
        color_data,
        connectors={"image": {"type": "perceiver", "num_latents": 3, "heads": 4}},
        fusion={"type": "cross_attention", "every_n": 1, "heads": 4},
    )
    with pytest.raises(OmnifuseError, match="cross-attention"):
        Engine(xattn, xproc, TokenPruning(layer=1, keep=0.5))
