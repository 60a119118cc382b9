"""The shapes of a model's parts, written into an exported folder's ``config.json`` and rebuilt from it
without the assets the recipe names: every weight, frozen ones included, then comes from the folder.

Only the parts whose builders read pretrained files need a description here (a Hugging Face vision
tower, a Whisper encoder, the LLM, a Q-Former's BERT); the others are rebuilt by omnifuse's own
builders from the recipe section (a CNN with ``weights: null``, connectors, fusion, plugins) and get
their weights from the folder like everything else. Dispatch is by spec class, as in the builders.
"""

from __future__ import annotations

from collections.abc import Callable

import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig, PreTrainedModel

from omnifuse.connectors.qformer import QFormerConnector
from omnifuse.encoders.audio.whisper import WhisperAudioEncoder
from omnifuse.encoders.multi import MultiEncoder
from omnifuse.encoders.vision.hf import HFVisionEncoder
from omnifuse.errors import OmnifuseError
from omnifuse.models.builders import build_encoder
from omnifuse.recipe import (
    EfficientNetLite0Spec,
    HFVisionSpec,
    MobileNetV2Spec,
    MultiEncoderSpec,
    QFormerConnectorSpec,
    WhisperEncoderSpec,
)

# What a Q-Former keeps of the BERT it was shaped like (from_bert_config reads no more).
BERT_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
    "initializer_range", "layer_norm_eps", "pad_token_id",
)  # fmt: skip


def _config(data: dict, what: str):
    data = dict(data)
    kind = data.pop("model_type", None)
    try:
        return AutoConfig.for_model(kind, **data)
    except (ValueError, TypeError) as exc:
        raise OmnifuseError(
            f"config.json: the {what}'s config (model_type {kind!r}) cannot be built by this transformers "
            f"{transformers.__version__} ({exc}); install the transformers version that exported it"
        ) from None


def _transformers_class(name: str, what: str) -> type[PreTrainedModel]:
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        raise OmnifuseError(f"config.json: the {what} class {name!r} is not a transformers model class")
    return cls


# ---------------------------------------------------------------------------- encoders
def _describe_hf(spec, encoder: HFVisionEncoder) -> dict:
    return {
        "class": type(encoder.tower).__name__,
        "config": encoder.tower.config.to_dict(),
        "layer": encoder.layer,
        "drop_cls": encoder.drop_cls,
        "image_size": encoder.image_size,
        "resize_shorter": encoder.resize_shorter,
        "mean": list(encoder.mean),
        "std": list(encoder.std),
        "resample": int(encoder.resample),
    }


def _build_hf(spec, shape: dict) -> nn.Module:
    cls = _transformers_class(shape["class"], "vision tower")
    tower = cls(_config(shape["config"], "vision tower")).float()
    return HFVisionEncoder(
        tower, layer=shape["layer"], drop_cls=shape["drop_cls"], image_size=shape["image_size"],
        mean=shape["mean"], std=shape["std"], resize_shorter=shape["resize_shorter"], resample=shape["resample"],
    ).eval()  # fmt: skip


def _describe_whisper(spec, encoder: WhisperAudioEncoder) -> dict:
    return {"config": encoder.encoder.config.to_dict(), "features": encoder.feature_extractor.to_dict()}


def _build_whisper(spec, shape: dict) -> nn.Module:
    from transformers import WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    features = {k: v for k, v in shape["features"].items() if k != "feature_extractor_type"}
    encoder = WhisperEncoder(_config(shape["config"], "Whisper encoder"))
    return WhisperAudioEncoder(encoder, WhisperFeatureExtractor(**features)).eval()


def _describe_multi(spec, encoder: MultiEncoder) -> dict:
    return {
        "encoders": [describe_encoder(s, e) for s, e in zip(spec.encoders, encoder.encoders, strict=True)]
    }


def _build_multi(spec, shape: dict) -> nn.Module:
    subs = [build_encoder_shape(s, d) for s, d in zip(spec.encoders, shape["encoders"], strict=True)]
    return MultiEncoder(subs, spec.combine)


def _build_cnn(spec, shape: dict) -> nn.Module:
    return build_encoder(spec.model_copy(update={"weights": None}))  # random init; the folder has the weights


DESCRIBE: dict[type, Callable[..., dict]] = {
    HFVisionSpec: _describe_hf,
    WhisperEncoderSpec: _describe_whisper,
    MultiEncoderSpec: _describe_multi,
}
BUILD: dict[type, Callable[..., nn.Module]] = {
    HFVisionSpec: _build_hf,
    WhisperEncoderSpec: _build_whisper,
    MultiEncoderSpec: _build_multi,
    MobileNetV2Spec: _build_cnn,
    EfficientNetLite0Spec: _build_cnn,
}


def describe_encoder(spec, encoder: nn.Module) -> dict:
    """What rebuilds ``encoder`` without its asset; {} where the spec alone does (CNNs, plugins)."""
    describe = DESCRIBE.get(type(spec))
    return {} if describe is None else describe(spec, encoder)


def build_encoder_shape(spec, shape: dict) -> nn.Module:
    """The encoder, randomly initialised in the shape described (a plugin: as its own builder makes it)."""
    build = BUILD.get(type(spec))
    return build_encoder(spec) if build is None else build(spec, shape)


# ---------------------------------------------------------------------------- connectors, LLM
def describe_connector(spec, connector: nn.Module) -> dict:
    if not isinstance(spec, QFormerConnectorSpec):
        return {}
    assert isinstance(connector, QFormerConnector)
    config = connector.qformer.config
    return {
        "bert": {k: getattr(config, k) for k in BERT_FIELDS},
        "in_dim": connector.vision_norm.normalized_shape[0],
    }


def build_connector_shape(spec, shape: dict, out_dim: int) -> nn.Module | None:
    """A Q-Former shaped like the stored BERT (no tokenizer: it serves only the stage-1 objectives); None
    for the connectors the builders make without assets."""
    if not isinstance(spec, QFormerConnectorSpec):
        return None
    return QFormerConnector.from_bert_config(
        BertConfig(**shape["bert"]), None, shape["in_dim"], out_dim,
        num_queries=spec.num_queries, cross_attention_every=spec.cross_attention_every,
        embed_dim=spec.embed_dim, max_text_len=spec.max_text_len, projector=spec.projector, hidden=spec.hidden,
    )  # fmt: skip


def build_llm(config: dict) -> nn.Module:
    """The LLM of ``config`` without initialising its weights (every one is then read from the folder,
    checked by name: 3 s saved on SmolLM2-135M); tied embeddings tied as from_config ties them."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        llm = AutoModelForCausalLM.from_config(_config(config, "LLM"))
    llm.tie_weights()
    return llm.float().eval()
