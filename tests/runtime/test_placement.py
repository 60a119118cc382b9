"""Placement, structurally: nothing omnifuse creates during training, generation or explanation lands on
a device other than the model's.

Inside ``with torch.device("meta")`` torch's *default* device is ``meta`` while the model and the
processor stay on the CPU: any tensor our code makes without naming a device (``torch.tensor(ids)``,
``torch.ones(n, 1)``, ``torch.arange(T)``) becomes a meta tensor, and the first op that mixes it with the
model's CPU tensors raises. A pass that runs through proves every tensor was put on the device of an
existing tensor or of the model — what a GPU needs, checked on this CPU-only machine.

And bf16 inference on the CPU (``place`` with ``trained=None`` stores every float parameter in bfloat16;
forward passes run under autocast): generation and explanation run, the frozen parameters are bf16.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from omnifuse.data.jsonl import load_jsonl
from omnifuse.explain import explain
from omnifuse.explain.attribution import answer_log_prob
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from omnifuse.runtime import place, placement_of, resolve_placement
from omnifuse.training.objectives import generative_step
from tiny import make_parts, tiny_recipe_dict

QUESTION = "what color is the shape?"


def build(color_data, fusion: str = "early"):
    raw = tiny_recipe_dict(color_data)
    if fusion == "cross_attention":
        raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "heads": 4}
        raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    recipe = parse_recipe(raw)
    model, processor = build_model(recipe.model, **make_parts())
    if model.fusion is not None:
        with torch.no_grad():  # open the gates: closed, the blocks are the identity and the media unread
            for block in model.fusion.blocks:
                block.attn_gate.fill_(1.0)
                block.ffn_gate.fill_(1.0)
    return recipe, model, processor


def image() -> Image.Image:
    img = Image.new("RGB", (40, 36), (240, 240, 230))
    img.paste((220, 30, 30), (8, 6, 26, 22))
    return img


def test_the_meta_default_device_catches_a_tensor_made_without_a_device():
    """The premise of the tests below: under a meta default device, a device-less tensor meets a CPU one
    and raises."""
    cpu = torch.ones(3)
    with torch.device("meta"):
        made = torch.arange(3)
        assert made.is_meta
        with pytest.raises((RuntimeError, NotImplementedError)):
            float((cpu + made).sum())


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_training_step_creates_nothing_off_the_model_device(fusion, color_data):
    """A forward + backward of the next-token objective (a meta index can also read garbage silently
    instead of raising: the loss and gradients are compared with the same step run normally)."""
    recipe, model, processor = build(color_data, fusion)
    model.train()
    samples = load_jsonl(color_data)[:3]

    def step() -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        out = generative_step(model, processor, samples, recipe.stages[0])
        out.loss.backward()
        assert out.loss.device.type == "cpu"
        return float(out.loss), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    loss, grads = step()
    with torch.device("meta"):
        meta_loss, meta_grads = step()
    assert meta_loss == pytest.approx(loss, abs=1e-6) and len(meta_grads) == len(grads) > 0
    assert all(
        g.device.type == "cpu" and torch.allclose(g, r, atol=1e-6)
        for g, r in zip(meta_grads, grads, strict=True)
    )


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_creates_nothing_off_the_model_device(fusion, use_cache, color_data):
    _, model, processor = build(color_data, fusion)
    engine = Engine(model.eval(), processor)
    prompts = load_jsonl(color_data)[:2]
    cfgs = [GenerationConfig(4), GenerationConfig(4, temperature=1.0, top_p=0.9, seed=3)]
    expected = engine.generate_ids(prompts, cfgs, use_cache=use_cache)
    with torch.device("meta"):
        got = engine.generate_ids(prompts, cfgs, use_cache=use_cache, prefill_chunk=3 if use_cache else None)
    assert got == expected and any(got)


def test_explain_creates_nothing_off_the_model_device(color_data):
    """The whole explanation: greedy answer, forward + backward to the pixels, attention, gradient map,
    modality contribution, logit lens."""
    _, model, processor = build(color_data)
    model.eval()
    expected = explain(model, processor, image(), QUESTION, max_new_tokens=2)
    with torch.device("meta"):
        got = explain(model, processor, image(), QUESTION, max_new_tokens=2)
    assert got.answer == expected.answer and got.log_probs == pytest.approx(expected.log_probs)
    assert got.gradient.heatmap is not None and got.attention is not None
    assert [c.log_prob for c in got.contributions] == pytest.approx(
        [c.log_prob for c in expected.contributions]
    )


@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_bf16_inference_on_the_cpu(fusion, color_data):
    """Every float parameter in bf16, forward passes under autocast: generation and explanation run, and
    the answer's log-probability stays within 0.05 nats of float32 (0.002 measured on the tiny model)."""
    _, model, processor = build(color_data, fusion)
    model.eval()
    target = processor.tokenizer.encode(" red", add_special_tokens=False)
    fp32, _ = answer_log_prob(model, processor, image(), QUESTION, target)
    place(model, processor, resolve_placement(device="cpu", dtype="bfloat16"))
    floats = [p for p in model.parameters() if p.is_floating_point()]
    assert floats and all(p.dtype == torch.bfloat16 for p in floats)  # inference: nothing is trained
    placement = placement_of(model)
    assert placement.dtype == torch.bfloat16 and placement.device.type == "cpu"
    bf16, _ = answer_log_prob(model, processor, image(), QUESTION, target)
    assert math.isfinite(bf16) and bf16 == pytest.approx(fp32, abs=0.05)
    engine = Engine(model, processor)
    prompts = load_jsonl(color_data)[:3]
    for cfg in (GenerationConfig(4), GenerationConfig(4, temperature=1.0, seed=1)):
        ids = engine.generate_ids(prompts, cfg)
        assert len(ids) == 3 and all(len(row) <= 4 for row in ids)
    if fusion == "early":
        expl = explain(model, processor, image(), QUESTION, max_new_tokens=2, contributions=False)
        assert expl.gradient.heatmap is not None and all(math.isfinite(v) for v in expl.log_probs)


def test_resolve_placement_refuses_what_this_machine_cannot_do():
    from omnifuse.errors import OmnifuseError

    with pytest.raises(OmnifuseError, match="--dtype.*float16"):
        resolve_placement(device="cpu", dtype="float16")
    with pytest.raises(OmnifuseError, match="int8"):
        resolve_placement(dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(OmnifuseError, match="no CUDA GPU"):
            resolve_placement(device="cuda")


@pytest.mark.parametrize("native", [True, False])
def test_fast_dtype_is_bf16_only_where_the_cpu_computes_it(monkeypatch, native):
    import omnifuse.runtime.placement as placement

    monkeypatch.setattr(placement, "native_cpu_bf16", lambda: native)
    fast = resolve_placement(device="cpu", dtype="fast")
    assert fast.dtype == (torch.bfloat16 if native else torch.float32)
    assert resolve_placement(device="cpu", dtype="auto").dtype == torch.float32  # auto: float32 on any CPU
    # answering only (eval, chat, serve): float32, which decodes faster with packed weights on a CPU
    assert resolve_placement(device="cpu", dtype="fast", inference=True).dtype == torch.float32
