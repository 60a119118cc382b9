"""``model.init_from``: the model section a LLaVA-format folder implies.

A folder of transformers' ``LlavaForConditionalGeneration`` (a published llava-hf checkpoint, or an
``omnifuse export --format llava``) fixes the vision tower, the projector and the LLM; the recipe names
only the folder, and the sections are filled in from its ``config.json`` here, so that ``omnifuse
validate`` shows them and every later step sees an ordinary model section. The weights are read when the
model is built (:mod:`omnifuse.models.llava_import`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PROJECTORS = {"gelu": "mlp", "linear": "linear"}  # LLaVA's projector_hidden_act → omnifuse's connector


def llava_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json, checked to be LLaVA's (ValueError naming what is wrong otherwise)."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(
            f"model.init_from: {folder} has no config.json; give the folder of a LLaVA-format checkpoint "
            "(LlavaForConditionalGeneration, e.g. what `omnifuse export --format llava` writes)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"model.init_from: {path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("model_type") != "llava":
        kind = config.get("model_type") if isinstance(config, dict) else None
        raise ValueError(
            f"model.init_from: {folder} holds a {kind or 'non-LLaVA'} model, not LLaVA (model_type: llava); "
            "start from its parts instead (model.encoders / model.llm name their folders)"
        )
    return config


def llava_sections(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a raw model section with ``init_from``) with encoders, connectors and llm.name filled in."""
    folder = Path(str(data["init_from"])).expanduser()
    config = llava_config(folder)
    layer = config.get("vision_feature_layer", -2)
    strategy = config.get("vision_feature_select_strategy", "default")
    act = config.get("projector_hidden_act", "gelu")
    if not isinstance(layer, int):
        raise ValueError(
            f"model.init_from: {folder} concatenates vision layers {layer}; omnifuse's tower takes one layer"
        )
    if act not in PROJECTORS or strategy not in ("default", "full"):
        raise ValueError(
            f"model.init_from: {folder}'s projector_hidden_act {act!r} / vision_feature_select_strategy "
            f"{strategy!r} has no omnifuse counterpart (gelu or linear; default or full)"
        )
    encoder = {"type": "hf", "name": str(folder), "layer": layer, "drop_cls": strategy == "default"}
    derived = {"encoders": {"image": encoder}, "connectors": {"image": {"type": PROJECTORS[act]}}}
    llm = dict(data.get("llm") or {})
    # A resolved recipe (a run directory's recipe.yaml) holds the derived sections already: they must agree.
    given = [
        key for key in ("encoders", "connectors") if data.get(key) and not _agrees(data[key], derived[key])
    ]
    given += [key for key in ("tiling", "asr") if data.get(key)]
    fusion = data.get("fusion")
    if isinstance(fusion, dict) and fusion.get("type", "early") != "early":
        given.append("fusion (LLaVA puts the image tokens in the text: fusion early)")
    if llm.get("name", str(folder)) != str(folder):
        given.append("llm.name")
    if given:
        raise ValueError(
            f"model.init_from takes the vision tower, the projector and the LLM from {folder}; remove "
            f"model.{', model.'.join(given)} (llm.system_prompt, the fusion's defaults and the stages stay yours)"
        )
    return {**data, **derived, "llm": {**llm, "name": str(folder)}}


def _agrees(given: Any, derived: Any) -> bool:
    """``given`` says what ``derived`` says, plus perhaps fields left at null (a resolved recipe's defaults)."""
    if not isinstance(given, dict) or not isinstance(derived, dict):
        return given == derived
    if set(given) != set(derived) and any(given[k] is not None for k in set(given) - set(derived)):
        return False
    return all(k in given and _agrees(given[k], v) for k, v in derived.items())
