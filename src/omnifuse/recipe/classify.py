"""The classifier recipe (``task: classify``): classic multimodal classification on cached frozen-encoder
features (omnifuse.models.features, omnifuse.fusion.classic). Each fusion spec says which feature form
it reads (``features``: pooled vectors, token sequences, or either)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from omnifuse.recipe.features import (
    ClassifierDataSpec,
    FeatureEncoderSpec,
    FeatureModelSpec,
    LogMelSpec,
    PixelsSpec,
    check_feature_encoders,
)
from omnifuse.recipe.privacy import PrivacySpec
from omnifuse.recipe.runtime import RuntimeSpec, no_packing, no_quantize, one_process_only
from omnifuse.recipe.schema import Seed, Spec


class _FusionBase(Spec):
    dim: int = Field(64, ge=1, description="width each modality is projected to")


class ConcatFusionSpec(_FusionBase):
    """Feature level: the projected modality vectors concatenated."""

    feature_forms: ClassVar[tuple[str, ...]] = ("pooled",)
    type: Literal["concat"]


class AttentionFusionSpec(_FusionBase):
    """Feature level: attention-weighted sum of the projected vectors (over modalities with pooled
    features; over every token of every modality with token features)."""

    feature_forms: ClassVar[tuple[str, ...]] = (
        "pooled",
        "tokens",
    )
    type: Literal["attention"]


class GatedFusionSpec(_FusionBase):
    """Feature level: gated multimodal unit (Arevalo et al. 2017), one gate per modality and dimension."""

    feature_forms: ClassVar[tuple[str, ...]] = ("pooled",)
    type: Literal["gated"]


class TensorFusionSpec(_FusionBase):
    """Feature level: tensor fusion (Zadeh et al. 2017), the outer product of the [h; 1] vectors."""

    feature_forms: ClassVar[tuple[str, ...]] = ("pooled",)
    type: Literal["tensor"]
    dim: int = Field(
        16, ge=1, description="width each modality is projected to; the product has (dim+1)^M entries"
    )


class LowRankTensorFusionSpec(_FusionBase):
    """Feature level: low-rank multimodal fusion (Liu et al. 2018), tensor fusion with rank-r factors."""

    feature_forms: ClassVar[tuple[str, ...]] = ("pooled",)
    type: Literal["low_rank_tensor"]
    rank: int = Field(4, ge=1)
    out: int = Field(64, ge=1, description="width of the fused vector")


class TransformerFusionSpec(_FusionBase):
    """Feature level on tokens: every modality's tokens + a modality embedding + a [CLS] token through a
    small transformer encoder; the [CLS] output is the fused vector."""

    feature_forms: ClassVar[tuple[str, ...]] = ("tokens",)
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

    feature_forms: ClassVar[tuple[str, ...]] = ("tokens",)
    type: Literal["data"]
    channels: int = Field(32, ge=1, description="channels of the CNN's first block (doubled in the second)")


class LateAverageSpec(_FusionBase):
    """Decision level: each modality has its own classifier; their class probabilities are averaged."""

    feature_forms: ClassVar[tuple[str, ...]] = ("pooled",)
    type: Literal["late_average"]


class LateWeightedSpec(_FusionBase):
    """Decision level: a learned weight per modality (softmax) for the average of probabilities."""

    feature_forms: ClassVar[tuple[str, ...]] = ("pooled",)
    type: Literal["late_weighted"]


class LateStackingSpec(_FusionBase):
    """Decision level: a meta-classifier over the per-modality logits (stacking)."""

    feature_forms: ClassVar[tuple[str, ...]] = ("pooled",)
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


class ClassifierModelSpec(FeatureModelSpec):
    encoders: dict[str, FeatureEncoderSpec] = Field(
        description="modality (image, audio or text) → frozen encoder whose features are cached"
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
        check_feature_encoders(self.encoders, self.normalize, "a classifier's modalities")
        allowed = self.fusion.feature_forms
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
        return self.fusion.feature_forms[0] if self.features == "auto" else self.features


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
    runtime: RuntimeSpec = RuntimeSpec()

    @model_validator(mode="after")
    def _check_runtime(self) -> ClassifierRecipe:
        one_process_only(self.runtime, "classify", privacy=self.privacy is not None)
        no_quantize(self.runtime, "classify")
        no_packing(self.runtime, "classify")
        return self
