"""LLaVA's layout (transformers' ``LlavaForConditionalGeneration``) ↔ omnifuse's composite, both ways.

The one place that knows how the parts and settings of the two correspond (``omnifuse export --format
llava`` writes through :func:`to_llava`, ``model.init_from`` reads through :func:`from_llava`):

======================================  =============================================
omnifuse (``MultimodalLM``)             LLaVA (``LlavaForConditionalGeneration``)
======================================  =============================================
``encoders.image.tower``                ``model.vision_tower`` (the same module class)
``connectors.image.fc1`` / ``fc2``      ``model.multi_modal_projector.linear_1`` / ``linear_2`` (GELU)
``connectors.image.proj`` (linear)      ``linear_1``, with ``linear_2`` = identity and a linear activation
``llm.<base>`` / ``llm.lm_head``        ``model.language_model`` / ``lm_head``
hidden state ``layer``                  ``vision_feature_layer``
``drop_cls`` (one CLS token)            ``vision_feature_select_strategy: default``; kept / none: ``full``
======================================  =============================================

The tower and the LLM move as whole modules; names on disk are transformers' business: its own
``save_pretrained`` / ``from_pretrained`` write and read them, the historical llava-hf layouts
(``language_model.model.*``, ``vision_tower.vision_model.*``) included. The projector's weights are
mapped here, and every parameter and buffer of the target must be filled: anything else is refused
with the names listed (:func:`omnifuse.models.weights.exact_keys`), never a silent partial load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from omnifuse.connectors import LinearConnector, MLPConnector
from omnifuse.encoders.vision.hf import HFVisionEncoder
from omnifuse.errors import OmnifuseError
from omnifuse.llm import hidden_size
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.models.weights import exact_keys
from omnifuse.recipe import (
    EarlyFusionSpec,
    HFVisionSpec,
    LinearConnectorSpec,
    MLPConnectorSpec,
    ModelSpec,
)

IMAGE_TOKEN = "<image>"
HINT = (
    "export the language model alone with `--format llm`; a format for every recipe (`--format hf`) is not "
    "built yet"
)


IMPORT_HINT = "omnifuse cannot take this checkpoint's LLM apart; start from its parts' own folders instead"


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
    d_llm = hidden_size(model.llm)
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


def llm_names(llm: nn.Module) -> tuple[str, str]:
    """(base model attribute, output head attribute) of a transformers causal LM: ``model``, ``lm_head``."""
    base = getattr(llm, "base_model_prefix", "model")
    heads = [n for n, m in llm.named_children() if m is llm.get_output_embeddings()]
    if not isinstance(getattr(llm, base, None), nn.Module) or len(heads) != 1:
        raise OmnifuseError(
            f"the LLM ({type(llm).__name__}) is not a transformers causal LM with a base model and an output "
            f"head; {HINT}"
        )
    return base, heads[0]


def _same_class(ours: nn.Module, theirs: nn.Module, what: str, hint: str = HINT) -> None:
    if type(ours) is not type(theirs):
        raise OmnifuseError(
            f"the {what} is a {type(ours).__name__}, but LLaVA's config builds a {type(theirs).__name__} in its "
            f"place; {hint}"
        )


def _all_filled(module: nn.Module, what: str) -> None:
    """Nothing of ``module`` left on the meta device (where it was built without weights)."""
    exact_keys([], [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta], what)


def _projector_state(connector: nn.Module) -> dict[str, torch.Tensor]:
    """omnifuse's connector weights under LLaVA's projector names (``linear_1``, ``linear_2``)."""
    if isinstance(connector, LinearConnector):  # linear_2 passes linear_1's output through unchanged
        weight, bias = connector.proj.weight.detach(), connector.proj.bias.detach()
        eye = torch.eye(weight.shape[0], dtype=weight.dtype)
        return {"linear_1.weight": weight, "linear_1.bias": bias, "linear_2.weight": eye,
                "linear_2.bias": torch.zeros_like(bias)}  # fmt: skip
    return {
        name.replace("fc1.", "linear_1.").replace("fc2.", "linear_2."): p.detach()
        for name, p in connector.named_parameters()
    }


def to_llava(model: MultimodalLM, config: LlavaConfig) -> LlavaForConditionalGeneration:
    """A ``LlavaForConditionalGeneration`` made of omnifuse's own modules (shared, not copied): the tower
    and the LLM's base model and head are put in LLaVA's places, the projector gets the connector's
    weights. Anything left unfilled is an error naming it."""
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    tower, llm = model.encoders["image"].tower, model.llm
    _same_class(tower, llava.model.vision_tower, "vision tower")
    base, head = llm_names(llm)
    _same_class(getattr(llm, base), llava.model.language_model, "LLM's base model")
    llava.model.vision_tower = tower
    llava.model.language_model = getattr(llm, base)
    llava.lm_head = getattr(llm, head)
    projector = _projector_state(model.connectors["image"])
    exact_keys(projector, llava.model.multi_modal_projector.state_dict(), "llava export (projector)")
    llava.model.multi_modal_projector.load_state_dict(projector, assign=True)
    _all_filled(llava, "llava export")
    return llava.eval()


def from_llava(llava: LlavaForConditionalGeneration, spec: ModelSpec) -> tuple[nn.Module, nn.Module, dict]:
    """(vision tower, causal LM, connector weights under omnifuse's names) of a loaded LLaVA model: the
    tower and the LLM's modules are LLaVA's own (not copied); for a single linear connector the two
    projector layers are folded (``W2·W1``, ``W2·b1 + b2``: exact, a linear activation being the identity)."""
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(llava.config.text_config)
    base, head = llm_names(llm)
    _same_class(getattr(llm, base), llava.model.language_model, "LLM's base model", IMPORT_HINT)
    setattr(llm, base, llava.model.language_model)
    setattr(llm, head, llava.lm_head)
    _all_filled(llm, "model.init_from (LLM)")
    projector = {k: v.detach() for k, v in llava.model.multi_modal_projector.state_dict().items()}
    if isinstance(spec.connectors["image"], LinearConnectorSpec):
        w1, b1, w2, b2 = (projector[f"linear_{i}.{p}"].double() for i in (1, 2) for p in ("weight", "bias"))
        dtype = projector["linear_1.weight"].dtype
        connector = {"proj.weight": (w2 @ w1).to(dtype), "proj.bias": (w2 @ b1 + b2).to(dtype)}
    else:
        connector = {
            k.replace("linear_1.", "fc1.").replace("linear_2.", "fc2."): v for k, v in projector.items()
        }
    return llava.model.vision_tower, llm, connector
