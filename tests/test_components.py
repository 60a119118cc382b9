"""Every registered component satisfies its contract (omnifuse.components), built the way a recipe builds it."""

from __future__ import annotations

import pytest
from transformers import Dinov2Config, Dinov2Model

from omnifuse.components import ClassicFusion, Connector, Encoder, Fusion, ImageEncoder, missing_members
from omnifuse.models import builders
from omnifuse.models.classifier import FUSION_BUILDERS as CLASSIC_BUILDERS
from omnifuse.models.classifier import build_classifier
from omnifuse.recipe import (
    ClassifierModelSpec,
    ConnectorPluginSpec,
    EncoderPluginSpec,
    FusionPluginSpec,
    ModelSpec,
)
from tiny import make_llm, make_whisper_encoder, write_tiny_bert

CNN = {"weights": None, "image_size": 64, "crop": False}


def _encoder_sections(tmp_path) -> dict[str, dict]:
    tower = tmp_path / "dinov2"
    Dinov2Model(
        Dinov2Config(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
            image_size=32, patch_size=8,
        )
    ).save_pretrained(tower)  # fmt: skip
    return {
        "mobilenet_v2": {"type": "mobilenet_v2", **CNN},
        "efficientnet_lite0": {"type": "efficientnet_lite0", **CNN},
        "hf": {"type": "hf", "name": str(tower)},
        "multi": {"type": "multi", "encoders": [{"type": "mobilenet_v2", **CNN}, {"type": "hf", "name": str(tower)}]},
    }  # fmt: skip


def _model_spec(encoder: dict, connector: dict, fusion: dict | None = None) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "encoders": {"image": encoder},
            "connectors": {"image": connector},
            **({"fusion": fusion} if fusion else {}),
        }
    )


def test_every_encoder_satisfies_the_encoder_protocol(tmp_path):
    built = {}
    for section in _encoder_sections(tmp_path).values():
        spec = _model_spec(section, {"type": "mlp"}).encoders["image"]
        built[type(spec)] = builders.build_encoder(spec)
    spec = ModelSpec.model_validate(
        {"encoders": {"audio": {"type": "whisper"}}, "connectors": {"audio": {"type": "stack"}}}
    ).encoders["audio"]
    built[type(spec)] = make_whisper_encoder()  # its builder loads the packaged Whisper; same class
    video = {"type": "frames", "image": {"type": "mobilenet_v2", **CNN}}
    spec = ModelSpec.model_validate(
        {"encoders": {"video": video}, "connectors": {"video": {"type": "frame_pool"}}}
    ).encoders["video"]
    built[type(spec)] = builders.build_encoder(spec)
    assert set(built) == set(builders.ENCODER_BUILDERS) - {EncoderPluginSpec}
    for spec_type, encoder in built.items():
        assert isinstance(encoder, Encoder), (spec_type, missing_members(encoder, Encoder))
        if spec_type.reads == "image":
            assert isinstance(encoder, ImageEncoder), (spec_type, missing_members(encoder, ImageEncoder))


def test_every_connector_and_fusion_satisfies_its_protocol(tmp_path):
    bert = write_tiny_bert(tmp_path / "bert")
    sections = {
        "linear": {}, "mlp": {}, "pool": {"grid": 2}, "perceiver": {"num_latents": 4, "heads": 4, "depth": 1},
        "pixel_shuffle": {"factor": 2}, "qformer": {"text_model": str(bert), "num_queries": 4},
        "stack": {"factor": 4},
    }  # fmt: skip
    built = {}
    for name, options in sections.items():
        modality = "audio" if name == "stack" else "image"
        encoder = {"type": "whisper"} if name == "stack" else {"type": "mobilenet_v2", **CNN}
        spec = ModelSpec.model_validate(
            {"encoders": {modality: encoder}, "connectors": {modality: {"type": name, **options}}}
        ).connectors[modality]
        built[type(spec)] = builders.build_connector(spec, 16, 32)
    frames = builders.build_encoder(
        ModelSpec.model_validate(
            {"encoders": {"video": {"type": "frames", "image": {"type": "mobilenet_v2", **CNN}}},
             "connectors": {"video": {"type": "frame_pool"}}}
        ).encoders["video"]
    )  # fmt: skip
    for name, options in {"frame_pool": {}, "video_qformer": {"hidden": 16, "heads": 2}}.items():
        spec = ModelSpec.model_validate(
            {"encoders": {"video": {"type": "frames", "image": {"type": "mobilenet_v2", **CNN}}},
             "connectors": {"video": {"type": name, **options}}}
        ).connectors["video"]  # fmt: skip
        built[type(spec)] = builders.build_connector(spec, frames.output_dim, 32, frames)
    every = set(builders.CONNECTOR_BUILDERS) | set(builders.VIDEO_CONNECTOR_BUILDERS)
    assert set(built) == every - {ConnectorPluginSpec}
    for spec_type, connector in built.items():
        assert isinstance(connector, Connector), (spec_type, missing_members(connector, Connector))

    fusions = {}
    for section in ({"type": "early"}, {"type": "cross_attention", "heads": 4}):
        spec = _model_spec({"type": "mobilenet_v2", **CNN}, {"type": "mlp"}, section).fusion
        fusions[type(spec)] = builders.build_fusion(spec, make_llm(64), 32)
    assert set(fusions) == set(builders.FUSION_BUILDERS) - {FusionPluginSpec}
    assert [f for f in fusions.values() if f is not None and not isinstance(f, Fusion)] == []


@pytest.mark.parametrize(
    "fusion", sorted(t.model_fields["type"].annotation.__args__[0] for t in CLASSIC_BUILDERS)
)
def test_every_classic_fusion_satisfies_its_protocol(fusion):
    maps = fusion == "data"
    encoders = (
        {"image": {"type": "pixels", "size": 8}, "audio": {"type": "logmel", "n_mels": 8, "tokens": 8}}
        if maps
        else {"image": {"type": "mobilenet_v2", "weights": None}, "text": {"type": "minilm"}}
    )
    section = {"type": fusion, **({"dim": 16, "heads": 4} if fusion == "transformer" else {})}
    spec = ClassifierModelSpec.model_validate({"encoders": encoders, "fusion": section})
    tokens = spec.feature_form() == "tokens"
    shapes = {m: ((8, 8) if maps else (4, 16)) if tokens else (16,) for m in spec.encoders}
    model = build_classifier(spec, shapes, num_classes=3)
    assert isinstance(model.fusion, ClassicFusion), missing_members(model.fusion, ClassicFusion)
