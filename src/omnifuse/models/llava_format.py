"""LLaVA's layout (transformers' ``LlavaForConditionalGeneration``) ↔ omnifuse's composite, both ways.

The one place that knows how the parameter names and settings of the two correspond
(``omnifuse export --format llava`` writes through it, ``model.init_from`` reads through it):

======================================  =============================================
omnifuse (``MultimodalLM``)             LLaVA (``LlavaForConditionalGeneration``)
======================================  =============================================
``encoders.image.tower.<k>``            ``model.vision_tower.<p><k>`` (``<p>``: the tower class's own prefix)
``connectors.image.fc1`` / ``fc2``      ``model.multi_modal_projector.linear_1`` / ``linear_2`` (GELU)
``connectors.image.proj`` (linear)      ``linear_1``, with ``linear_2`` = identity and a linear activation
``llm.<base>.<k>`` / ``llm.lm_head``    ``model.language_model.<k>`` / ``lm_head``
hidden state ``layer``                  ``vision_feature_layer``
``drop_cls`` (one CLS token)            ``vision_feature_select_strategy: default``; kept / none: ``full``
======================================  =============================================

Every key on one side must have its counterpart on the other: :func:`omnifuse.export.common.exact_keys`
refuses anything else with the names listed (never a silent partial load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from omnifuse.connectors import LinearConnector, MLPConnector
from omnifuse.encoders.vision.hf import HFVisionEncoder
from omnifuse.errors import OmnifuseError
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.recipe import (
    EarlyFusionSpec,
    HFVisionSpec,
    LinearConnectorSpec,
    MLPConnectorSpec,
    ModelSpec,
)

IMAGE_TOKEN = "<image>"
TOWER, PROJECTOR, LANGUAGE = "model.vision_tower.", "model.multi_modal_projector.", "model.language_model."
HINT = (
    "export the language model alone with `--format llm`; a format for every recipe (`--format hf`) is not "
    "built yet"
)


def unfit_parts(spec: ModelSpec) -> list[str]:
    """What of ``spec`` has no place in LLaVA's layout (empty when it fits)."""
    found = []
    if set(spec.encoders) != {"image"}:
        found.append(f"encoders {sorted(spec.encoders)} (LLaVA has one image encoder, `image`)")
    enc, conn = spec.encoders.get("image"), spec.connectors.get("image")
    if enc is not None and not isinstance(enc, HFVisionSpec):
        found.append(f"encoders.image ({enc.type}: LLaVA needs a transformers vision tower, type: hf)")
    if conn is not None and not isinstance(conn, (LinearConnectorSpec, MLPConnectorSpec)):
        found.append(f"connectors.image ({conn.type}: LLaVA's projector is linear or a two-layer GELU MLP)")
    if not isinstance(spec.fusion, EarlyFusionSpec):
        found.append(f"fusion ({spec.fusion.type}: LLaVA puts image tokens in the text)")
    if spec.tiling:
        found.append("tiling (LLaVA 1.5 sees one view per image)")
    if spec.asr is not None:
        found.append("asr (an ASR cascade)")
    return found


def llava_fit(spec: ModelSpec) -> None:
    """Refuse, in one paragraph naming the parts, a model section LLaVA's layout cannot hold."""
    unfit = unfit_parts(spec)
    if unfit:
        raise OmnifuseError(f"this recipe does not fit the LLaVA format: {'; '.join(unfit)}. {HINT}")


@dataclass(frozen=True)
class LlavaSettings:
    """The LlavaConfig fields that follow from a built omnifuse model."""

    vision_feature_layer: int
    vision_feature_select_strategy: str  # default (drop the CLS token) | full
    projector_hidden_act: str  # gelu (MLP) | linear (a single linear layer)
    image_seq_length: int
    num_additional_image_tokens: int  # CLS/register tokens the tower puts before its patches


def settings(model: MultimodalLM) -> LlavaSettings:
    encoder, connector = model.encoders["image"], model.connectors["image"]
    if not isinstance(encoder, HFVisionEncoder):
        raise OmnifuseError(
            f"the image encoder is a {type(encoder).__name__}, not a transformers tower; {HINT}"
        )
    prefix = encoder.num_prefix_tokens
    if encoder.drop_cls and prefix > 1:
        raise OmnifuseError(
            f"the vision tower puts {prefix} tokens before its patches (CLS and registers) and the recipe "
            f"drops them; LLaVA can drop only one (vision_feature_select_strategy: default). {HINT}"
        )
    strategy = "default" if encoder.drop_cls and prefix == 1 else "full"
    d_llm = model.llm.get_input_embeddings().weight.shape[1]
    if isinstance(connector, MLPConnector):
        if connector.fc1.out_features != d_llm:
            raise OmnifuseError(
                f"the MLP projector's hidden width is {connector.fc1.out_features}, the LLM's is {d_llm}; "
                f"LLaVA's projector has the LLM's width in both layers (connectors.image.hidden: null). {HINT}"
            )
        act = "gelu"
    elif isinstance(connector, LinearConnector):
        act = "linear"
    else:
        raise OmnifuseError(f"the image connector is a {type(connector).__name__}; {HINT}")
    return LlavaSettings(encoder.layer, strategy, act, model.media_tokens_per_item("image"), prefix)


def tower_prefix(ours: Mapping[str, object], theirs: Mapping[str, object]) -> str:
    """The prefix LLaVA's tower puts before the keys of omnifuse's tower (``vision_model.`` when one is a
    ``CLIPVisionModel`` and the other its inner ``CLIPVisionTransformer``; empty when they are alike)."""
    key = min(ours, key=len)
    for candidate in sorted({t[: len(t) - len(key)] for t in theirs if t.endswith(key)}, key=len):
        if {candidate + k for k in ours} == set(theirs):
            return candidate
    raise OmnifuseError(
        f"the vision tower's {len(ours)} parameters do not correspond to LLaVA's {len(theirs)} (e.g. {key!r}); "
        f"{HINT}"
    )


def _under(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _llm_names(llm: nn.Module) -> tuple[str, str]:
    """(base model prefix, output head name) of a transformers causal LM: ``model.``, ``lm_head.``."""
    base = getattr(llm, "base_model_prefix", "model")
    heads = [n for n, m in llm.named_children() if m is llm.get_output_embeddings()]
    if not hasattr(llm, base) or len(heads) != 1:
        raise OmnifuseError(
            f"the LLM ({type(llm).__name__}) is not a transformers causal LM with a base model and an output "
            f"head; {HINT}"
        )
    return base + ".", heads[0] + "."


def to_llava(model: MultimodalLM, llava_keys: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """omnifuse's state dict renamed to ``llava_keys`` (a ``LlavaForConditionalGeneration``'s state dict)."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    tower = _under(state, "encoders.image.tower.")
    prefix = tower_prefix(tower, _under(llava_keys, TOWER))
    out |= {TOWER + prefix + k: v for k, v in tower.items()}
    connector = _under(state, "connectors.image.")
    if "proj.weight" in connector:  # a single linear layer: linear_2 passes its output through unchanged
        d = connector["proj.weight"].shape[0]
        eye = torch.eye(d, dtype=connector["proj.weight"].dtype)
        connector = {"fc1.weight": connector["proj.weight"], "fc1.bias": connector["proj.bias"]}
        connector |= {"fc2.weight": eye, "fc2.bias": torch.zeros(d, dtype=eye.dtype)}
    names = {"fc1": "linear_1", "fc2": "linear_2"}
    out |= {PROJECTOR + names[k.split(".")[0]] + k[3:]: v for k, v in connector.items()}
    base, head = _llm_names(model.llm)
    llm = _under(state, "llm.")
    out |= {LANGUAGE + k[len(base) :]: v for k, v in llm.items() if k.startswith(base)}
    out |= {"lm_head." + k[len(head) :]: v for k, v in llm.items() if k.startswith(head)}
    return out


def from_llava(state: Mapping[str, torch.Tensor], model: MultimodalLM) -> dict[str, torch.Tensor]:
    """A ``LlavaForConditionalGeneration`` state dict renamed to ``model``'s names (the inverse of
    :func:`to_llava` for an MLP projector, the shape of every published LLaVA)."""
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    tower = _under(state, TOWER)
    prefix = tower_prefix(_under(ours, "encoders.image.tower."), tower)
    out |= {"encoders.image.tower." + k[len(prefix) :]: v for k, v in tower.items()}
    names = {"linear_1": "fc1", "linear_2": "fc2"}
    out |= {
        "connectors.image." + names.get(k.split(".")[0], k) + k[8:]: v
        for k, v in _under(state, PROJECTOR).items()
    }
    base, head = _llm_names(model.llm)
    out |= {"llm." + base + k: v for k, v in _under(state, LANGUAGE).items()}
    out |= {"llm." + head + k[len("lm_head.") :]: v for k, v in state.items() if k.startswith("lm_head.")}
    return out
