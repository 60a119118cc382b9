"""Training stages: what trains, at which learning rate, on which data, towards which objective.

A stage is data (``omnifuse.models.stages.apply_stage`` interprets it in one place). Its ``objective``
is a union tagged by ``type``: ``lm`` (next-token loss through the LLM), ``distill`` (cross-modal
knowledge distillation, Ultravox) and ``qformer`` (BLIP-2 stage 1: ITC / ITM / ITG on image-caption
pairs, the Q-Former alone). Recipes written before the union (``objective: generative`` plus flat
``distill_weight`` / ``distill_temperature`` keys) are still read, with a FutureWarning that shows the
new spelling (:func:`migrate_objective`).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from omnifuse.recipe.schema import Spec


class LMObjective(Spec):
    """Next-token loss on the assistant turns, through the LLM."""

    type: Literal["lm"] = "lm"


class DistillObjective(Spec):
    """Knowledge distillation across modalities (Ultravox): the model hearing the question learns to match
    the teacher's answer distribution, ``weight·T²·KL(teacher ‖ student) + (1 − weight)·next-token loss``."""

    type: Literal["distill"]
    teacher: Literal["transcript"] = Field(
        "transcript", description="the same model reading the question's transcript (meta.transcript)"
    )
    temperature: float = Field(1.0, gt=0, description="softmax temperature T")
    weight: float = Field(0.5, ge=0.0, le=1.0, description="share of the distillation term in the loss")


QFormerLoss = Literal["itc", "itm", "itg"]


class QFormerObjective(Spec):
    """BLIP-2 stage 1 on image-caption pairs, the Q-Former alone (no LLM): image-text contrastive (itc),
    matching with hard negatives (itm) and image-grounded generation (itg), summed."""

    type: Literal["qformer"]
    losses: tuple[QFormerLoss, ...] = Field(
        ("itc", "itm", "itg"), min_length=1, description="which of BLIP-2's three losses are summed"
    )
    eval: str | None = Field(
        None,
        description="held-out image-caption data (e.g. easy-vqa-captions:test) the Q-Former captions by ITG after "
        "training, scored with BLEU-4 / CIDEr-D / ROUGE-L in eval.json and the report (omnifuse.eval.qformer_captions)",
    )
    eval_limit: int | None = Field(
        500, ge=1, description="seeded subset of the eval images (data.eval_seed); null = all"
    )

    @field_validator("losses")
    @classmethod
    def _unique(cls, losses: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(losses)) != len(losses):
            raise ValueError(f"losses {list(losses)} names a loss twice; give each of itc, itm, itg once")
        return losses


class RecipeDeprecation(FutureWarning):
    """An old spelling in a recipe, still read; :func:`omnifuse.recipe.load.parse_recipe` re-issues it
    naming the recipe file."""


Objective = Annotated[LMObjective | DistillObjective | QFormerObjective, Field(discriminator="type")]

# The spellings before the tagged union: objective names and the flat distill_* keys.
_OLD_NAMES = {"generative": "lm", "distill": "distill", "qformer": "qformer"}
_OLD_KEYS = {"distill_weight": "weight", "distill_temperature": "temperature"}


def migrate_objective(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage in the old form (``objective: generative | distill | qformer`` as a string, with flat
    ``distill_weight`` / ``distill_temperature``) → the tagged form, with a FutureWarning naming the new
    spelling. The flat keys of a stage that does not distill had no effect and are dropped."""
    old = stage.get("objective")
    flat = {k: stage[k] for k in _OLD_KEYS if k in stage}
    if not isinstance(old, str) and not flat:
        return stage
    if old is not None and not isinstance(old, str | dict):
        return stage  # a wrong type: the union's own error names it
    if isinstance(old, str) and old not in _OLD_NAMES:
        raise ValueError(
            f"objective: unknown objective {old!r}; use {{type: lm}}, {{type: distill}} or {{type: qformer}}"
        )
    new: dict[str, Any] = dict(old) if isinstance(old, dict) else {"type": _OLD_NAMES.get(old or "", "lm")}
    if new.get("type") == "distill":
        new.update({_OLD_KEYS[k]: v for k, v in flat.items() if _OLD_KEYS[k] not in new})
    migrated = {k: v for k, v in stage.items() if k not in _OLD_KEYS} | {"objective": new}
    shown = ", ".join(f"{k}: {v}" for k, v in new.items())
    said = [f"objective: {old}"] if isinstance(old, str) else []
    warnings.warn(
        f"stage {stage.get('name', '?')!r}: `{', '.join(said + list(flat))}` is the old spelling of an "
        f"objective; write `objective: {{{shown}}}` (read as that now; the old form will stop being read "
        "in a later release)",
        RecipeDeprecation,
        stacklevel=2,
    )
    return migrated


class LoRASpec(Spec):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0, description="LoRA scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


Trainability = Literal["frozen", "lora", "full"]


class DataSource(Spec):
    """One source of a stage's multi-task mixture (Qwen-VL's stage 2: VQA + captions + grounding)."""

    source: str = Field(description="a data reference, as data.train (a JSONL file or a built-in name:split)")
    weight: float = Field(gt=0, description="relative share of the stage's samples drawn from this source")


class PruneSpec(Spec):
    """Structured pruning of the LLM's MLP channels at the start of a stage (docs/compression.md); the stage
    itself is the recovery (e.g. LoRA on the attention, the connector fully)."""

    mlp_keep: float = Field(
        gt=0.0, lt=1.0, description="share of each decoder layer's MLP intermediate channels kept (e.g. 0.5)"
    )
    calibration: int = Field(
        64,
        ge=1,
        description="training samples (a seeded subset of the stage's data) whose activations rank the channels",
    )


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
    data: str | tuple[DataSource, ...] | None = Field(
        None,
        description="training data of this stage: a data reference, or a weighted mixture "
        "[{source: X, weight: 0.5}, ...] drawn by a seeded sampler; null = data.train",
    )
    limit: int | None = Field(None, ge=1, description="use a seeded subset of this many training samples")
    balance_by: tuple[str, ...] | None = Field(
        None,
        description="draw groups of samples equally often in this stage: a meta key (e.g. question_type), or "
        "a list of keys nested in turn (each value of the first equally often, within it each value of the "
        "second, ...); besides meta keys, `prompt` (the user turns' text) and `answer` (the target text): "
        "[question_type, prompt, answer] makes every answer equally likely for each question (VQA v2's "
        "balancing, so the wording alone cannot answer)",
    )
    save_every: int = Field(100, ge=1, description="checkpoint every N optimizer steps")
    objective: Objective = Field(
        LMObjective(),
        description="what one micro-batch computes: {type: lm}, {type: distill} or {type: qformer}",
    )
    prune: PruneSpec | None = Field(
        None, description="prune the LLM's MLP channels before this stage trains (it recovers); null = none"
    )

    @field_validator("balance_by", mode="before")
    @classmethod
    def _one_key(cls, value: Any) -> Any:
        value = (value,) if isinstance(value, str) else value
        if isinstance(value, list | tuple) and (not value or len(set(value)) != len(value)):
            raise ValueError(f"balance_by {list(value)}: name one or more different keys, or leave it out")
        return value

    @model_validator(mode="before")
    @classmethod
    def _old_objective(cls, data: Any) -> Any:
        return migrate_objective(data) if isinstance(data, dict) else data

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
        if isinstance(self.data, tuple):
            self._check_mixture(self.data)
        if not any(mode != "frozen" for mode in self.trainable.values()):
            raise ValueError(
                f"stage {self.name!r}: nothing is trainable; set e.g. trainable: {{connectors: full}}"
            )
        return self

    def _check_mixture(self, sources: tuple[DataSource, ...]) -> None:
        names = [s.source for s in sources]
        if not names:
            raise ValueError(f"stage {self.name!r}: data is an empty list; name at least one source")
        if len(set(names)) != len(names):
            raise ValueError(f"stage {self.name!r}: data names a source twice ({', '.join(names)})")
        if self.balance_by is not None:
            raise ValueError(
                f"stage {self.name!r}: balance_by draws meta values equally often, a data mixture draws "
                "sources by weight; use one of them"
            )
