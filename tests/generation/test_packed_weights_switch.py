"""generation.packed_weights / --packed-weights: off means the engine makes no oneDNN-packed copies."""

from __future__ import annotations

import pytest
import torch

from fake_engine import fake_engine_run
from omnifuse.cli.common import packed_weights_option
from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.eval import runner
from omnifuse.generation import packed
from omnifuse.generation.chat import ChatSession
from omnifuse.generation.engine import Engine, GenerationConfig, pack_weights
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import tiny_recipe_dict


def _recipe(color_data, **generation):
    raw = tiny_recipe_dict(color_data)
    raw.setdefault("generation", {}).update(generation)
    return parse_recipe(raw)


def test_the_recipe_switch_defaults_to_auto_and_reads_yaml_booleans(color_data):
    assert _recipe(color_data).generation.packed_weights == "auto"
    assert pack_weights(_recipe(color_data))
    for given, read in (("off", "off"), (False, "off"), (True, "auto"), ("auto", "auto")):
        recipe = _recipe(color_data, packed_weights=given)
        assert recipe.generation.packed_weights == read and pack_weights(recipe) == (read == "auto")
    with pytest.raises(OmnifuseError, match="generation.packed_weights"):
        _recipe(color_data, packed_weights="sometimes")
    recipe = _recipe(color_data)
    assert recipe.with_packed_weights(None) is recipe
    assert recipe.with_packed_weights("off").generation.packed_weights == "off"
    assert packed_weights_option(None) is None and packed_weights_option("off") == "off"
    with pytest.raises(OmnifuseError, match="--packed-weights maybe: give auto"):
        packed_weights_option("maybe")


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN (mkldnn)")
def test_off_means_no_packed_copies(tiny_parts, color_data):
    off = _recipe(color_data, packed_weights="off")
    model, proc = build_model(off.model, **tiny_parts)
    model.eval()
    samples = load_jsonl(color_data)[:2]
    session = ChatSession(model, proc, off)
    assert session.engine.pack_weights is False
    tokens = session.engine.generate_ids(samples, GenerationConfig(3))
    assert model.llm not in packed._BY_MODEL  # off: no copies made
    # The control: the default makes them, for the same tokens.
    engine = Engine(model, proc, pack_weights=pack_weights(_recipe(color_data)))
    assert engine.generate_ids(samples, GenerationConfig(3)) == tokens
    assert model.llm in packed._BY_MODEL


def test_eval_takes_the_command_line_switch(color_data, tmp_path, monkeypatch):
    run, recipe, built = fake_engine_run(tmp_path, monkeypatch)
    loaded = (recipe, torch.nn.Linear(1, 1), None)
    runner.evaluate_run(run, data=str(color_data), progress=False, loaded=loaded)
    runner.evaluate_run(run, data=str(color_data), progress=False, loaded=loaded, packed_weights="off")
    assert [b["pack_weights"] for b in built] == [True, False]
