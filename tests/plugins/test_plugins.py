"""Components from outside omnifuse, named by dotted path or entry point: a recipe with a user's connector
and encoder (tests/plugins/my_plugins.py, not under src/) validates, builds and trains; a bad path is one
clear paragraph at `omnifuse validate`, exit non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import ConnectorPluginSpec, EncoderPluginSpec, dump_recipe, parse_recipe
from omnifuse.recipe.plugins import entry_points
from tiny import CHATML, make_llm, make_tokenizer, tiny_recipe_dict, write_color_dataset

HERE = Path(__file__).resolve().parent


@pytest.fixture
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    yield
    sys.modules.pop("my_plugins", None)


def plugin_recipe(data: Path) -> dict:
    raw = tiny_recipe_dict(data)
    raw["model"]["encoders"]["image"] = {"type": "my_plugins.PatchEncoder", "patch": 8, "width": 16}
    raw["model"]["connectors"]["image"] = {"type": "my_plugins.ScaledLinear", "scale": 0.5}
    return raw


def test_a_connector_and_an_encoder_from_outside_train_end_to_end(on_path, tmp_path):
    from omnifuse.training.loop import train

    data = write_color_dataset(tmp_path / "data", n=12)
    recipe = parse_recipe(plugin_recipe(data))
    encoder, connector = recipe.model.encoders["image"], recipe.model.connectors["image"]
    assert isinstance(encoder, EncoderPluginSpec) and isinstance(connector, ConnectorPluginSpec)
    assert connector.options() == {"scale": 0.5}
    assert encoder.options() == {"image_size": 32, "patch": 8, "width": 16}  # defaults filled in
    resolved = yaml.safe_load(dump_recipe(recipe))  # what the run directory keeps, and reads back
    assert resolved["model"]["encoders"]["image"] == {"type": "my_plugins.PatchEncoder", "image_size": 32,
                                                      "patch": 8, "width": 16}  # fmt: skip
    assert parse_recipe(resolved) == recipe

    tokenizer = make_tokenizer(CHATML)
    parts = {"llm": make_llm(len(tokenizer)), "tokenizer": tokenizer}  # the encoder comes from the recipe
    result = train(recipe, tmp_path / "run", progress=False, parts=parts)
    rows = [json.loads(x) for x in (result.run.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "align"] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in rows)
    from my_plugins import PatchEncoder, ScaledLinear

    # the built model holds the user's classes, the connector with its option, 16 tokens per image
    from omnifuse.models.builders import build_model

    model, processor = build_model(recipe.model, **{**parts, "llm": make_llm(len(tokenizer))})
    assert isinstance(model.encoders["image"], PatchEncoder)
    assert isinstance(model.connectors["image"], ScaledLinear) and model.connectors["image"].scale == 0.5
    assert model.tokens_per_item("image") == 16 and model.media_grid("image") == (4, 4)


def test_an_entry_point_names_a_plugin(on_path, tmp_path, monkeypatch):
    dist = tmp_path / "site" / "my_plugins_dist-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugins-dist\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[omnifuse.components]\nscaled_linear = my_plugins:ScaledLinear\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    entry_points.cache_clear()
    try:
        raw = plugin_recipe(write_color_dataset(tmp_path / "data", n=3))
        raw["model"]["connectors"]["image"] = {"type": "scaled_linear", "scale": 2.0}
        connector = parse_recipe(raw).model.connectors["image"]
        assert connector.component().__name__ == "ScaledLinear" and connector.options() == {"scale": 2.0}
    finally:
        entry_points.cache_clear()


@pytest.mark.parametrize(
    "section, expected",
    [
        (
            {"type": "no_such_pkg.connectors.Thing"},
            ["there is no module 'no_such_pkg.connectors'", "PYTHONPATH"],
        ),
        ({"type": "my_plugins.Missing"}, ["module 'my_plugins' has no attribute 'Missing'", "ScaledLinear"]),
        ({"type": "my_plugins.NotAConnector"}, ["NotAConnector is not a connector", "num_output_tokens"]),
        ({"type": "my_plugins.make_connector"}, ["is a function, not a class"]),
        ({"type": "my_plugins.ScaledLinear", "scale": -1}, ["scale: Input should be greater than 0"]),
        ({"type": "my_plugins.ScaledLinear", "sclae": 1}, ["sclae: unknown option"]),
        ({"type": "qformerx"}, ["'linear', 'mlp'", "dotted path"]),
    ],
)
def test_bad_plugins_are_one_paragraph_at_validate(on_path, tmp_path, section, expected):
    raw = plugin_recipe(write_color_dataset(tmp_path / "data", n=3))
    raw["model"]["connectors"]["image"] = section
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "omnifuse", "validate", str(path)], capture_output=True, text=True, env=env
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out and "internal error" not in out, out
    assert "model.connectors.image" in out, out
    for part in expected:
        assert part in " ".join(out.split()), (part, out)  # the CLI wraps long lines
    with pytest.raises(OmnifuseError):
        parse_recipe(raw)


def test_a_fusion_plugin_is_checked_against_the_fusion_contract(on_path, tmp_path):
    raw = plugin_recipe(write_color_dataset(tmp_path / "data", n=3))
    raw["model"]["fusion"] = {"type": "my_plugins.NotAConnector"}
    with pytest.raises(OmnifuseError, match=r"NotAConnector is not a fusion: it lacks bind"):
        parse_recipe(raw)
    raw["model"]["fusion"] = {"type": "my_plugins.ScaledLinear"}
    with pytest.raises(OmnifuseError, match=r"ScaledLinear is not a fusion: it lacks bind"):
        parse_recipe(raw)


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"type": 5}, "unknown type '5'"),
        ({}, "missing key type"),
        ({"hidden": 3}, "missing key type"),
        ("mlp", "must be a mapping with a type"),
        ({"type": "a."}, "is not a dotted path to a class"),
        ({"type": "os.path"}, "is a module, not a class"),
        ({"type": "builtins.int"}, "int is not a connector"),
    ],
)
def test_odd_types_are_named_not_crashed_on(tmp_path, section, expected):
    raw = plugin_recipe(write_color_dataset(tmp_path / "data", n=3))
    raw["model"]["encoders"]["image"] = {"type": "mobilenet_v2", "weights": None}
    raw["model"]["connectors"]["image"] = section
    with pytest.raises(OmnifuseError, match="model.connectors.image") as info:
        parse_recipe(raw)
    assert expected in str(info.value)
