"""Gated cross-attention fusion (Flamingo) on the tiny LLM: exact identity at gate 0, per-sample media
masking, the component layout, training, and cached generation."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.fusion import CrossAttentionFusion, decoder_layers
from omnifuse.fusion.cross_attention import GatedDecoderLayer
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from omnifuse.recipes import RECIPES_DIR
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_llm, make_parts, tiny_recipe_dict


def xattn_recipe(data, every_n: int = 1, connector: dict | None = None) -> dict:
    raw = tiny_recipe_dict(data)
    raw["model"]["connectors"]["image"] = connector or {"type": "perceiver", "num_latents": 3, "heads": 4}
    raw["model"]["fusion"] = {"type": "cross_attention", "every_n": every_n, "heads": 4}
    raw["stages"] = [
        {"name": "align", "trainable": {"connectors": "full", "fusion": "full"},
         "lr": {"connectors": 3e-3, "fusion": 1e-2}, "steps": 12, "batch_size": 4, "save_every": 6},
    ]  # fmt: skip
    return raw


def text_only(sample: Sample) -> Sample:
    msgs = [Message(m.role, tuple(p for p in m.parts if isinstance(p, TextPart))) for m in sample.messages]
    return Sample(sample.id + "-text", tuple(msgs))


@pytest.fixture
def built(tiny_parts, color_data):
    model, proc = build_model(parse_recipe(xattn_recipe(color_data)).model, **tiny_parts)
    return model.eval(), proc, load_jsonl(color_data)


def set_gates(model, value: float) -> None:
    with torch.no_grad():
        for block in model.fusion.blocks:
            block.attn_gate.fill_(value)
            block.ffn_gate.fill_(value)


def test_gates_at_zero_give_exactly_the_plain_llm(built, chatml_tokenizer):
    model, proc, samples = built
    plain = make_llm(len(chatml_tokenizer))  # same seed: the weights the model was built from
    batch = proc.collate([proc.encode(s) for s in samples[:4]])
    assert batch.media["image"].shape[0] == 4  # a batch with images …
    # … whose text holds no media token: the same ids as the text-only conversation.
    assert batch.input_ids[0].tolist() == proc.encode(text_only(samples[0])).input_ids
    calls = []
    hooks = [b.register_forward_hook(lambda *a: calls.append(1)) for b in model.fusion.blocks]
    with torch.no_grad():
        fused = model(**(batch.model_inputs() | {"labels": None})).logits
        ref = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for h in hooks:
        h.remove()
    assert len(calls) == len(model.fusion.blocks) == 2  # the blocks did run, on the images
    assert torch.equal(fused, ref)
    assert model.fusion.context.media is None  # unbound after the forward pass


def test_open_gates_read_the_images_of_their_own_sample_only(built, chatml_tokenizer):
    model, proc, samples = built
    set_gates(model, 1.0)
    with torch.no_grad():
        # samples 0, 1, 2 share the question and differ in colour; row 1 of the batch changes its image.
        a = model(
            **proc.collate([proc.encode(s, True) for s in (samples[0], samples[1])]).model_inputs()
        ).logits
        b = model(
            **proc.collate([proc.encode(s, True) for s in (samples[0], samples[2])]).model_inputs()
        ).logits
    assert not torch.allclose(a[1], b[1])  # the image matters …
    torch.testing.assert_close(a[0], b[0])  # … but only to its own sample


def test_a_sample_without_media_attends_to_nothing(built, chatml_tokenizer):
    model, proc, samples = built
    with torch.no_grad():
        for block in model.fusion.blocks:
            block.attn_gate.fill_(1.0)  # attention open, feed-forward closed
    plain = make_llm(len(chatml_tokenizer))
    batch = proc.collate([proc.encode(samples[0]), proc.encode(text_only(samples[1]))])
    assert batch.media_counts["image"] == [1, 0]
    with torch.no_grad():
        fused = model(**(batch.model_inputs() | {"labels": None})).logits
        ref = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.isfinite(fused).all()
    assert torch.equal(fused[1], ref[1]) and not torch.allclose(fused[0], ref[0])


def test_layout_llm_keeps_its_parameters_and_blocks_are_the_fusion_component(built, chatml_tokenizer):
    model, _, _ = built
    layers = decoder_layers(model.llm)
    assert all(isinstance(layer, GatedDecoderLayer) for layer in layers)
    block_ids = {id(p) for p in model.fusion.parameters()}
    assert block_ids and not block_ids & {id(p) for p in model.llm.parameters()}
    assert {n for n, _ in model.named_parameters() if n.startswith("fusion.")} == {
        f"fusion.{n}" for n, _ in model.fusion.named_parameters()
    }
    # The LLM's own weights are untouched (only nested one level deeper, under each wrapper).
    plain = make_llm(len(chatml_tokenizer)).state_dict()
    wrapped = {k.replace(".layer.", "."): v for k, v in model.llm.state_dict().items()}
    assert wrapped.keys() == plain.keys() and all(torch.equal(wrapped[k], plain[k]) for k in plain)
    assert layers[0].self_attn is layers[0].layer.self_attn  # attribute look-ups reach the wrapped layer


def test_every_n_places_blocks_before_layers_n_minus_1(tiny_parts, color_data):
    model, _ = build_model(parse_recipe(xattn_recipe(color_data, every_n=2)).model, **tiny_parts)
    layers = decoder_layers(model.llm)
    assert model.fusion.layer_indices == [1] and len(model.fusion.blocks) == 1
    assert not isinstance(layers[0], GatedDecoderLayer) and isinstance(layers[1], GatedDecoderLayer)


def test_clear_errors(chatml_tokenizer):
    llm = make_llm(len(chatml_tokenizer))
    with pytest.raises(OmnifuseError, match="every_n=3 is larger than the LLM's 2 layers"):
        CrossAttentionFusion(llm, 32, every_n=3, heads=4)
    with pytest.raises(OmnifuseError, match="not divisible by heads=5"):
        CrossAttentionFusion(llm, 32, heads=5)
    CrossAttentionFusion(llm, 32, heads=4)
    with pytest.raises(OmnifuseError, match="already carries gated cross-attention blocks"):
        CrossAttentionFusion(llm, 32, heads=4)
    with pytest.raises(OmnifuseError, match="no config.num_hidden_layers"):
        decoder_layers(nn.Linear(2, 2))
    twice = nn.Module()
    twice.config = llm.config
    twice.a, twice.b = nn.ModuleList([nn.Linear(1, 1)] * 2), nn.ModuleList([nn.Linear(1, 1)] * 2)
    with pytest.raises(OmnifuseError, match=r"exactly one list of 2 decoder layers .* found 2 \(a, b\)"):
        decoder_layers(twice)


def test_fusion_component_exists_only_with_cross_attention(color_data):
    raw = tiny_recipe_dict(color_data)
    raw["stages"][0]["trainable"]["fusion"] = "full"
    raw["stages"][0]["lr"]["fusion"] = 1e-3
    with pytest.raises(OmnifuseError, match="unknown component 'fusion'"):
        parse_recipe(raw)
    assert "fusion" in parse_recipe(xattn_recipe(color_data)).model.components()


def test_training_opens_the_gates_and_lowers_the_loss(tmp_path, color_data):
    recipe = parse_recipe(xattn_recipe(color_data))
    train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # The frozen tiny LLM's small tied embeddings bound its logits (its loss starts near ln(vocab) ≈ 6
    # and cannot go much below ~5.3 without training the LLM), so a fall of 0.3 nats is most of the room.
    assert len(losses) == 12 and min(losses[-3:]) < losses[0] - 0.3, losses
    _, model, _ = load_model(RunDir(tmp_path / "run"), progress=False, parts=make_parts())
    for block in model.fusion.blocks:
        assert block.attn_gate.abs().item() > 1e-3 and block.ffn_gate.abs().item() > 1e-3
    # The LLM stayed frozen: the run stored the connector and the blocks only.
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert {k.split(".")[0] for k in saved} == {"connectors", "fusion"}


def test_cached_and_uncached_generation_agree(built):
    model, proc, samples = built
    set_gates(model, 1.0)
    engine = Engine(model, proc)
    prompts = [samples[0], samples[1], text_only(samples[2]), samples[4]]
    cfg = GenerationConfig(max_new_tokens=6)
    cached = engine.generate_ids(prompts, cfg, use_cache=True)
    assert cached == engine.generate_ids(prompts, cfg, use_cache=False)
    assert any(len(t) > 0 for t in cached)
    assert [engine.generate_ids([p], cfg)[0] for p in prompts] == cached  # batched == one by one
    assert model.fusion.context.media is None


@pytest.mark.integration
def test_flamingo_recipe_on_the_real_parts():

    from omnifuse.data.sources import load_data
    from omnifuse.llm import load_llm
    from omnifuse.recipe import load_recipe

    recipe = load_recipe(RECIPES_DIR / "flamingo.yaml")
    model, proc = build_model(recipe.model, progress=False)
    assert len(model.fusion.blocks) == 6 and model.fusion.layer_indices[-1] == 29  # SmolLM2: 30 layers
    plain, _ = load_llm(recipe.model.llm.name, progress=False)
    samples = load_data("easy-vqa:test")[:2]
    batch = proc.collate([proc.encode(s, for_generation=True) for s in samples], padding_side="left")
    with torch.no_grad():
        fused = model(**batch.model_inputs()).logits
        ref = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(fused, ref)
    set_gates(model, 0.5)
    engine = Engine(model, proc)
    cfg = GenerationConfig(max_new_tokens=4)
    assert engine.generate_ids(samples, cfg) == engine.generate_ids(samples, cfg, use_cache=False)
