"""The frozen-encoder features that classifiers (``task: classify``) and alignment (``task: align``) read:
the encoders whose outputs are cached (omnifuse.models.features), their normalisation, the data.

A sample's inputs are read from its user turn by modality: the image part, the audio part, or the
text; each encoder spec says which one it reads (``reads``), and the modality names of these recipes are
exactly those.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from omnifuse.recipe.components import EfficientNetLite0Spec, HFVisionSpec, MobileNetV2Spec
from omnifuse.recipe.schema import Modality, Seed, Spec


class PixelsSpec(Spec):
    """Raw grey-level pixels, resized: the 2-D input map that data-level fusion stacks as a channel."""

    reads: ClassVar[Modality] = Modality.IMAGE
    type: Literal["pixels"]
    size: int = Field(32, ge=4, description="side of the square map (rows × columns)")


class MiniLMSpec(Spec):
    """A BERT sentence encoder (MiniLM): mean-pooled, L2-normalised 384-d vectors, or its token states."""

    reads: ClassVar[Modality] = Modality.TEXT
    type: Literal["minilm"]
    name: str = Field("all-minilm-l6-v2", description="packaged name, Hugging Face id or folder")
    max_length: int = Field(32, ge=2, description="word pieces kept (token features are padded to it)")


class LogMelSpec(Spec):
    """Log-mel spectrogram (Whisper's feature extractor, no weights): per-band mean and standard deviation
    over time (pooled), or the spectrogram averaged into ``tokens`` time segments (tokens)."""

    reads: ClassVar[Modality] = Modality.AUDIO
    type: Literal["logmel"]
    n_mels: int = Field(80, ge=8, description="mel bands (80 or 128 for Whisper's filters; any size works)")
    tokens: int = Field(16, ge=1, description="time segments in the token form")


class WhisperFeaturesSpec(Spec):
    """The Whisper encoder over each clip's real length (omnifuse.encoders.audio.whisper): its frames
    mean-pooled, or averaged into ``tokens`` time segments."""

    reads: ClassVar[Modality] = Modality.AUDIO
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

Normalization = Literal["standardize", "l2", "none"]


class FeatureModelSpec(Spec):
    """What the model sections of classifiers and alignments share: modality → frozen encoder whose
    features are cached, and how each modality's features are normalised."""

    encoders: dict[str, FeatureEncoderSpec] = Field(
        description="modality (image, audio or text) → frozen encoder"
    )
    normalize: dict[str, Normalization] = Field(
        default_factory=dict,
        description="modality → standardize (train-split mean/std, the default), l2 or none",
    )

    def normalization(self, modality: str) -> str:
        return self.normalize.get(modality, "standardize")


def check_feature_encoders(encoders: Mapping[str, Spec], normalize: Mapping[str, str], who: str) -> None:
    """Modality names are the inputs the encoders read (image, audio, text), and every normalised
    modality has an encoder (the encoder's ``reads`` names the one modality it may go under, so the
    closed vocabulary needs no other check); ``who`` is how the message calls the recipe's modalities."""
    for modality, enc in encoders.items():
        kind = enc.reads.value
        if modality != kind:
            raise ValueError(
                f"model.encoders.{modality}: {who} are named by the input they read (image, audio, text); "
                f"the {enc.type} encoder reads the {kind}, so name it {kind}"
            )
    extra = sorted(set(normalize) - set(encoders))
    if extra:
        raise ValueError(f"model.normalize: {extra} have no encoder (encoders: {sorted(encoders)})")


class ClassifierDataSpec(Spec):
    train: str = Field(description="JSONL file or built-in data set, e.g. av-digits:train")
    eval: str = Field(description="held-out data, e.g. av-digits:test")
    train_limit: int | None = Field(None, ge=1, description="seeded subset of the training data; null = all")
    eval_limit: int | None = Field(None, ge=1, description="seeded subset of the eval data; null = all")
    eval_seed: Seed = 0
