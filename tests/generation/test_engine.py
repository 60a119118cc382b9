"""The generation engine: cached and uncached decoding agree, batched equals one by one, sampling is
seeded, a prompt prefilled in chunks gives the same tokens, interleaved streams keep their own media."""

from __future__ import annotations

import pytest
import torch

from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.generation.engine import Engine, GenerationConfig, generation_config
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import tiny_recipe_dict


def early_engine(tiny_parts, color_data):
    model, proc = build_model(parse_recipe(tiny_recipe_dict(color_data)).model, **tiny_parts)
    return Engine(model.eval(), proc)


def xattn_engine(tiny_parts, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "heads": 4}
    raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    model, proc = build_model(parse_recipe(raw).model, **tiny_parts)
    with torch.no_grad():  # open the gates, or the blocks would be the identity and media invisible
        for block in model.fusion.blocks:
            block.attn_gate.fill_(1.0)
            block.ffn_gate.fill_(1.0)
    return Engine(model.eval(), proc)


def prompts_of_several_lengths(color_data) -> list[Sample]:
    samples = load_jsonl(color_data)
    longer = Sample(
        "long", (Message("user", (ImagePart(path=samples[2].images()[0]), TextPart("red " * 20))),)
    )
    text_only = Sample("text", (Message("user", (TextPart("the quick brown fox"),)),))
    return [samples[0], longer, text_only, samples[1]]


@pytest.mark.parametrize("build", [early_engine, xattn_engine], ids=["early", "cross-attention"])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_prefill_gives_the_same_tokens(build, chunk, tiny_parts, color_data):
    engine = build(tiny_parts, color_data)
    prompts = prompts_of_several_lengths(color_data)
    for cfg in (GenerationConfig(6), GenerationConfig(6, 1.0, 0.9, seed=4)):
        whole = engine.generate_ids(prompts, cfg)
        assert engine.generate_ids(prompts, cfg, prefill_chunk=chunk) == whole
        assert whole == engine.generate_ids(prompts, cfg, use_cache=False)
    # The prompt does go in chunks: a pause after every chunk but the last, then the first tokens.
    encoded = [engine.processor.encode(p, for_generation=True) for p in prompts]
    width = max(len(e.input_ids) for e in encoded)
    steps = engine.stream(encoded, [GenerationConfig(2)] * len(encoded), prefill_chunk=chunk)
    pauses = 0
    for step in steps:
        if step.tokens or step.finished:
            break
        pauses += 1
    assert pauses == -(-width // chunk) - 1


def test_interleaved_streams_keep_their_own_media(tiny_parts, color_data):
    """Cross-attention binds media per forward pass, so two streams advanced in turn (as the
    scheduler's lanes are) each see their own images."""
    engine = xattn_engine(tiny_parts, color_data)
    samples = load_jsonl(color_data)
    cfg = GenerationConfig(5, 1.0, seed=2)
    a, b = [samples[0], samples[2]], [samples[1], samples[3]]
    alone = engine.generate_ids(a, cfg), engine.generate_ids(b, cfg)
    enc = [[engine.processor.encode(s, True) for s in group] for group in (a, b)]
    streams = [engine.stream(e, [cfg] * 2, prefill_chunk=4) for e in enc]
    out: list[list[list[int]]] = [[[], []], [[], []]]
    live = [True, True]
    while any(live):
        for k in (0, 1):
            if live[k]:
                step = next(streams[k], None)
                live[k] = step is not None
                for i, tok in step.tokens if step else []:
                    out[k][i].append(tok)
    assert (out[0], out[1]) == alone
    assert engine.model.fusion.context.media is None


def test_no_token_is_longer_than_max_token_chars(tiny_parts, color_data):
    engine = early_engine(tiny_parts, color_data)
    tok = engine.processor.tokenizer
    longest = max(len(tok.decode([i])) for i in range(len(tok)))
    assert longest <= engine.max_token_chars


def test_cached_and_uncached_generation_agree(tiny_parts, color_data):
    engine, samples = early_engine(tiny_parts, color_data), load_jsonl(color_data)
    prompts = samples[:3] + [samples[4]]
    cfg = GenerationConfig(max_new_tokens=6)
    cached = engine.generate_ids(prompts, cfg, use_cache=True)
    uncached = engine.generate_ids(prompts, cfg, use_cache=False)
    assert cached == uncached
    assert any(len(t) > 0 for t in cached)
    # Batched (left-padded) generation equals one-by-one generation.
    assert [engine.generate_ids([p], cfg)[0] for p in prompts] == cached


def test_sampling_is_seeded(tiny_parts, color_data):
    engine, samples = early_engine(tiny_parts, color_data), load_jsonl(color_data)
    cfg = GenerationConfig(max_new_tokens=5, temperature=1.0, top_p=0.9, seed=3)
    assert engine.generate_ids(samples[:2], cfg) == engine.generate_ids(samples[:2], cfg)


def test_generation_config_is_built_from_the_recipe_in_one_place(color_data):
    raw = tiny_recipe_dict(color_data)
    raw["generation"] = {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.8}
    raw["seed"] = 11
    recipe = parse_recipe(raw)
    assert generation_config(recipe) == GenerationConfig(7, 0.5, 0.8, seed=11)
    assert generation_config(recipe, max_new_tokens=3) == GenerationConfig(3, 0.5, 0.8, seed=11)
    assert generation_config(recipe, greedy=True) == GenerationConfig(7)
