"""The multimodal LLM recipe (no ``task:``, or ``task: generate``): the model's parts, data, stages,
LoRA, generation and evaluation settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from omnifuse.recipe.components import (
    ASRSpec,
    ConnectorSpec,
    EarlyFusionSpec,
    EncoderSpec,
    FusionSpec,
    LLMSpec,
    MultiEncoderSpec,
    QFormerConnectorSpec,
    StackConnectorSpec,
    TilingSpec,
)
from omnifuse.recipe.plugins import PluginSpec
from omnifuse.recipe.privacy import GenerativePrivacySpec
from omnifuse.recipe.runtime import RuntimeSpec
from omnifuse.recipe.schema import Modality, Seed, Spec, check_modality
from omnifuse.recipe.stages import LoRASpec, QFormerObjective, StageSpec

# The modalities a generative model reads: a sample's media parts.
MEDIA = (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO)


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
    init_from: str | None = Field(
        None,
        description="a LLaVA-format folder (LlavaForConditionalGeneration, e.g. from `omnifuse export --format "
        "llava`) to start from: encoders, connectors and llm.name are taken from it; null = none",
    )

    @model_validator(mode="before")
    @classmethod
    def _init_from(cls, data):
        if isinstance(data, dict) and data.get("init_from") is not None:
            from omnifuse.recipe.llava import llava_sections

            return llava_sections(data)
        return data

    @model_validator(mode="after")
    def _audio(self) -> ModelSpec:
        for modality, enc in self.encoders.items():
            audio_encoder = enc.reads == Modality.AUDIO
            if audio_encoder != (modality == "audio"):
                what = "an audio encoder" if audio_encoder else f"a {enc.type} encoder"
                raise ValueError(
                    f"model.encoders.{modality}: {what} cannot read the {modality!r} parts of a sample; audio "
                    "parts go to encoders.audio (type whisper), images to an image encoder"
                )
            connector = self.connectors.get(modality)
            if connector is None or isinstance(connector, PluginSpec) or isinstance(enc, PluginSpec):
                continue  # a plugin's inputs are its own business: checked when the model is built
            stacks = isinstance(connector, StackConnectorSpec)
            if audio_encoder != stacks:
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
    def _video(self) -> ModelSpec:
        for modality, enc in self.encoders.items():
            connector = self.connectors.get(modality)
            if isinstance(enc, PluginSpec) or connector is None or isinstance(connector, PluginSpec):
                continue
            video_encoder = enc.reads == Modality.VIDEO
            if video_encoder != (modality == "video"):
                raise ValueError(
                    f"model.encoders.{modality}: "
                    + (
                        "a frames encoder reads video parts; name it encoders.video"
                        if video_encoder
                        else "video parts need {type: frames, image: {type: mobilenet_v2}} (an image encoder per frame)"
                    )
                )
            video_connector = getattr(connector, "video", False)
            if video_encoder != video_connector:
                raise ValueError(
                    f"model.connectors.{modality}: "
                    + (
                        "a video needs a temporal connector: {type: video_qformer} or {type: frame_pool}"
                        if video_encoder
                        else f"{connector.type} is a connector for video frames (encoders.video)"
                    )
                )
            if video_encoder and enc.audio and "audio" not in self.encoders:
                raise ValueError(
                    "model.encoders.video.audio: true gives the clip's audio track to encoders.audio, but there is "
                    "none; add encoders.audio: {type: whisper} with connectors.audio: {type: stack}, or set audio: false"
                )
        return self

    @model_validator(mode="after")
    def _same_modalities(self) -> ModelSpec:
        for section in ("encoders", "connectors", "tiling"):
            for name in getattr(self, section):
                check_modality(name, MEDIA, f"model.{section}")
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
            if not isinstance(self.fusion, EarlyFusionSpec):
                raise ValueError(
                    f"model.tiling.{modality}: tiling marks each view's position in the text, but cross-attention "
                    "fusion puts no media tokens in the text; remove model.tiling or use fusion: {type: early}"
                )
            spec = self.encoders[modality]
            for enc in spec.encoders if isinstance(spec, MultiEncoderSpec) else (spec,):
                problem = None if isinstance(enc, PluginSpec) else enc.tiling_problem()
                if problem:
                    raise ValueError(f"model.tiling.{modality}: {problem}")
        return self

    def components(self) -> list[str]:
        """The names a stage may put in ``trainable`` / ``lr``: module paths inside the model."""
        names = ["encoders", "connectors", "llm"]
        if not isinstance(self.fusion, EarlyFusionSpec):
            names.append("fusion")  # the gated cross-attention blocks (or a plugin's fusion module)
        names += [f"encoders.{m}" for m in self.encoders] + [f"connectors.{m}" for m in self.connectors]
        return names


class DataSpec(Spec):
    train: str = Field("easy-vqa:train", description="JSONL file or built-in data set 'easy-vqa:train'")
    eval: str = "easy-vqa:test"
    eval_limit: int | None = Field(1000, ge=1, description="seeded subset of the eval data; null = all")
    eval_seed: Seed = 0


class FastVSpec(Spec):
    """Visual-token pruning at inference (FastV, docs/compression.md): after ``layer`` decoder layers the
    prompt's media tokens are ranked by the attention the last prompt token pays them, and only the
    ``keep`` share of them goes on through the other layers and into the KV cache."""

    layer: int = Field(2, ge=1, description="decoder layers that see every token (FastV's K)")
    keep: float = Field(
        0.5, gt=0.0, le=1.0, description="share of each prompt's media tokens kept after them"
    )


class GenerationSpec(Spec):
    max_new_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    fastv: FastVSpec | None = Field(
        None,
        description="drop the least attended media tokens after a decoder layer (early fusion only); null = off",
    )
    # YAML reads a bare `off` / `on` as a boolean: false and true are admitted and read as off and auto.
    packed_weights: Literal["auto", "off", False, True] = Field(
        "auto",
        description="decode a float32 CPU model on oneDNN-packed copies of the LLM's linear weights (faster "
        "decoding steps, as much memory again as those weights): auto = where torch has the ops and the "
        "copies take under a quarter of the available memory; off = never (--packed-weights off)",
    )

    @field_validator("packed_weights", mode="before")
    @classmethod
    def _packed_weights(cls, value: object) -> object:
        return ("auto" if value else "off") if isinstance(value, bool) else value


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
    after_stage: bool | None = Field(
        None,
        description="evaluate the model at the end of each generative stage on that subset and record each "
        "task's own metric (meta.task: VQA accuracy, caption CIDEr-D / BLEU-4, grounding Acc@0.5 / mIoU) in "
        "RUN/stage_eval.jsonl and the report's stage × task table; null = on when a stage trains on a "
        "weighted mixture of several sources (off under fsdp)",
    )
    stage_data: tuple[str, ...] | None = Field(
        None,
        description="data the after-stage evaluation answers instead of the eval.every subset: a seeded "
        "subset of eval.during_limit samples from each reference, side by side (e.g. VQA, caption and "
        "grounding test sets, each task scored with its own metric); null = that subset of data.eval",
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
    runtime: RuntimeSpec = RuntimeSpec()
    privacy: GenerativePrivacySpec | None = Field(
        None, description="DP-SGD over all stages (docs/privacy.md); null = off"
    )

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
            if not isinstance(stage.objective, QFormerObjective):
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

    def evaluates_stages(self) -> bool:
        """Whether each generative stage ends with a per-task evaluation (``eval.after_stage``; null: when a
        stage trains on a mixture of several sources, and the model is not sharded by fsdp)."""
        if self.eval.after_stage is not None:
            return self.eval.after_stage
        mixed = any(isinstance(s.data, tuple) and len(s.data) > 1 for s in self.stages)
        return mixed and self.runtime.distributed.strategy != "fsdp"

    @model_validator(mode="after")
    def _check_stage_data(self) -> Recipe:
        if self.eval.stage_data is not None and not self.evaluates_stages():
            raise ValueError(
                "eval.stage_data names data for the evaluation after each stage, which is off here "
                "(eval.after_stage false, or null without a mixed stage); set eval.after_stage: true or remove "
                "eval.stage_data"
            )
        if self.eval.stage_data is not None and not self.eval.stage_data:
            raise ValueError("eval.stage_data is an empty list; name at least one data reference, or null")
        return self

    @model_validator(mode="after")
    def _check_sharding(self) -> Recipe:
        if self.runtime.distributed.strategy != "fsdp":
            return self
        qformer = [s.name for s in self.stages if isinstance(s.objective, QFormerObjective)]
        if qformer:
            raise ValueError(
                f"runtime.distributed.strategy: fsdp: stage {qformer[0]!r} pre-trains a Q-Former (objective "
                "qformer), which runs the connector outside the model's forward pass, where FSDP gathers the "
                "sharded parameters; train this recipe with strategy: ddp"
            )
        if self.eval.after_stage:
            raise ValueError(
                "runtime.distributed.strategy: fsdp with eval.after_stage: true: evaluation after each stage "
                "runs on one process, but under fsdp each process holds only a shard of the model; set "
                "eval.after_stage: false and evaluate the finished run (`omnifuse eval RUN`)"
            )
        if self.eval.every:
            raise ValueError(
                f"runtime.distributed.strategy: fsdp with eval.every: {self.eval.every}: evaluation during "
                "training runs on one process, but under fsdp each process holds only a shard of the model; "
                "remove eval.every and evaluate the finished run (`omnifuse eval RUN`, sharded with --nproc)"
            )
        return self

    @model_validator(mode="after")
    def _check_quantize(self) -> Recipe:
        """A quantised LLM is frozen in int8 / int4 (bitsandbytes has no update rule for its weights): stages
        train it with LoRA (QLoRA) or not at all; FSDP and DP-SGD are not set up over quantised weights."""
        q = self.runtime.quantize
        if q == "none":
            return self
        full = [s.name for s in self.stages if s.trainable.get("llm") == "full"]
        pruned = [s.name for s in self.stages if s.prune is not None]
        problem = (
            f"stage {full[0]!r} trains the LLM fully, but its weights are stored in {q}; train it with lora "
            "(QLoRA) or keep it frozen" if full
            else f"stage {pruned[0]!r} prunes the LLM's MLP, whose quantised layers cannot be cut; prune in "
            "float" if pruned
            else "FSDP shards float parameters; use strategy ddp" if self.runtime.distributed.strategy == "fsdp"
            else "DP-SGD (privacy) computes per-sample gradients in float32 only" if self.privacy is not None
            else None
        )  # fmt: skip
        if problem:
            raise ValueError(
                f"runtime.quantize: {q}: {problem}, or remove runtime.quantize (and quantise at inference: "
                "`omnifuse eval RUN --quantize int8`)"
            )
        return self

    @model_validator(mode="after")
    def _check_privacy(self) -> Recipe:
        if self.privacy is None:
            return self
        problem = _privacy_problem(self)
        if problem:
            raise ValueError(
                f"privacy: {problem}. DP-SGD (docs/privacy.md) clips each sample's gradient and adds noise in "
                "one process, and the ε it reports holds only where every sample's gradient is computed "
                "alone and exactly; remove that setting, or remove the privacy section"
            )
        return self

    @model_validator(mode="after")
    def _check_fastv(self) -> Recipe:
        if self.generation.fastv is not None and not isinstance(self.model.fusion, EarlyFusionSpec):
            raise ValueError(
                "generation.fastv prunes media tokens in the text, but cross-attention fusion puts none there; "
                "remove generation.fastv or use fusion: {type: early}"
            )
        return self

    @model_validator(mode="after")
    def _check_prune(self) -> Recipe:
        pruning = [s.name for s in self.stages if s.prune is not None]
        problem = (
            f"stages {pruning} prune; one stage may prune the LLM's MLP" if len(pruning) > 1
            else "FSDP shards the LLM before training, and pruning replaces its layers; use strategy ddp"
            if pruning and self.runtime.distributed.strategy == "fsdp"
            else None
        )  # fmt: skip
        if problem:
            raise ValueError(f"stages.*.prune: {problem}")
        return self

    def lora_components(self) -> list[str]:
        """Components that any stage trains with LoRA (adapters must exist before loading weights)."""
        return sorted({c for s in self.stages for c, m in s.trainable.items() if m == "lora"})

    def with_fastv(self, fastv: FastVSpec | None) -> Recipe:
        """This recipe with ``generation.fastv`` set to ``fastv`` (a command line's ``--fastv-keep``)."""
        return self.model_copy(update={"generation": self.generation.model_copy(update={"fastv": fastv})})

    def with_packed_weights(self, packed_weights: str | None) -> Recipe:
        """This recipe with ``generation.packed_weights`` set (a command line's ``--packed-weights``;
        None: unchanged)."""
        if packed_weights is None:
            return self
        g = GenerationSpec.model_validate({**self.generation.model_dump(), "packed_weights": packed_weights})
        return self.model_copy(update={"generation": g})


def _privacy_problem(recipe: Recipe) -> str | None:
    """What in a recipe DP-SGD cannot train with a valid ε (None: nothing)."""
    runtime = recipe.runtime
    if runtime.distributed.strategy != "ddp":
        return f"runtime.distributed.strategy {runtime.distributed.strategy} shards the parameters over processes"
    if runtime.dtype not in ("auto", "fast", "float32"):
        return (
            f"runtime.dtype {runtime.dtype}: per-sample gradients and their norms in low precision can exceed the "
            "clipping bound (auto and fast mean float32 under DP-SGD)"
        )
    if runtime.gradient_checkpointing:
        return "runtime.gradient_checkpointing recomputes activations, which Opacus' per-sample hooks record twice"
    if runtime.compile:
        return "runtime.compile: true compiles the LLM, whose layers Opacus' per-sample hooks must see"
    if runtime.packing:
        return "runtime.packing: true puts several samples in a row; Opacus' per-sample gradients are per row"
    if recipe.model.tiling:
        return "model.tiling turns one image into several views, so the connector's batch is not the samples'"
    for i, stage in enumerate(recipe.stages):
        if stage.objective.type != "lm":
            return (
                f"stages.{i} ({stage.name}) has objective {stage.objective.type}; per-sample losses are defined "
                "for the next-token objective (lm) only"
            )
        if stage.balance_by:
            return (
                f"stages.{i} ({stage.name}) sets balance_by, which draws the samples of small groups more "
                "often; the accountant assumes Poisson sampling, every sample with the same probability"
            )
        if isinstance(stage.data, tuple):
            return (
                f"stages.{i} ({stage.name}) draws a weighted mixture of sources, which samples some samples "
                "more often than others; the accountant assumes Poisson sampling, every sample with the same "
                "probability (merge the sources into one file instead)"
            )
    return None
