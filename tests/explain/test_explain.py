"""omnifuse.explain on tiny random models: map shapes, attention bounds, gradient support, the logit
lens against the model's own output, modality contribution, connectors without a spatial grid, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from omnifuse.cli import main
from omnifuse.errors import OmnifuseError
from omnifuse.explain import explain, parse_layers, write_explanation
from omnifuse.explain.attribution import input_box, to_image
from omnifuse.explain.inputs import ExplainInputs, answer_token_ids, encode_prompt
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import TinyVisionEncoder, make_parts, tiny_recipe_dict

QUESTION = "what color is the shape?"


def build(color_data, connector: dict | None = None, encoder=None):
    recipe_dict = tiny_recipe_dict(color_data)
    if connector is not None:
        recipe_dict["model"]["connectors"]["image"] = connector
    recipe = parse_recipe(recipe_dict)
    parts = make_parts()
    if encoder is not None:
        parts["encoders"] = {"image": encoder}
    model, processor = build_model(recipe.model, **parts)
    return recipe, model.eval(), processor


def shape_image(size=(48, 40)) -> Image.Image:
    img = Image.new("RGB", size, (240, 240, 230))
    img.paste((220, 30, 30), (8, 6, 26, 22))
    return img


@pytest.fixture
def grid_model(color_data):
    return build(color_data)  # mlp connector: 4×4 grid tokens of the 32 px tiny encoder


def test_parse_layers():
    assert parse_layers(None, 30) == list(range(30))
    assert parse_layers("all", 30) == list(range(30))
    assert parse_layers("20-29", 30) == list(range(20, 30))
    assert parse_layers("last8", 30) == list(range(22, 30))
    assert parse_layers("0-1, 5,last1", 30) == [0, 1, 5, 29]
    for bad in ("20-30", "last0", "last31", "5-3", "middle", ""):
        if bad == "":
            continue
        with pytest.raises(OmnifuseError, match="--layers"):
            parse_layers(bad, 30)


def test_maps_have_the_image_size_and_attention_is_a_partial_distribution(grid_model):
    _, model, processor = grid_model
    image = shape_image((48, 40))
    expl = explain(model, processor, image, QUESTION, max_new_tokens=3)
    att = expl.attention
    assert att is not None and att.grid == (4, 4) and att.reason is None
    assert att.heatmap is not None and att.heatmap.shape == (40, 48)
    assert expl.gradient.heatmap is not None and expl.gradient.heatmap.shape == (40, 48)
    assert expl.gradient.input_map.shape == (32, 32)  # the encoder's input
    per_token = np.array(att.per_token)
    assert per_token.shape == (1, 16)
    assert (per_token >= 0).all() and (per_token.sum(axis=1) <= 1 + 1e-6).all()
    assert per_token.sum() > 0
    assert att.image_share == pytest.approx(float(per_token.sum()), rel=1e-6)
    assert len(att.share_per_layer) == 2 and all(0 <= s <= 1 + 1e-6 for s in att.share_per_layer)
    # every cell of the 4×4 grid paints its 12×10 block of the image with its own mass
    assert att.heatmap[0, 0] == pytest.approx(att.mass[0]) and att.heatmap[-1, -1] == pytest.approx(
        att.mass[-1]
    )
    # the greedy first token is the explained one, and explaining restored the LLM's attention kernel
    assert expl.target_ids and len(expl.log_probs) == 1
    assert model.llm.config._attn_implementation != "eager"


def test_attention_layers_are_selectable(grid_model):
    _, model, processor = grid_model
    image = shape_image()
    first = explain(model, processor, image, QUESTION, layers="0", max_new_tokens=0, contributions=False)
    both = explain(model, processor, image, QUESTION, layers="all", max_new_tokens=0, contributions=False)
    assert first.attention.layers == [0] and both.attention.layers == [0, 1]
    expected = np.mean([first.attention.share_per_layer[0], first.attention.share_per_layer[1]])
    assert both.attention.image_share == pytest.approx(expected, rel=1e-5)
    assert first.attention.image_share == pytest.approx(first.attention.share_per_layer[0], rel=1e-5)


class LeftHalfEncoder(TinyVisionEncoder):
    """Sees only the left half of its input: the right half's pixels cannot influence anything."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(pixel_values)
        keep[..., : self.image_size // 2] = 1
        return super().forward(pixel_values * keep)


def test_gradient_is_zero_where_pixels_cannot_matter(color_data):
    torch.manual_seed(0)
    _, model, processor = build(color_data, encoder=LeftHalfEncoder())
    model.encoders.requires_grad_(False)  # frozen, as in training recipes: gradients still reach the pixels
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    expl = explain(model, processor, image, QUESTION, max_new_tokens=0, contributions=False)
    raw = expl.gradient.input_map
    assert (raw[:, 16:] == 0).all() and (raw[:, :16] > 0).mean() > 0.5
    heat = expl.gradient.heatmap  # 32 → 64 px, bilinear: only the seam column may blur over
    assert (heat[:, 34:] == 0).all() and heat[:, :30].sum() > 0


def test_gradient_is_confined_to_the_cropped_region():
    class CropEncoder(TinyVisionEncoder):
        def input_region(self, width, height):
            return 16.0, 0.0, 48.0, 32.0  # keeps the middle of a 64×32 image

    box = input_box(CropEncoder(), 64, 32)
    assert box == (16, 0, 48, 32)
    out = to_image(torch.ones(32, 32), box, (64, 32), "bilinear")
    assert out.shape == (32, 64) and (out[:, :16] == 0).all() and (out[:, 48:] == 0).all()
    assert (out[:, 16:48] == 1).all()


def test_logit_lens_last_layer_is_the_model_output(grid_model):
    _, model, processor = grid_model
    image = shape_image()
    expl = explain(
        model, processor, image, QUESTION, answer="red green", max_new_tokens=0, contributions=False
    )
    assert len(expl.target_ids) >= 2 and len(expl.lens.layers) == 2
    # the model's own logits on the same sequence (a plain forward, eager attention as in explain)
    prompt_ids, answer_ids = answer_token_ids(processor, image, QUESTION, "red green")
    _, pixels = encode_prompt(processor, image, QUESTION)
    inputs = ExplainInputs.build(prompt_ids, pixels, model.placeholder_ids["image"], answer_ids)
    model.llm.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = model(
                inputs.input_ids, torch.ones_like(inputs.input_ids), {"image": pixels}, {"image": [1]}
            )
    finally:
        model.llm.set_attn_implementation("sdpa")
    expected = out.logits[0, inputs.target_positions].float()
    assert torch.equal(expl.lens.last_logits, expected)
    last = expl.lens.layers[-1]
    probs = torch.softmax(expected, dim=-1)
    for k, t in enumerate(answer_ids):
        assert last.prob[k] == pytest.approx(float(probs[k, t]), rel=1e-6)
        assert last.rank[k] == int((probs[k] > probs[k, t]).sum()) + 1
    assert expl.log_probs == pytest.approx(
        torch.log(probs[torch.arange(len(answer_ids)), answer_ids]).tolist(), abs=1e-5
    )


def test_modality_contribution_with_and_without_image_differ(grid_model):
    _, model, processor = grid_model
    expl = explain(model, processor, shape_image(), QUESTION, max_new_tokens=0)
    rows = {c.condition: c for c in expl.contributions}
    assert set(rows) == {"with image", "without image", "blank image"}
    assert rows["with image"].log_prob == pytest.approx(expl.log_probs[0], abs=1e-4)
    assert rows["with image"].log_prob != pytest.approx(rows["without image"].log_prob, abs=1e-6)
    assert rows["with image"].log_prob != pytest.approx(rows["blank image"].log_prob, abs=1e-6)
    assert all(c.log_prob <= 0 for c in expl.contributions)


@pytest.mark.parametrize(
    "connector, tokens, words",
    [
        ({"type": "pool", "grid": 1, "projector": "mlp"}, 1, "1 token"),
        ({"type": "perceiver", "num_latents": 4, "depth": 1, "heads": 2}, 4, "latents"),
    ],
    ids=["pool-1", "perceiver"],
)
def test_connectors_without_a_grid_get_no_heatmap_but_a_reason(
    color_data, tmp_path, connector, tokens, words
):
    _, model, processor = build(color_data, connector)
    assert model.media_grid("image") is None
    image = shape_image()
    expl = explain(model, processor, image, QUESTION, max_new_tokens=0)
    att = expl.attention
    assert att.grid is None and att.heatmap is None and words in att.reason
    assert len(att.mass) == tokens and all(m >= 0 for m in att.mass) and att.image_share <= 1 + 1e-6
    assert expl.gradient.heatmap is not None  # the pixels still get their map
    obj = write_explanation(expl, image, tmp_path / "out")
    assert obj["files"]["attention"] is None and not (tmp_path / "out" / "attention.png").exists()
    assert words in obj["attention"]["heatmap_skipped"]
    assert (tmp_path / "out" / "gradient.png").is_file() and (tmp_path / "out" / "logit_lens.png").is_file()


def test_grids_of_spatial_connectors(color_data):
    assert build(color_data, {"type": "pool", "grid": 2, "projector": "linear"})[1].media_grid("image") == (
        2,
        2,
    )
    assert build(color_data, {"type": "pixel_shuffle", "factor": 2})[1].media_grid("image") == (2, 2)
    assert build(color_data, {"type": "linear"})[1].media_grid("image") == (4, 4)


def test_write_explanation_files(grid_model, tmp_path):
    _, model, processor = grid_model
    image = shape_image()
    expl = explain(model, processor, image, QUESTION, max_new_tokens=2)
    obj = write_explanation(expl, image, tmp_path / "ex", "img.png")
    saved = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert saved == json.loads(json.dumps(obj))
    assert saved["files"] == {
        "attention": "attention.png",
        "gradient": "gradient.png",
        "logit_lens": "logit_lens.png",
    }
    for name in saved["files"].values():
        with Image.open(tmp_path / "ex" / name) as png:
            assert png.size[0] > 100
    assert saved["question"] == QUESTION and saved["image"] == "img.png"
    assert len(saved["logit_lens"]["layers"]) == 2 and len(saved["modality_contribution"]) == 3
    assert len(saved["attention"]["mass_per_image_token"]) == 16


# ---------------------------------------------------------------------- CLI
def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


@pytest.fixture
def fake_run(tmp_path, color_data):
    """A run folder with a valid (tiny) generate recipe: explain dispatches on the run's task."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe_dict(color_data)))
    return run


def test_cli_bad_inputs(tmp_path, fake_run, capsys):
    image = tmp_path / "a.png"
    shape_image().save(image)
    code, _, err = run(["explain", str(fake_run), QUESTION, "--image", str(image)], capsys)
    assert code == 2 and "no trained weights" in err
    (fake_run / "model.safetensors").write_bytes(b"")
    code, _, err = run(["explain", str(fake_run), QUESTION, "--image", str(tmp_path / "nope.png")], capsys)
    assert code == 2 and "does not exist" in err
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, _, err = run(["explain", str(fake_run), QUESTION, "--image", str(text)], capsys)
    assert code == 2 and "not a readable image" in err


def test_cli_explain_on_a_tiny_model(grid_model, tmp_path, fake_run, capsys, monkeypatch):
    import omnifuse.tasks

    (fake_run / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(omnifuse.tasks, "load_language_model", lambda run, progress=True, **_: grid_model)
    image = tmp_path / "a.png"
    shape_image().save(image)
    out_dir = tmp_path / "ex"
    argv = [
        "explain",
        str(fake_run),
        QUESTION,
        "--image",
        str(image),
        "--out",
        str(out_dir),
        "--layers",
        "last1",
    ]
    code, out, _ = run(argv, capsys)
    assert code == 0, out
    assert "modality contribution" in out and "logit lens" in out and "attention to the image" in out
    saved = json.loads((out_dir / "explain.json").read_text())
    assert saved["attention"]["layers"] == [1] and (out_dir / "attention.png").is_file()
    code, _, err = run([*argv[:-1], "9"], capsys)
    assert code == 2 and "--layers" in err
