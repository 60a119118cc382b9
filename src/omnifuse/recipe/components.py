"""Specs of the generative model's parts: encoders, connectors, fusion into the LLM, the LLM, ASR.

Each component kind is a union tagged by ``type``: omnifuse's own parts by name (``type: mlp``), and a
user's class by dotted path or entry point (``type: mypkg.connectors.MyConnector``, see
:mod:`omnifuse.recipe.plugins`). Adding a part to omnifuse means a spec class here, its name in the
kind's union and a builder line in ``omnifuse.models.builders``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Discriminator, Field, Tag, model_validator

from omnifuse.recipe.plugins import (
    ConnectorPluginSpec,
    EncoderPluginSpec,
    FusionPluginSpec,
    PluginSpec,
    is_plugin,
)
from omnifuse.recipe.schema import Modality, Spec

PLUGIN = "plugin"


def tagged(*specs: type[Spec], plugin: type[PluginSpec] | None = None) -> Any:
    """A union of specs told apart by their ``type`` literal, plus (``plugin``) any dotted path or
    entry-point name, so that pydantic's error for an unknown type lists the built-in names."""
    names = {typing_literal(s): s for s in specs}
    builtin = frozenset(names)

    def tag(value: Any) -> str | None:
        t = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
        if plugin is not None and is_plugin(t, builtin):
            return PLUGIN
        return None if t is None else str(t)  # None: no `type` key (pydantic says it is missing)

    members = [Annotated[s, Tag(n)] for n, s in names.items()]
    if plugin is not None:
        members.append(Annotated[plugin, Tag(PLUGIN)])
    return Annotated[Union[tuple(members)], Discriminator(tag)]  # noqa: UP007 (built at run time)


def typing_literal(spec: type[Spec]) -> str:
    """The one value of a spec's ``type: Literal[...]`` field."""
    (value,) = spec.model_fields["type"].annotation.__args__
    return value


# ---------------------------------------------------------------- encoders
class CNNSpec(Spec):
    """The ImageNet CNNs (omnifuse.encoders.vision.cnn): packaged weights, a square input, a crop."""

    reads: ClassVar[Modality] = Modality.IMAGE
    type: str
    weights: str | None = Field(None, description="asset name or .safetensors path; null = random")
    image_size: int = Field(224, ge=32)
    crop: bool = Field(True, description="resize+centre-crop (ImageNet eval) or resize the whole image")

    def tiling_problem(self) -> str | None:
        if self.crop:
            return (
                f"the {self.type} encoder centre-crops (crop: true), which would cut the border off every tile "
                "and the sides off the global view; set crop: false"
            )
        return None


class MobileNetV2Spec(CNNSpec):
    type: Literal["mobilenet_v2"]
    weights: str | None = Field("mobilenet_v2", description="asset name or .safetensors path; null = random")


class EfficientNetLite0Spec(CNNSpec):
    type: Literal["efficientnet_lite0"]
    weights: str | None = Field(
        "efficientnet_lite0", description="asset name or .safetensors path; null = random"
    )


class HFVisionSpec(Spec):
    reads: ClassVar[Modality] = Modality.IMAGE
    type: Literal["hf"]
    name: str = Field(
        description="Hugging Face id or local folder of a vision tower (CLIP, SigLIP, ViT, DINOv2)"
    )
    layer: int = Field(-1, description="which hidden state to use (-1 = last, -2 = LLaVA's penultimate)")
    drop_cls: bool = True

    def tiling_problem(self) -> str | None:
        return None


SingleEncoderSpec = tagged(MobileNetV2Spec, EfficientNetLite0Spec, HFVisionSpec, plugin=EncoderPluginSpec)


class MultiEncoderSpec(Spec):
    """Several encoders for one modality (SPHINX, Prismatic), each with its own preprocessing."""

    reads: ClassVar[Modality] = Modality.IMAGE
    type: Literal["multi"]
    encoders: tuple[SingleEncoderSpec, ...] = Field(min_length=2, description="two or more encoders")
    combine: Literal["channel", "token"] = Field(
        "channel",
        description="channel: pool every grid to the smallest one and concatenate features per token; "
        "token: concatenate the token sequences (equal widths needed)",
    )


class WhisperEncoderSpec(Spec):
    """Whisper's encoder over the real length of each clip (no 30 s padding), 50 frames per second."""

    reads: ClassVar[Modality] = Modality.AUDIO
    type: Literal["whisper"]
    weights: str = Field("whisper-base", description="packaged asset name, Hugging Face id or folder")
    max_seconds: float = Field(
        30.0, gt=0, le=30.0, description="longer clips are refused with an error (Whisper's window is 30 s)"
    )


class VideoSamplingSpec(Spec):
    """Which frames of a video are encoded: exactly ``uniform`` frames (segment centres), or ``fps``
    frames per second (at most ``max_frames``; a longer clip gets ``max_frames`` uniform frames)."""

    uniform: int | None = Field(None, ge=1, le=256, description="N frames at the centres of N equal segments")
    fps: float | None = Field(None, gt=0, le=60, description="frames per second (instead of uniform)")
    max_frames: int = Field(32, ge=1, le=256, description="most frames per clip with fps sampling")

    @model_validator(mode="after")
    def _one(self) -> VideoSamplingSpec:
        if (self.uniform is None) == (self.fps is None):
            raise ValueError("give exactly one of uniform: N (frames) or fps: F (frames per second)")
        return self


class FramesEncoderSpec(Spec):
    """A video as sampled frames, each through an image encoder (Video-LLaMA's frame path); the audio
    track optionally goes to ``encoders.audio`` (omnifuse.encoders.video)."""

    reads: ClassVar[Modality] = Modality.VIDEO
    type: Literal["frames"]
    image: SingleEncoderSpec = Field(description="the image encoder run on every frame")
    sampling: VideoSamplingSpec = VideoSamplingSpec(uniform=8)
    audio: bool = Field(
        False, description="also give the clip's audio track to encoders.audio (Video-LLaMA's audio branch)"
    )
    max_seconds: float = Field(600.0, gt=0, description="longer videos are refused (from the header)")

    def tiling_problem(self) -> str | None:
        return "tiling splits images, not video frames; remove model.tiling.video"


EncoderSpec = tagged(
    MobileNetV2Spec,
    EfficientNetLite0Spec,
    HFVisionSpec,
    MultiEncoderSpec,
    WhisperEncoderSpec,
    FramesEncoderSpec,
    plugin=EncoderPluginSpec,
)


class TilingSpec(Spec):
    """High-resolution tiling (LLaVA-NeXT, SPHINX): a global view plus tiles of the full image, each
    through the encoder and connector, with position markers as plain text (omnifuse.processing.tiling)."""

    max_tiles: int = Field(4, ge=2, description="most tiles per image; the grid follows the aspect ratio")
    tile_size: int | None = Field(
        None, ge=8, description="tile side in pixels of the resized image; null = the encoder's input size"
    )
    global_view: bool = Field(True, description="also give the whole image resized to the encoder's input")
    markers: Literal["text", "newline"] = Field(
        "text",
        description="text: '<global>' and '<tile r,c>' before each view; newline: a newline before each tile row",
    )


# ---------------------------------------------------------------- connectors
class LinearConnectorSpec(Spec):
    type: Literal["linear"]


class MLPConnectorSpec(Spec):
    type: Literal["mlp"]
    hidden: int | None = Field(None, ge=1, description="hidden width; null = the LLM's hidden size (LLaVA)")


class PoolConnectorSpec(Spec):
    type: Literal["pool"]
    grid: int = Field(2, ge=1, description="pool the encoder's feature grid to grid×grid tokens")
    pooling: Literal["avg", "max", "avgmax"] = Field(
        "avg",
        description="avg: mean of each cell; max: its strongest activation (a small object over a plain "
        "background); avgmax: both, concatenated (twice the projector's input width)",
    )
    projector: Literal["linear", "mlp"] = "mlp"
    hidden: int | None = Field(None, ge=1)


class PerceiverConnectorSpec(Spec):
    type: Literal["perceiver"]
    num_latents: int = Field(
        64, ge=1, description="learned latents = image tokens per item, any input length"
    )
    depth: int = Field(2, ge=1, description="cross-attention + feed-forward layers")
    heads: int = Field(8, ge=1)
    dim: int | None = Field(None, ge=1, description="width of the latents; null = the LLM's hidden size")
    ffn_mult: int = Field(4, ge=1)


class PixelShuffleConnectorSpec(Spec):
    type: Literal["pixel_shuffle"]
    factor: int = Field(
        2, ge=1, description="r: each r×r block of the token grid becomes one token (r² channels)"
    )
    projector: Literal["linear", "mlp"] = "mlp"
    hidden: int | None = Field(None, ge=1)


class QFormerConnectorSpec(Spec):
    """BLIP-2 Q-Former: learned queries cross-attend to the image inside a BERT (omnifuse.connectors.qformer)."""

    type: Literal["qformer"]
    text_model: str = Field(
        "all-minilm-l6-v2", description="BERT to start from: packaged name, HF id or folder"
    )
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="pretrained = BERT weights (cross-attention new); random = shape only"
    )
    num_queries: int = Field(32, ge=1, description="learned queries = image tokens given to the LLM")
    cross_attention_every: int = Field(2, ge=1, description="cross-attention in every k-th BERT layer")
    embed_dim: int = Field(256, ge=1, description="width of the image-text contrastive (ITC) space")
    max_text_len: int = Field(32, ge=4, description="caption tokens kept in stage-1 objectives")
    projector: Literal["linear", "mlp"] = "linear"
    hidden: int | None = Field(None, ge=1)


class StackConnectorSpec(Spec):
    """Ultravox: stack ``factor`` consecutive audio frames into one token, then RMSNorm → linear → SwiGLU →
    linear → RMSNorm into the LLM's width (omnifuse.connectors.stack)."""

    type: Literal["stack"]
    factor: int = Field(
        8, ge=1, description="frames per token (Whisper's 50 Hz / 8 = 6.25 tokens per second)"
    )
    hidden: int | None = Field(None, ge=1, description="SwiGLU width; null = the LLM's hidden size")


class VideoQFormerSpec(Spec):
    """Video-LLaMA's video Q-Former: every frame's tokens + a learned frame-position embedding, then
    learned queries cross-attend to all frames (omnifuse.connectors.video)."""

    video: ClassVar[bool] = True
    type: Literal["video_qformer"]
    num_queries: int = Field(32, ge=1, description="learned queries = video tokens given to the LLM")
    layers: int = Field(2, ge=1, description="Q-Former layers (Video-LLaMA: 2), each with cross-attention")
    hidden: int = Field(256, ge=8, description="Q-Former width")
    heads: int = Field(4, ge=1, description="attention heads; must divide hidden")
    frame_tokens: int | None = Field(
        4, ge=1, description="average-pool each frame's token grid to this many tokens first; null = all"
    )
    projector: Literal["linear", "mlp"] = "linear"

    @model_validator(mode="after")
    def _heads(self) -> VideoQFormerSpec:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self


class FramePoolSpec(Spec):
    """The cheap video baseline: each frame pooled to ``grid``² tokens and projected; the frames' tokens
    follow each other, each frame's led by its time as text ("at 1.5 s:") when ``timestamps``."""

    video: ClassVar[bool] = True
    type: Literal["frame_pool"]
    grid: int = Field(1, ge=1, description="tokens per frame = grid²")
    pooling: Literal["avg", "max", "avgmax"] = Field(
        "avg", description="as the pool connector's: avg, max (a small shape keeps its colour) or both"
    )
    projector: Literal["linear", "mlp"] = "mlp"
    hidden: int | None = Field(None, ge=1)
    timestamps: bool = Field(True, description='write each frame\'s time before its tokens ("at 1.5 s:")')


ConnectorSpec = tagged(
    VideoQFormerSpec,
    FramePoolSpec,
    LinearConnectorSpec,
    MLPConnectorSpec,
    PoolConnectorSpec,
    PerceiverConnectorSpec,
    PixelShuffleConnectorSpec,
    QFormerConnectorSpec,
    StackConnectorSpec,
    plugin=ConnectorPluginSpec,
)


# ---------------------------------------------------------------- fusion, llm
class EarlyFusionSpec(Spec):
    type: Literal["early"] = "early"


class CrossAttentionFusionSpec(Spec):
    """Flamingo: tanh-gated cross-attention blocks (gates start at 0) before every N-th decoder layer;
    the text holds no media tokens. Their parameters are the component ``fusion``."""

    type: Literal["cross_attention"]
    every_n: int = Field(1, ge=1, description="a block before layers N-1, 2N-1, … (1 = every layer)")
    heads: int = Field(8, ge=1, description="attention heads; must divide the LLM's hidden size")
    ffn_mult: int = Field(4, ge=1, description="feed-forward width as a multiple of the LLM's hidden size")


FusionSpec = tagged(EarlyFusionSpec, CrossAttentionFusionSpec, plugin=FusionPluginSpec)


class LLMSpec(Spec):
    name: str = Field("smollm2-135m-instruct", description="packaged asset name, Hugging Face id or folder")
    system_prompt: str | None = Field(
        None, description="system turn added to every conversation; null = the chat template's default"
    )
    grounding_tokens: bool = Field(
        False,
        description="add Qwen-VL's <ref> </ref> <box> </box> to the tokenizer as one token each, with new "
        "embedding rows that train whenever the LLM does (docs/grounding.md)",
    )


class ASRSpec(Spec):
    """An ASR cascade (late fusion): spoken parts become their transcript, read by the LLM as text."""

    name: str = Field("whisper-base", description="Whisper: packaged asset name, Hugging Face id or folder")
    batch_size: int = Field(16, ge=1, description="clips transcribed together when a data set is prepared")
    max_seconds: float = Field(30.0, gt=0, le=30.0, description="longer clips are refused with an error")
