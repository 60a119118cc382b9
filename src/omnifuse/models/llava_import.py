"""``model.init_from``: an omnifuse model started from a LLaVA-format folder (transformers'
``LlavaForConditionalGeneration``: a published llava-hf checkpoint, or ``omnifuse export --format llava``).

transformers loads the folder (safetensors only; its own key conversion covers the historical layouts),
with every missing, unexpected or misshapen weight refused; :func:`omnifuse.models.llava_format.from_llava`
then hands its tower and LLM modules to omnifuse's composite and maps the projector into the connector.
The recipe's model section was filled in from the same folder (:mod:`omnifuse.recipe.llava`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from omnifuse.assets import check_model_folder, load_pretrained, pretrained_kwargs
from omnifuse.encoders.vision.hf import HFVisionEncoder, _as_int, _processor_dict, preprocessing_args
from omnifuse.errors import OmnifuseError
from omnifuse.models.llava_format import from_llava
from omnifuse.models.weights import exact_keys
from omnifuse.recipe import HFVisionSpec, ModelSpec

HINT = "Export it again (`omnifuse export RUN --format llava`) or download the checkpoint again."


@dataclass
class LlavaParts:
    llm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    encoders: dict[str, nn.Module]
    connector: dict[str, torch.Tensor]  # the image connector's weights, under omnifuse's names


def llava_parts(spec: ModelSpec) -> LlavaParts:
    """The parts of ``spec.init_from``, with its weights (the connector's to be loaded once it is built)."""
    folder = Path(str(spec.init_from)).expanduser()
    check_model_folder(folder, "LLaVA checkpoint", "LlavaForConditionalGeneration")
    llava, info = load_pretrained(
        lambda: LlavaForConditionalGeneration.from_pretrained(
            folder, dtype=torch.float32, output_loading_info=True, **pretrained_kwargs()
        ),
        "LLaVA checkpoint",
        str(folder),
        str(folder),
        HINT,
    )
    _complete(info, folder)
    tower, llm, connector = from_llava(llava, spec)
    enc = spec.encoders["image"]
    assert isinstance(enc, HFVisionSpec)  # the recipe filled it in from this folder
    args = preprocessing_args(_processor_dict(str(folder)), _as_int(tower.config.image_size))
    encoder = HFVisionEncoder(tower, layer=enc.layer, drop_cls=enc.drop_cls, **args).eval()
    if enc.drop_cls and encoder.num_prefix_tokens != 1:
        raise OmnifuseError(
            f"{folder}: LLaVA drops the tower's first token (vision_feature_select_strategy: default), but "
            f"this {type(tower).__name__} puts {encoder.num_prefix_tokens} tokens before its patches; omnifuse "
            "drops exactly the CLS/register tokens, so the two would see different tokens"
        )
    tokenizer = load_pretrained(
        lambda: AutoTokenizer.from_pretrained(folder), "LLaVA tokenizer", str(folder), str(folder), HINT
    )
    return LlavaParts(llm.eval(), tokenizer, {"image": encoder}, connector)


def _complete(info: dict, folder: Path) -> None:
    """Refuse a checkpoint that did not fill the model exactly (transformers only warns)."""
    missing, unexpected = info.get("missing_keys") or [], info.get("unexpected_keys") or []
    mismatched = [name for name, *_ in info.get("mismatched_keys") or []]
    if missing or unexpected:
        exact_keys(unexpected, missing, f"model.init_from {folder}")
    if mismatched:
        raise OmnifuseError(
            f"model.init_from {folder}: {len(mismatched)} weights have other shapes than its config.json says "
            f"({', '.join(mismatched[:5])}); the folder is inconsistent. {HINT}"
        )


def load_connector(model: nn.Module, connector: dict[str, torch.Tensor], folder: str) -> None:
    target = model.connectors["image"]
    exact_keys(connector, target.state_dict(), f"model.init_from {folder} (projector)")
    target.load_state_dict(connector)
