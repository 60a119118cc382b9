"""Differential privacy (DP-SGD through Opacus) as a recipe section, shared by the recipe kinds that train
with it: ``task: classify`` (the fusion head) and generative recipes (connectors and LoRA adapters).

Both say the same three things — the guarantee's δ, the per-sample clipping norm, and how much noise:
classify calibrates the noise to a ``target_epsilon``; a generative recipe takes either a
``target_epsilon`` (noise calibrated over all its stages) or a ``noise_multiplier`` (ε reported as spent).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from omnifuse.recipe.schema import Spec


class _DPBounds(Spec):
    delta: float = Field(
        1e-5, gt=0, lt=1, description="δ of the (ε, δ) guarantee; below 1 / training samples"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="per-sample gradient clipping norm")


class PrivacySpec(_DPBounds):
    """Differentially private training (DP-SGD with Opacus) of the trainable head."""

    target_epsilon: float = Field(gt=0, description="privacy budget ε spent by the end of training")


class GenerativePrivacySpec(_DPBounds):
    """DP-SGD over every stage of a generative recipe: per-sample gradients of the trained connectors and
    LoRA adapters (the LLM frozen), clipped to ``max_grad_norm``, Gaussian noise, Poisson-sampled batches."""

    target_epsilon: float | None = Field(
        None, gt=0, description="ε spent by the end of all stages (the noise is calibrated to it)"
    )
    noise_multiplier: float | None = Field(
        None, gt=0, description="noise std / clipping norm, fixed; the ε it spends is reported"
    )

    @model_validator(mode="after")
    def _one_budget(self) -> GenerativePrivacySpec:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "privacy: set exactly one of target_epsilon (the noise is calibrated to spend it) and "
                "noise_multiplier (the ε it spends is reported)"
            )
        return self


__all__ = ["GenerativePrivacySpec", "PrivacySpec"]
