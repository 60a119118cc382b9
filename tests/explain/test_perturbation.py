"""SHAP, LIME and occlusion of a generative answer on tiny random models: map shapes (the encoder's patch
grid), seeded determinism, additivity of SHAP, zero attribution where pixels cannot matter, the
model-randomisation sanity check (Adebayo et al., 2018), the files and the command line's bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy.stats import spearmanr

from omnifuse.cli import main
from omnifuse.errors import OmnifuseError
from omnifuse.explain import explain, write_explanation
from omnifuse.explain.perturbation import (
    DEFAULT_METHODS,
    DEFAULT_SAMPLES,
    PerturbationSettings,
    parse_methods,
    question_positions,
)
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import TinyVisionEncoder, make_parts, tiny_recipe_dict

QUESTION = "what color is the shape?"
QUESTION_TOKENS = 8  # 'what', ' co', 'lo', 'r', ' is', ' the', ' shape', '?' in the tiny tokenizer


def build(color_data, encoder=None):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    parts = make_parts()
    if encoder is not None:
        parts["encoders"] = {"image": encoder}
    model, processor = build_model(recipe.model, **parts)
    return model.eval(), processor


def shape_image(size=(48, 40)) -> Image.Image:
    img = Image.new("RGB", size, (240, 240, 230))
    img.paste((220, 30, 30), (8, 6, 26, 22))
    return img


@pytest.fixture
def tiny(color_data):
    return build(color_data)


def attribute(model, processor, method, samples=60, seed=0, image=None, **kw):
    expl = explain(
        model, processor, image or shape_image(), QUESTION, answer="red", max_new_tokens=0,
        contributions=False, methods=[method], settings=PerturbationSettings(samples=samples, seed=seed, **kw),
    )  # fmt: skip
    return expl.perturbations[method]


def test_parse_methods():
    assert parse_methods(None) == DEFAULT_METHODS == ("attention", "gradient")
    assert parse_methods(["shap,lime", "shap", " Occlusion "]) == ("shap", "lime", "occlusion")
    for bad in (["saliency"], ["shap,nope"], [","]):
        with pytest.raises(OmnifuseError, match="--method"):
            parse_methods(bad)


def test_cli_default_samples_is_the_library_default():
    import inspect

    from omnifuse.cli.chat import explain as command

    assert inspect.signature(command).parameters["samples"].default == DEFAULT_SAMPLES


def test_question_positions_are_the_difference_to_an_empty_question():
    assert question_positions([1, 2, 7, 8, 9, 3, 4], [1, 2, 3, 4]) == [2, 3, 4]
    assert question_positions([1, 2, 3], [1, 2, 3]) == []


@pytest.mark.parametrize("method", ["shap", "lime", "occlusion"])
def test_maps_have_the_patch_grid_shape(tiny, method):
    model, processor = tiny
    r = attribute(model, processor, method)
    assert r.regions.grid == (4, 4) == model.encoders["image"].token_grid()
    assert r.region_map().shape == (4, 4) and np.isfinite(r.region_values).all()
    assert r.heatmap.shape == (40, 48)  # painted over the original image
    assert r.heatmap[0, 0] == pytest.approx(r.region_values[0]) and r.heatmap[-1, -1] == pytest.approx(
        r.region_values[-1]
    )
    assert r.tokens[0] == "what" and r.tokens[-1] == "?" and len(r.token_values) == QUESTION_TOKENS
    assert r.evaluations == (60 + 2 if method != "occlusion" else 16 + QUESTION_TOKENS + 1 + 2)
    obj = r.to_json()
    assert np.array(obj["region_values"]).shape == (4, 4) and len(obj["question_tokens"]) == QUESTION_TOKENS


def test_grid_and_superpixels_are_selectable(tiny):
    model, processor = tiny
    assert attribute(model, processor, "occlusion", grid=2).region_map().shape == (2, 2)
    sp = attribute(model, processor, "occlusion", regions="superpixels", grid=3)
    assert (
        sp.regions.grid is None
        and 2 <= sp.regions.count <= 16
        and sp.region_map().shape == (sp.regions.count,)
    )
    assert set(sp.regions.labels.unique().tolist()) == set(range(sp.regions.count))


@pytest.mark.parametrize("method", ["shap", "lime"])
def test_seeded_sampling_is_deterministic(tiny, method):
    model, processor = tiny
    state = torch.random.get_rng_state()
    a = attribute(model, processor, method, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global random state is left alone
    b = attribute(model, processor, method, seed=3)
    c = attribute(model, processor, method, seed=4)
    assert np.array_equal(a.region_values, b.region_values) and a.token_values == b.token_values
    assert not np.array_equal(a.region_values, c.region_values)


def test_shap_values_add_up_to_the_change_from_the_baseline(tiny):
    model, processor = tiny
    r = attribute(model, processor, "shap", samples=80)
    assert r.full_log_prob != pytest.approx(r.baseline_log_prob, abs=1e-6)
    assert r.image_total + r.question_total == pytest.approx(r.full_log_prob - r.baseline_log_prob, abs=1e-4)
    assert 0 <= r.image_abs_share() <= 1


class LeftHalfEncoder(TinyVisionEncoder):
    """Sees only the left half of its input: the right half's regions cannot change anything."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        keep = torch.zeros_like(pixel_values)
        keep[..., : self.image_size // 2] = 1
        return super().forward(pixel_values * keep)


def test_regions_the_model_cannot_see_get_nothing(color_data):
    torch.manual_seed(0)
    model, processor = build(color_data, LeftHalfEncoder())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    occ = attribute(model, processor, "occlusion", image=image).region_map()
    assert (occ[:, 2:] == 0).all() and (occ[:, :2] != 0).mean() > 0.5


def randomised(model, seed: int = 123):
    """The model with its connector and LLM re-initialised (the encoder stays: cascading randomisation
    from the top, as Adebayo et al.'s model-parameter randomisation test)."""
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    for part in (other.connectors, other.llm):
        for module in part.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return other


@pytest.mark.parametrize("method", ["shap", "lime", "occlusion"])
def test_randomising_the_weights_changes_the_map(tiny, method):
    """Adebayo et al. (2018): an explanation that does not change when the weights are randomised does
    not explain the model. The rank correlation (Spearman, all features: image regions and question
    tokens) between two sampling seeds on the same model is the noise floor; between the model and its
    randomised copy (same seed) it must be clearly lower. Measured (100 samples): seed-to-seed 0.79
    (shap), 0.79 (lime), 1 (occlusion); model-to-randomised −0.35, −0.45, −0.44."""
    model, processor = tiny

    def values(m, seed):
        r = attribute(m, processor, method, samples=100, seed=seed)
        return np.concatenate([r.region_values, r.token_values])

    original = values(model, 0)
    same_model = spearmanr(original, values(model, 1))[0]
    shuffled = spearmanr(original, values(randomised(model), 0))[0]
    assert same_model > 0.6
    assert shuffled < 0.2 and same_model - shuffled > 0.5


def test_write_explanation_with_perturbation_maps(tiny, tmp_path):
    model, processor = tiny
    image = shape_image()
    expl = explain(
        model, processor, image, QUESTION, max_new_tokens=0, contributions=False,
        methods=["shap", "occlusion"], settings=PerturbationSettings(samples=40),
    )  # fmt: skip
    obj = write_explanation(expl, image, tmp_path / "ex")
    saved = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert saved == json.loads(json.dumps(obj)) and saved["methods"] == ["shap", "occlusion"]
    assert saved["files"] == {"attention": None, "gradient": None, "logit_lens": "logit_lens.png",
                              "shap": "shap.png", "occlusion": "occlusion.png", "modality": "modality.png"}  # fmt: skip
    for name in ("shap.png", "occlusion.png", "modality.png"):
        with Image.open(tmp_path / "ex" / name) as png:
            assert png.size[0] > 300
    shap = saved["perturbation"]["shap"]
    assert shap["samples"] == 40 and shap["seed"] == 0 and np.array(shap["region_values"]).shape == (4, 4)
    assert abs(shap["efficiency_gap"]) < 1e-4 and 0 <= shap["image_abs_share"] <= 1
    assert saved["perturbation"]["occlusion"]["samples"] is None


# ---------------------------------------------------------------------- CLI
def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


@pytest.fixture
def cli_run(tiny, tmp_path, monkeypatch, color_data):
    import omnifuse.tasks

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe_dict(color_data)))
    (run_dir / "model.safetensors").write_bytes(b"")
    model, processor = tiny
    recipe = parse_recipe(tiny_recipe_dict(tmp_path))
    monkeypatch.setattr(
        omnifuse.tasks, "load_language_model", lambda run, progress=True, **_: (recipe, model, processor)
    )
    image = tmp_path / "a.png"
    shape_image().save(image)
    return ["explain", str(run_dir), QUESTION, "--image", str(image), "--out", str(tmp_path / "ex")]


def test_cli_shap_and_lime(cli_run, tmp_path, capsys):
    code, out, _ = run([*cli_run, "--method", "shap,lime", "--samples", "40", "--seed", "1"], capsys)
    assert code == 0, out
    assert "perturbation attributions" in out and "shap" in out and "lime" in out
    saved = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert saved["methods"] == ["shap", "lime"] and saved["perturbation"]["lime"]["seed"] == 1
    assert (tmp_path / "ex" / "shap.png").is_file() and (tmp_path / "ex" / "modality.png").is_file()
    assert not (tmp_path / "ex" / "attention.png").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--method", "saliency"], "is not an explanation method"),
        (["--method", "shap", "--samples", "0"], "--samples 0"),
        (["--method", "occlusion", "--grid", "0"], "--grid 0"),
        (["--method", "shap", "--regions", "pixels"], "--regions 'pixels'"),
        (["--method", "shap", "--samples", "10"], "needs more samples than features"),
    ],
    ids=["unknown-method", "zero-samples", "zero-grid", "bad-regions", "too-few-samples"],
)
def test_cli_bad_input_is_one_clear_paragraph(cli_run, capsys, extra, words):
    code, _, err = run([*cli_run, *extra], capsys)
    assert code == 2 and words in " ".join(err.split())
