"""MultimodalLM: early fusion contract, label-position logits, cached vs uncached generation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from omnifuse.connectors import LinearConnector, MLPConnector, PoolConnector
from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.fusion import scatter_features
from omnifuse.models.builders import build_model
from omnifuse.processing.processor import IGNORE_INDEX
from omnifuse.recipe import parse_recipe
from tiny import tiny_recipe_dict


@pytest.fixture
def built(tiny_parts, color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    model, processor = build_model(recipe.model, **tiny_parts)
    return model, processor, load_jsonl(color_data)


@pytest.mark.parametrize(
    "connector, tokens_in, tokens_out",
    [
        (LinearConnector(16, 8), 16, 16),
        (MLPConnector(16, 8, hidden=12), 9, 9),
        (PoolConnector(2, LinearConnector(16, 8)), 16, 4),
    ],
)
def test_connectors_declare_their_token_count(connector, tokens_in, tokens_out):
    x = torch.randn(3, tokens_in, 16, requires_grad=True)
    y = connector(x)
    assert y.shape == (3, tokens_out, 8) and connector.num_output_tokens(tokens_in) == tokens_out
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pool_connector_pools_by_mean_max_or_both():
    # A 2x2 grid of 1-channel features per image: one bright cell (a small object) on a dark background.
    feats = torch.tensor([[[0.0], [0.0], [0.0], [8.0]]])
    seen = {}
    for pooling in ("avg", "max", "avgmax"):
        width = PoolConnector.width_factor(pooling)
        connector = PoolConnector(1, nn.Identity(), pooling)
        seen[pooling] = connector(feats)
        assert seen[pooling].shape == (1, 1, width)
    assert seen["avg"].flatten().tolist() == [2.0] and seen["max"].flatten().tolist() == [8.0]
    assert seen["avgmax"].flatten().tolist() == [2.0, 8.0]
    with pytest.raises(ValueError, match="pooling must be one of"):
        PoolConnector(1, nn.Identity(), "median")


def test_a_recipe_sizes_the_projector_for_the_pooling(tiny_parts, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {
        "type": "pool",
        "grid": 1,
        "pooling": "avgmax",
        "projector": "linear",
    }
    model, processor = build_model(parse_recipe(raw).model, **tiny_parts)
    samples = load_jsonl(color_data)[:2]
    batch = processor.collate([processor.encode(s) for s in samples])
    assert model(**batch.model_inputs()).loss.isfinite()


def test_pool_connector_rejects_non_square_grid():
    with pytest.raises(ValueError, match="square"):
        PoolConnector(2, LinearConnector(4, 4)).num_output_tokens(12)


def test_placeholder_count_mismatch_names_both_counts_and_sample():
    ids = torch.tensor([[5, 99, 99, 99, 6]])
    embeds = torch.zeros(1, 5, 4)
    feats = torch.ones(1, 4, 4)  # 4 feature tokens for 3 placeholders
    with pytest.raises(OmnifuseError) as info:
        scatter_features(embeds, ids, 99, feats, [1], ["sample-7"])
    msg = str(info.value)
    assert "sample-7" in msg and "3 placeholder" in msg and "4 feature" in msg


def test_scatter_places_items_in_order():
    ids = torch.tensor([[1, 9, 9, 2, 9, 9], [9, 9, 3, 3, 3, 3]])
    feats = torch.arange(3 * 2 * 1, dtype=torch.float).reshape(3, 2, 1)
    out = scatter_features(torch.zeros(2, 6, 1), ids, 9, feats, [2, 1])
    assert out[0, :, 0].tolist() == [0, 0, 1, 0, 2, 3]
    assert out[1, :, 0].tolist() == [4, 5, 0, 0, 0, 0]


def test_loss_on_label_positions_equals_full_logits_loss(built):
    model, proc, samples = built
    batch = proc.collate([proc.encode(s) for s in samples[:4]])
    out = model(**batch.model_inputs())
    embeds = model.embed(batch.input_ids, batch.media, batch.media_counts)
    logits = model.llm(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits
    ref = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    assert torch.allclose(out.loss, ref, atol=1e-5)
    assert out.num_label_tokens == int((batch.labels != IGNORE_INDEX).sum())


def test_image_changes_the_output(built):
    model, proc, samples = built
    a = proc.collate([proc.encode(samples[0], for_generation=True)])
    b = proc.collate([proc.encode(samples[1], for_generation=True)])  # another colour, same question
    assert torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.media["image"], b.media["image"])
    assert not torch.allclose(model(**a.model_inputs()).logits, model(**b.model_inputs()).logits)
