"""Pixel shuffle connector: a hand-computed example, token counts, clear errors, end-to-end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from omnifuse.connectors import PixelShuffleConnector
from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict


def test_hand_computed_space_to_depth():
    # A 4×4 grid of 2-channel tokens, token (row, col) = [10·row + col, 100 + 10·row + col], row-major.
    rows = [[[10 * r + c, 100 + 10 * r + c] for c in range(4)] for r in range(4)]
    x = torch.tensor(rows, dtype=torch.float).reshape(1, 16, 2)
    out = PixelShuffleConnector(2, nn.Identity())(x)
    assert out.shape == (1, 4, 8)
    # Output token (0, 1) is the block of rows 0–1, columns 2–3; channel-major: c·4 + i·2 + j.
    assert out[0, 1].tolist() == [2, 3, 12, 13, 102, 103, 112, 113]
    assert out[0, 0].tolist() == [0, 1, 10, 11, 100, 101, 110, 111]
    assert out[0, 2].tolist() == [20, 21, 30, 31, 120, 121, 130, 131]  # token (1, 0): rows 2–3
    assert out[0, 3].tolist() == [22, 23, 32, 33, 122, 123, 132, 133]


def test_token_count_and_projection():
    conn = PixelShuffleConnector(2, nn.Linear(16 * 4, 8))
    x = torch.randn(3, 36, 16, requires_grad=True)
    y = conn(x)
    assert y.shape == (3, 9, 8) and conn.num_output_tokens(36) == 9
    y.sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "tokens, factor, expected",
    [(49, 2, ["7×7 token grid", "factor 2"]), (12, 2, ["12 tokens", "square"]), (16, 3, ["4×4", "factor 3"])],
)
def test_clear_error_names_grid_and_factor(tokens, factor, expected):
    with pytest.raises(OmnifuseError) as info:
        PixelShuffleConnector(factor, nn.Identity()).num_output_tokens(tokens)
    for part in expected:
        assert part in str(info.value)


def test_pixel_shuffle_in_a_model(tiny_parts, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "pixel_shuffle", "factor": 2, "projector": "linear"}
    model, proc = build_model(parse_recipe(raw).model, **tiny_parts)
    assert model.tokens_per_item("image") == 4  # the tiny encoder's 4×4 grid → 2×2
    batch = proc.collate([proc.encode(s) for s in load_jsonl(color_data)[:2]])
    out = model(**batch.model_inputs())
    assert torch.isfinite(out.loss)


def test_indivisible_grid_fails_when_the_model_is_built(tiny_parts, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "pixel_shuffle", "factor": 3}
    with pytest.raises(OmnifuseError, match="4×4 token grid is not divisible by factor 3"):
        build_model(parse_recipe(raw).model, **tiny_parts)


def test_pixel_shuffle_trains_and_reloads(tmp_path, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "pixel_shuffle", "factor": 2}
    raw["stages"][0]["steps"], raw["stages"][1]["steps"] = 3, 1
    train(parse_recipe(raw), tmp_path / "run", parts=make_parts(), progress=False)
    _, model, proc = load_model(RunDir(tmp_path / "run"), progress=False, parts=make_parts())
    assert model.connectors["image"].projector.fc1.in_features == 16 * 4  # 16-d tokens × r²
    answers = Engine(model, proc).generate(load_jsonl(color_data)[:2], GenerationConfig(max_new_tokens=2))
    assert len(answers) == 2
