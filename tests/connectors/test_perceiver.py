"""Perceiver resampler: fixed token count for any input length, gradients, end-to-end in build_model."""

from __future__ import annotations

import pytest
import torch

from omnifuse.connectors import PerceiverResampler
from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import tiny_recipe_dict


def test_output_shape_does_not_depend_on_input_length():
    torch.manual_seed(0)
    perceiver = PerceiverResampler(16, 24, num_latents=5, depth=2, heads=4, dim=32)
    for n in (1, 7, 49, 200):
        assert perceiver(torch.randn(3, n, 16)).shape == (3, 5, 24)
        assert perceiver.num_output_tokens(n) == 5


def test_latents_read_the_media_and_each_other():
    torch.manual_seed(0)
    perceiver = PerceiverResampler(8, 8, num_latents=3, depth=1, heads=2).eval()
    a, b = torch.randn(1, 10, 8), torch.randn(1, 10, 8)
    assert not torch.allclose(perceiver(a), perceiver(b))  # the output depends on the media
    # Each item is resampled on its own: batching does not mix items.
    torch.testing.assert_close(perceiver(torch.cat([a, b]))[1:], perceiver(b))
    # The media are a set (no position embedding, as in Flamingo): permuting tokens changes nothing.
    torch.testing.assert_close(perceiver(a[:, torch.randperm(10)]), perceiver(a), atol=1e-5, rtol=1e-5)


def test_gradient_reaches_input_latents_and_every_layer():
    torch.manual_seed(0)
    perceiver = PerceiverResampler(16, 8, num_latents=4, depth=2, heads=2)
    x = torch.randn(2, 9, 16, requires_grad=True)
    perceiver(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in perceiver.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_heads_must_divide_the_width():
    with pytest.raises(OmnifuseError, match="width 32 is not divisible by heads=5"):
        PerceiverResampler(16, 32, heads=5)


def test_perceiver_in_a_model(tiny_parts, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "depth": 1, "heads": 4}
    model, proc = build_model(parse_recipe(raw).model, **tiny_parts)
    assert model.tokens_per_item("image") == 3  # early fusion: 3 placeholders per image in the text
    batch = proc.collate([proc.encode(s) for s in load_jsonl(color_data)[:3]])
    assert int((batch.input_ids == model.placeholder_ids["image"]).sum()) == 3 * 3
    out = model(**batch.model_inputs())
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.connectors["image"].latents.grad.abs().sum() > 0
