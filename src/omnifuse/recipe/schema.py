"""The recipe: one YAML file declaring encoders × connector × fusion × LLM plus training stages.

Every section is a frozen pydantic model with ``extra="forbid"``, so an unknown key, a wrong type or
an unknown component name fails at load time with the key path and the allowed values (see
:func:`omnifuse.recipe.load.load_recipe`). Component choices are discriminated unions on ``type``:
adding a component means adding a spec class here and a builder in ``omnifuse.models.builders``.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type accepts true/false (bool itself, Any, or a union / container holding one)."""
    if annotation is bool or annotation is Any:
        return True
    if typing.get_origin(annotation) is Literal:
        return any(isinstance(v, bool) for v in typing.get_args(annotation))
    return any(_admits_bool(a) for a in typing.get_args(annotation))


class Spec(BaseModel):
    # NaN and inf are refused in every float field: a NaN learning rate trains NaN weights.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        # pydantic's lax mode reads `steps: true` as 1 (and YAML's yes/no/on/off are booleans too).
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and not _admits_bool(field.annotation):
                    raise ValueError(
                        f"{key}: must be a number or text, not {str(value).lower()} (a YAML boolean)"
                    )
        return data


# Random seeds: what numpy's and Python's seeding accept on every platform.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="random seed, 0 … 2**32 − 1")]
# The modalities a generative model reads: a sample's media parts are image and audio parts.
MODALITIES = ("image", "audio")


# ---------------------------------------------------------------- encoders
class MobileNetV2Spec(Spec):
    type: Literal["mobilenet_v2"]
    weights: str | None = Field("mobilenet_v2", description="asset name or .safetensors path; null = random")
    image_size: int = Field(224, ge=32)
    crop: bool = Field(True, description="resize+centre-crop (ImageNet eval) or resize the whole image")


class EfficientNetLite0Spec(Spec):
    type: Literal["efficientnet_lite0"]
    weights: str | None = "efficientnet_lite0"
    image_size: int = Field(224, ge=32)
    crop: bool = True


class HFVisionSpec(Spec):
    type: Literal["hf"]
    name: str = Field(
        description="Hugging Face id or local folder of a vision tower (CLIP, SigLIP, ViT, DINOv2)"
    )
    layer: int = Field(-1, description="which hidden state to use (-1 = last, -2 = LLaVA's penultimate)")
    drop_cls: bool = True


SingleEncoderSpec = Annotated[
    MobileNetV2Spec | EfficientNetLite0Spec | HFVisionSpec, Field(discriminator="type")
]


class MultiEncoderSpec(Spec):
    """Several encoders for one modality (SPHINX, Prismatic), each with its own preprocessing."""

    type: Literal["multi"]
    encoders: tuple[SingleEncoderSpec, ...] = Field(min_length=2, description="two or more encoders")
    combine: Literal["channel", "token"] = Field(
        "channel",
        description="channel: pool every grid to the smallest one and concatenate features per token; "
        "token: concatenate the token sequences (equal widths needed)",
    )


class WhisperEncoderSpec(Spec):
    """Whisper's encoder over the real length of each clip (no 30 s padding), 50 frames per second."""

    type: Literal["whisper"]
    weights: str = Field("whisper-base", description="packaged asset name, Hugging Face id or folder")
    max_seconds: float = Field(
        30.0, gt=0, le=30.0, description="longer clips are refused with an error (Whisper's window is 30 s)"
    )


EncoderSpec = Annotated[
    MobileNetV2Spec | EfficientNetLite0Spec | HFVisionSpec | MultiEncoderSpec | WhisperEncoderSpec,
    Field(discriminator="type"),
]
AUDIO_ENCODERS = (WhisperEncoderSpec,)  # variable-length encoders: their connector is `stack`


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
    grid: int = Field(2, ge=1, description="average-pool the encoder's feature grid to grid×grid tokens")
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


ConnectorSpec = Annotated[
    LinearConnectorSpec
    | MLPConnectorSpec
    | PoolConnectorSpec
    | PerceiverConnectorSpec
    | PixelShuffleConnectorSpec
    | QFormerConnectorSpec
    | StackConnectorSpec,
    Field(discriminator="type"),
]


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


FusionSpec = Annotated[EarlyFusionSpec | CrossAttentionFusionSpec, Field(discriminator="type")]


class LLMSpec(Spec):
    name: str = Field("smollm2-135m-instruct", description="packaged asset name, Hugging Face id or folder")
    system_prompt: str | None = Field(
        None, description="system turn added to every conversation; null = the chat template's default"
    )


class ASRSpec(Spec):
    """An ASR cascade (late fusion): spoken parts become their transcript, read by the LLM as text."""

    name: str = Field("whisper-base", description="Whisper: packaged asset name, Hugging Face id or folder")
    batch_size: int = Field(16, ge=1, description="clips transcribed together when a data set is prepared")
    max_seconds: float = Field(30.0, gt=0, le=30.0, description="longer clips are refused with an error")


class ModelSpec(Spec):
    encoders: dict[str, EncoderSpec] = Field(description="modality name → encoder (e.g. image, audio)")
    connectors: dict[str, ConnectorSpec] = Field(description="modality name → connector")
    fusion: FusionSpec = EarlyFusionSpec()
    llm: LLMSpec = LLMSpec()
    tiling: dict[str, TilingSpec] = Field(
        default_factory=dict, description="modality name → high-resolution tiling; absent = off"
    )
    asr: ASRSpec | None = Field(
        None, description="ASR cascade for spoken input (instead of an audio encoder); null = none"
    )

    @model_validator(mode="after")
    def _audio(self) -> ModelSpec:
        for modality, enc in self.encoders.items():
            audio_encoder = isinstance(enc, AUDIO_ENCODERS)
            if audio_encoder != (modality == "audio"):
                what = "an audio encoder" if audio_encoder else f"a {enc.type} encoder"
                raise ValueError(
                    f"model.encoders.{modality}: {what} cannot read the {modality!r} parts of a sample; audio "
                    "parts go to encoders.audio (type whisper), images to an image encoder"
                )
            stacks = isinstance(self.connectors.get(modality), StackConnectorSpec)
            if audio_encoder != stacks and modality in self.connectors:
                raise ValueError(
                    f"model.connectors.{modality}: "
                    + (
                        "an audio encoder needs the frame-stacking connector; set {type: stack, factor: 8}"
                        if audio_encoder
                        else "the stack connector is for audio frames; use e.g. {type: mlp} for images"
                    )
                )
        if self.asr is not None and "audio" in self.encoders:
            raise ValueError(
                "model.asr and model.encoders.audio are both set: spoken input reaches the LLM either as a "
                "transcript (asr, the cascade) or as embeddings (encoders.audio); remove one"
            )
        return self

    @model_validator(mode="after")
    def _same_modalities(self) -> ModelSpec:
        for section in ("encoders", "connectors", "tiling"):
            for name in getattr(self, section):
                if name not in MODALITIES:
                    raise ValueError(
                        f"model.{section}.{name}: {name!r} is not a modality omnifuse models read; name it after "
                        f"the sample parts it reads: {' or '.join(MODALITIES)}"
                    )
        if not self.encoders:
            raise ValueError(
                "model.encoders is empty: declare at least one encoder, e.g. image: {type: mobilenet_v2}"
            )
        if set(self.encoders) != set(self.connectors):
            raise ValueError(
                f"model.encoders has {sorted(self.encoders)} but model.connectors has {sorted(self.connectors)}: "
                "every encoder needs a connector with the same name"
            )
        return self

    @model_validator(mode="after")
    def _tiling_fits(self) -> ModelSpec:
        for modality in self.tiling:
            if modality not in self.encoders:
                raise ValueError(
                    f"model.tiling.{modality}: there is no {modality} encoder (encoders: {sorted(self.encoders)})"
                )
            if isinstance(self.fusion, CrossAttentionFusionSpec):
                raise ValueError(
                    f"model.tiling.{modality}: tiling marks each view's position in the text, but cross-attention "
                    "fusion puts no media tokens in the text; remove model.tiling or use fusion: {type: early}"
                )
            spec = self.encoders[modality]
            for enc in spec.encoders if isinstance(spec, MultiEncoderSpec) else (spec,):
                if isinstance(enc, MobileNetV2Spec | EfficientNetLite0Spec) and enc.crop:
                    raise ValueError(
                        f"model.tiling.{modality}: the {enc.type} encoder centre-crops (crop: true), which would cut "
                        "the border off every tile and the sides off the global view; set crop: false"
                    )
        return self

    def components(self) -> list[str]:
        """The names a stage may put in ``trainable`` / ``lr``: module paths inside the model."""
        names = ["encoders", "connectors", "llm"]
        if isinstance(self.fusion, CrossAttentionFusionSpec):
            names.append("fusion")  # the gated cross-attention blocks
        names += [f"encoders.{m}" for m in self.encoders] + [f"connectors.{m}" for m in self.connectors]
        return names


# ---------------------------------------------------------------- data, stages
class DataSpec(Spec):
    train: str = Field("easy-vqa:train", description="JSONL file or built-in data set 'easy-vqa:train'")
    eval: str = "easy-vqa:test"
    eval_limit: int | None = Field(1000, ge=1, description="seeded subset of the eval data; null = all")
    eval_seed: Seed = 0


class LoRASpec(Spec):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0, description="LoRA scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


Trainability = Literal["frozen", "lora", "full"]


class StageSpec(Spec):
    name: str
    trainable: dict[str, Trainability] = Field(
        default_factory=dict, description="component → mode; unlisted = frozen"
    )
    lr: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="component → learning rate (0 only for a frozen component)"
    )
    steps: int | None = Field(None, ge=1, description="optimizer steps (give steps or epochs)")
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup: int = Field(0, ge=0, description="linear warm-up steps, then cosine decay to min_lr_ratio")
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    data: str | None = Field(None, description="training data of this stage; null = data.train")
    limit: int | None = Field(None, ge=1, description="use a seeded subset of this many training samples")
    balance_by: str | None = Field(
        None, description="meta key (e.g. question_type) whose values are drawn equally often in this stage"
    )
    save_every: int = Field(100, ge=1, description="checkpoint every N optimizer steps")
    objective: Literal["generative", "qformer", "distill"] = Field(
        "generative",
        description="generative = next-token loss through the LLM; qformer = BLIP-2 stage 1 (ITC + ITM + ITG "
        "on image-caption pairs, Q-Former alone, no LLM); distill = the model hearing the question learns to "
        "match the same model reading its transcript (meta.transcript), plus the next-token loss",
    )
    distill_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="distill: loss = w·T²·KL(text ‖ audio) + (1 − w)·next-token loss"
    )
    distill_temperature: float = Field(1.0, gt=0, description="distill: softmax temperature T")

    @field_validator("lr", mode="before")
    @classmethod
    def _lr_numbers(cls, value):
        if isinstance(value, dict):
            for comp, lr in value.items():
                if isinstance(lr, bool):
                    raise ValueError(
                        f"{comp}: a learning rate is a number, not {str(lr).lower()} (a YAML boolean)"
                    )
        return value

    @model_validator(mode="after")
    def _check(self) -> StageSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of steps or epochs")
        if not any(mode != "frozen" for mode in self.trainable.values()):
            raise ValueError(
                f"stage {self.name!r}: nothing is trainable; set e.g. trainable: {{connectors: full}}"
            )
        return self


class GenerationSpec(Spec):
    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)


class EvalSpec(Spec):
    batch_size: int = Field(32, ge=1)
    blind: bool = Field(True, description="also evaluate the text-only (blind) baseline")
    every: int | None = Field(
        None,
        ge=1,
        description="evaluate during training every N optimizer steps of each generative stage and at its "
        "end, on the model being trained (logged in metrics.jsonl); null = only after training",
    )
    during_limit: int = Field(
        200, ge=1, description="seeded subset of the eval data used during training (data.eval_seed)"
    )


class Recipe(Spec):
    name: str
    seed: Seed = 0
    model: ModelSpec
    data: DataSpec = DataSpec()
    stages: tuple[StageSpec, ...]
    lora: LoRASpec = LoRASpec()
    generation: GenerationSpec = GenerationSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("stages")
    @classmethod
    def _non_empty(cls, stages: tuple[StageSpec, ...]) -> tuple[StageSpec, ...]:
        if not stages:
            raise ValueError("stages is empty: declare at least one training stage")
        return stages

    @model_validator(mode="after")
    def _check_components(self) -> Recipe:
        allowed = self.model.components()
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, stage in enumerate(self.stages):
            for section in ("trainable", "lr"):
                for comp in getattr(stage, section):
                    if comp not in allowed:
                        raise ValueError(
                            f"stages.{i}.{section}: unknown component {comp!r}; allowed: {', '.join(allowed)}"
                        )
            for comp, mode in stage.trainable.items():
                if mode != "frozen" and comp not in stage.lr:
                    raise ValueError(
                        f"stages.{i} ({stage.name}): component {comp!r} trains but has no lr; add lr: {{{comp}: 1e-4}}"
                    )
                if mode != "frozen" and stage.lr[comp] == 0:
                    raise ValueError(
                        f"stages.{i} ({stage.name}): component {comp!r} trains ({mode}) with lr 0, so it would not "
                        f"change; give it a positive lr, or set trainable.{comp}: frozen"
                    )
        return self

    @model_validator(mode="after")
    def _check_objectives(self) -> Recipe:
        qformers = [m for m, c in self.model.connectors.items() if isinstance(c, QFormerConnectorSpec)]
        for i, stage in enumerate(self.stages):
            if stage.objective != "qformer":
                continue
            if len(qformers) != 1:
                raise ValueError(
                    f"stages.{i} ({stage.name}): objective qformer needs exactly one connector of type qformer, "
                    f"found {len(qformers)}; set e.g. connectors: {{image: {{type: qformer}}}}"
                )
            trained_llm = [c for c, mode in stage.trainable.items() if c == "llm" and mode != "frozen"]
            if trained_llm:
                raise ValueError(
                    f"stages.{i} ({stage.name}): objective qformer does not run the LLM, so it cannot train it; "
                    "remove llm from trainable (train the LLM in a generative stage)"
                )
        return self

    def lora_components(self) -> list[str]:
        """Components that any stage trains with LoRA (adapters must exist before loading weights)."""
        return sorted({c for s in self.stages for c, m in s.trainable.items() if m == "lora"})


# ================================================================ classifiers (task: classify)
# Classic multimodal classification on frozen-encoder features (omnifuse.encoders.features,
# omnifuse.fusion.classic, omnifuse.training.classifier). The inputs of a sample are read from its user
# turn by input kind: the image part, the audio part, or the text.
class PixelsSpec(Spec):
    """Raw grey-level pixels, resized: the 2-D input map that data-level fusion stacks as a channel."""

    type: Literal["pixels"]
    size: int = Field(32, ge=4, description="side of the square map (rows × columns)")


class MiniLMSpec(Spec):
    """A BERT sentence encoder (MiniLM): mean-pooled, L2-normalised 384-d vectors, or its token states."""

    type: Literal["minilm"]
    name: str = Field("all-minilm-l6-v2", description="packaged name, Hugging Face id or folder")
    max_length: int = Field(32, ge=2, description="word pieces kept (token features are padded to it)")


class LogMelSpec(Spec):
    """Log-mel spectrogram (Whisper's feature extractor, no weights): per-band mean and standard deviation
    over time (pooled), or the spectrogram averaged into ``tokens`` time segments (tokens)."""

    type: Literal["logmel"]
    n_mels: int = Field(80, ge=8, description="mel bands (80 or 128 for Whisper's filters; any size works)")
    tokens: int = Field(16, ge=1, description="time segments in the token form")


class WhisperFeaturesSpec(Spec):
    """The Whisper encoder over each clip's real length (omnifuse.encoders.audio.whisper): its frames
    mean-pooled, or averaged into ``tokens`` time segments."""

    type: Literal["whisper"]
    weights: str = Field("whisper-base", description="packaged asset name, Hugging Face id or folder")
    tokens: int = Field(16, ge=1, description="time segments in the token form")


FeatureEncoderSpec = Annotated[
    MobileNetV2Spec
    | EfficientNetLite0Spec
    | HFVisionSpec
    | PixelsSpec
    | MiniLMSpec
    | LogMelSpec
    | WhisperFeaturesSpec,
    Field(discriminator="type"),
]

# Which input of a sample each encoder reads; the modality names of a classifier are these kinds.
INPUT_KINDS: dict[type, str] = {
    MobileNetV2Spec: "image",
    EfficientNetLite0Spec: "image",
    HFVisionSpec: "image",
    PixelsSpec: "image",
    MiniLMSpec: "text",
    LogMelSpec: "audio",
    WhisperFeaturesSpec: "audio",
}


class _FusionBase(Spec):
    dim: int = Field(64, ge=1, description="width each modality is projected to")


class ConcatFusionSpec(_FusionBase):
    """Feature level: the projected modality vectors concatenated."""

    type: Literal["concat"]


class AttentionFusionSpec(_FusionBase):
    """Feature level: attention-weighted sum of the projected vectors (over modalities with pooled
    features; over every token of every modality with token features)."""

    type: Literal["attention"]


class GatedFusionSpec(_FusionBase):
    """Feature level: gated multimodal unit (Arevalo et al. 2017), one gate per modality and dimension."""

    type: Literal["gated"]


class TensorFusionSpec(_FusionBase):
    """Feature level: tensor fusion (Zadeh et al. 2017), the outer product of the [h; 1] vectors."""

    type: Literal["tensor"]
    dim: int = Field(
        16, ge=1, description="width each modality is projected to; the product has (dim+1)^M entries"
    )


class LowRankTensorFusionSpec(_FusionBase):
    """Feature level: low-rank multimodal fusion (Liu et al. 2018), tensor fusion with rank-r factors."""

    type: Literal["low_rank_tensor"]
    rank: int = Field(4, ge=1)
    out: int = Field(64, ge=1, description="width of the fused vector")


class TransformerFusionSpec(_FusionBase):
    """Feature level on tokens: every modality's tokens + a modality embedding + a [CLS] token through a
    small transformer encoder; the [CLS] output is the fused vector."""

    type: Literal["transformer"]
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ffn_mult: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerFusionSpec:
        if self.dim % self.heads:
            raise ValueError(
                f"dim {self.dim} is not divisible by heads {self.heads}; choose a multiple of heads"
            )
        return self


class DataFusionSpec(Spec):
    """Data level: the modalities' 2-D input maps (pixels rows × columns, log-mel time × bands) stacked as
    channels of one image, read by a small CNN."""

    type: Literal["data"]
    channels: int = Field(32, ge=1, description="channels of the CNN's first block (doubled in the second)")


class LateAverageSpec(_FusionBase):
    """Decision level: each modality has its own classifier; their class probabilities are averaged."""

    type: Literal["late_average"]


class LateWeightedSpec(_FusionBase):
    """Decision level: a learned weight per modality (softmax) for the average of probabilities."""

    type: Literal["late_weighted"]


class LateStackingSpec(_FusionBase):
    """Decision level: a meta-classifier over the per-modality logits (stacking)."""

    type: Literal["late_stacking"]


ClassicFusionSpec = Annotated[
    ConcatFusionSpec
    | AttentionFusionSpec
    | GatedFusionSpec
    | TensorFusionSpec
    | LowRankTensorFusionSpec
    | TransformerFusionSpec
    | DataFusionSpec
    | LateAverageSpec
    | LateWeightedSpec
    | LateStackingSpec,
    Field(discriminator="type"),
]

# What each fusion reads: pooled vectors, token sequences, or either (attention).
FUSION_FEATURES: dict[type, tuple[str, ...]] = {
    ConcatFusionSpec: ("pooled",),
    AttentionFusionSpec: ("pooled", "tokens"),
    GatedFusionSpec: ("pooled",),
    TensorFusionSpec: ("pooled",),
    LowRankTensorFusionSpec: ("pooled",),
    TransformerFusionSpec: ("tokens",),
    DataFusionSpec: ("tokens",),
    LateAverageSpec: ("pooled",),
    LateWeightedSpec: ("pooled",),
    LateStackingSpec: ("pooled",),
}

Normalization = Literal["standardize", "l2", "none"]


class ClassifierModelSpec(Spec):
    encoders: dict[str, FeatureEncoderSpec] = Field(
        description="modality (image, audio or text) → frozen encoder whose features are cached"
    )
    normalize: dict[str, Normalization] = Field(
        default_factory=dict,
        description="modality → standardize (train-split mean/std, the default), l2 or none",
    )
    features: Literal["auto", "pooled", "tokens"] = Field(
        "auto", description="pooled vectors or token sequences; auto = what the fusion reads"
    )
    fusion: ClassicFusionSpec
    hidden: int = Field(128, ge=0, description="hidden width of the classification head; 0 = linear head")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> ClassifierModelSpec:
        if not self.encoders:
            raise ValueError("model.encoders is empty: declare e.g. image: {type: mobilenet_v2}")
        for modality, enc in self.encoders.items():
            kind = INPUT_KINDS[type(enc)]
            if modality != kind:
                raise ValueError(
                    f"model.encoders.{modality}: a classifier's modalities are named by the input they read "
                    f"(image, audio, text); the {enc.type} encoder reads the {kind}, so name it {kind}"
                )
        extra = sorted(set(self.normalize) - set(self.encoders))
        if extra:
            raise ValueError(f"model.normalize: {extra} have no encoder (encoders: {sorted(self.encoders)})")
        allowed = FUSION_FEATURES[type(self.fusion)]
        if self.features != "auto" and self.features not in allowed:
            raise ValueError(
                f"model.features: fusion {self.fusion.type} reads {' or '.join(allowed)} features, not "
                f"{self.features}; set model.features: {allowed[0]} (or auto)"
            )
        if isinstance(self.fusion, DataFusionSpec):
            learned = [m for m, e in self.encoders.items() if not isinstance(e, PixelsSpec | LogMelSpec)]
            if learned:
                raise ValueError(
                    f"model.fusion: data-level fusion stacks aligned raw input maps, but {learned} use learned "
                    "encoders; use image: {type: pixels} and audio: {type: logmel} (same size), or a "
                    "feature-level fusion"
                )
        return self

    def feature_form(self) -> str:
        """``pooled`` or ``tokens``: what is extracted for this model."""
        return FUSION_FEATURES[type(self.fusion)][0] if self.features == "auto" else self.features

    def normalization(self, modality: str) -> str:
        return self.normalize.get(modality, "standardize")


class ClassifierDataSpec(Spec):
    train: str = Field(description="JSONL file or built-in data set, e.g. av-digits:train")
    eval: str = Field(description="held-out data, e.g. av-digits:test")
    train_limit: int | None = Field(None, ge=1, description="seeded subset of the training data; null = all")
    eval_limit: int | None = Field(None, ge=1, description="seeded subset of the eval data; null = all")
    eval_seed: Seed = 0


class ClassifierTrainSpec(Spec):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1, description="expected batch size (Poisson-sampled with privacy)")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    modality_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="drop each whole modality of a sample with this probability"
    )
    combiner_holdout: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="decision-level fusion with a trained combiner (late_weighted, late_stacking): the seeded "
        "fraction of training samples that trains the combiner on the voters' predictions, the rest trains "
        "the voters; 0 = both on every sample",
    )


class PrivacySpec(Spec):
    """Differentially private training (DP-SGD with Opacus) of the trainable head."""

    target_epsilon: float = Field(gt=0, description="privacy budget ε spent by the end of training")
    delta: float = Field(1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping norm")


class RobustnessSpec(Spec):
    missing: bool = Field(True, description="evaluate with each modality missing (zeroed and dropped)")
    noise_std: tuple[float, ...] = Field(
        (0.5, 1.0, 2.0), description="Gaussian noise std added to the normalised features of each modality"
    )


class ClassifierEvalSpec(Spec):
    batch_size: int = Field(256, ge=1)
    robustness: RobustnessSpec | None = RobustnessSpec()


class ClassifierRecipe(Spec):
    task: Literal["classify"]
    name: str
    seed: Seed = 0
    model: ClassifierModelSpec
    data: ClassifierDataSpec
    train: ClassifierTrainSpec = ClassifierTrainSpec()
    privacy: PrivacySpec | None = None
    eval: ClassifierEvalSpec = ClassifierEvalSpec()


# ================================================================ alignment (task: align)
# Cross-modal alignment on the same cached frozen features (omnifuse.alignment): two modalities, one method.
class _ProjectionMethodSpec(Spec):
    dim: int = Field(128, ge=1, description="width of the shared space")
    hidden: int | None = Field(
        512, ge=1, description="hidden width of the 2-layer projection heads; null = linear"
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    positives: Literal["key", "pair"] = Field(
        "key",
        description="key: batch items with the same key (answer) are positives of each other; pair: only an "
        "item's own pair, as in the papers (equal keys then count as negatives)",
    )


class ClipMethodSpec(_ProjectionMethodSpec):
    """CLIP: symmetric InfoNCE over the batch with a learned temperature (logit scale clamped at 100)."""

    type: Literal["clip"]
    init_temperature: float = Field(0.07, gt=0, description="CLIP's initial temperature")


class SigLipMethodSpec(_ProjectionMethodSpec):
    """SigLIP: a sigmoid loss on every pair of the batch, logit t·sim + b with learned t and b."""

    type: Literal["siglip"]
    init_t: float = Field(10.0, gt=0, description="initial t (the paper's t' = log 10)")
    init_bias: float = Field(-10.0, description="initial b (the paper's −10)")


class CCAMethodSpec(Spec):
    """Linear CCA (scikit-learn); retrieval by cosine similarity of the canonical variates."""

    type: Literal["cca"]
    components: int = Field(16, ge=1, description="canonical pairs kept")
    pca: int | None = Field(
        64, ge=1, description="reduce each modality to at most this many PCA components first; null = raw"
    )
    max_iter: int = Field(1000, ge=1)


class DeepCCAMethodSpec(Spec):
    """Deep CCA (Andrew et al. 2013): two MLPs trained for the total canonical correlation of their outputs."""

    type: Literal["dcca"]
    dim: int = Field(16, ge=1, description="output width of each network = canonical pairs")
    hidden: int = Field(256, ge=1)
    depth: int = Field(2, ge=2, description="linear layers per network")
    r1: float = Field(1e-3, ge=0, description="ridge added to the covariance of modality A's outputs")
    r2: float = Field(1e-3, ge=0, description="ridge added to the covariance of modality B's outputs")


class DeViSEMethodSpec(Spec):
    """DeViSE (Frome et al. 2013): features mapped into the text space of the class names (the answers),
    hinge rank loss; the held-out classes are never trained on and are predicted zero-shot."""

    type: Literal["devise"]
    heldout: tuple[str, ...] = Field(min_length=1, description="class names (answers) left out of training")
    hidden: int | None = Field(None, ge=1, description="hidden width of the map; null = linear (the paper)")
    margin: float = Field(0.1, gt=0, description="hinge margin (the paper's 0.1)")


class CycleMethodSpec(Spec):
    """Cycle-consistent cross-modal autoencoder: reconstruction + translation + A→B→A / B→A→B cycle losses."""

    type: Literal["cycle"]
    latent: int = Field(64, ge=1, description="width of the shared latent space")
    hidden: int = Field(256, ge=1)
    translation_weight: float = Field(1.0, ge=0)
    cycle_weight: float = Field(1.0, ge=0)


AlignMethodSpec = Annotated[
    ClipMethodSpec
    | SigLipMethodSpec
    | CCAMethodSpec
    | DeepCCAMethodSpec
    | DeViSEMethodSpec
    | CycleMethodSpec,
    Field(discriminator="type"),
]


class AlignModelSpec(Spec):
    encoders: dict[str, FeatureEncoderSpec] = Field(
        description="the two modalities (image, audio or text) → frozen encoder; the first is A, the second B"
    )
    normalize: dict[str, Normalization] = Field(
        default_factory=dict,
        description="modality → standardize (train-split mean/std, the default), l2 or none",
    )
    text: Literal["answer", "question"] = Field(
        "answer",
        description="what the text encoder reads: the answer (a caption, a class name) or the question",
    )

    @model_validator(mode="after")
    def _check(self) -> AlignModelSpec:
        if len(self.encoders) != 2:
            raise ValueError(
                f"model.encoders has {len(self.encoders)} modalities ({sorted(self.encoders)}); alignment pairs "
                "exactly two, e.g. image: {type: mobilenet_v2} and text: {type: minilm}"
            )
        for modality, enc in self.encoders.items():
            kind = INPUT_KINDS[type(enc)]
            if modality != kind:
                raise ValueError(
                    f"model.encoders.{modality}: modalities are named by the input they read (image, audio, "
                    f"text); the {enc.type} encoder reads the {kind}, so name it {kind}"
                )
        extra = sorted(set(self.normalize) - set(self.encoders))
        if extra:
            raise ValueError(f"model.normalize: {extra} have no encoder (encoders: {sorted(self.encoders)})")
        return self

    def normalization(self, modality: str) -> str:
        return self.normalize.get(modality, "standardize")


class AlignTrainSpec(Spec):
    """The minibatch loop of the gradient-trained methods (linear CCA is fitted in closed form)."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(
        256, ge=2, description="pairs per batch: the contrastive negatives, the CCA covariances"
    )
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


class AlignRecipe(Spec):
    task: Literal["align"]
    name: str
    seed: Seed = 0
    method: AlignMethodSpec
    model: AlignModelSpec
    data: ClassifierDataSpec
    train: AlignTrainSpec = AlignTrainSpec()

    @model_validator(mode="after")
    def _check(self) -> AlignRecipe:
        if isinstance(self.method, DeepCCAMethodSpec) and self.train.batch_size <= self.method.dim:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must exceed method.dim ({self.method.dim}): deep CCA "
                "estimates dim×dim covariances on each batch"
            )
        if isinstance(self.method, DeViSEMethodSpec):
            kinds = [INPUT_KINDS[type(e)] for e in self.model.encoders.values()]
            if "text" not in kinds or kinds.count("text") != 1:
                raise ValueError(
                    "method devise maps one modality into the text space of the class names: model.encoders needs "
                    "one text encoder (e.g. text: {type: minilm}) and one other (e.g. image: {type: mobilenet_v2})"
                )
            if self.model.text != "answer":
                raise ValueError(
                    "method devise embeds the class names, which are the answers: set model.text: answer"
                )
            if self.model.normalization("text") == "standardize":
                raise ValueError(
                    "method devise compares with unit-length class-name embeddings: set model.normalize.text to "
                    "none or l2 (standardize would move them)"
                )
        return self


# `task:` at the top of a recipe → its class (absent = generate, the multimodal LLM recipe).
RECIPE_KINDS: dict[str, type[Spec]] = {"generate": Recipe, "classify": ClassifierRecipe, "align": AlignRecipe}
