"""The alignment recipe (``task: align``): two modalities' cached frozen features put into one space by
one method (omnifuse.alignment): CLIP / SigLIP, linear or deep CCA, DeViSE, a cycle-consistent
autoencoder."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from omnifuse.recipe.features import (
    ClassifierDataSpec,
    FeatureEncoderSpec,
    FeatureModelSpec,
    check_feature_encoders,
)
from omnifuse.recipe.runtime import RuntimeSpec, no_packing, no_quantize, one_process_only
from omnifuse.recipe.schema import Seed, Spec


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


class AlignModelSpec(FeatureModelSpec):
    encoders: dict[str, FeatureEncoderSpec] = Field(
        description="the two modalities (image, audio or text) → frozen encoder; the first is A, the second B"
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
        check_feature_encoders(self.encoders, self.normalize, "modalities")
        return self


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
    runtime: RuntimeSpec = RuntimeSpec()

    @model_validator(mode="after")
    def _check(self) -> AlignRecipe:
        one_process_only(self.runtime, "align")
        no_quantize(self.runtime, "align")
        no_packing(self.runtime, "align")
        if isinstance(self.method, DeepCCAMethodSpec) and self.train.batch_size <= self.method.dim:
            raise ValueError(
                f"train.batch_size ({self.train.batch_size}) must exceed method.dim ({self.method.dim}): deep CCA "
                "estimates dim×dim covariances on each batch"
            )
        if isinstance(self.method, DeViSEMethodSpec):
            kinds = [e.reads.value for e in self.model.encoders.values()]
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
