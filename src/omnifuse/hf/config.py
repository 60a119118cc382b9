"""``OmnifuseConfig``: an exported model's ``config.json`` (``model_type: omnifuse``).

It holds what rebuilds the composite without the run directory or the assets: the run's resolved recipe
model section (``recipe_model``), the LLM's own config (``llm_config``), the shapes of the parts whose builders
would read pretrained files (``parts``, see :mod:`omnifuse.hf.parts`), and the placeholder ids the
processor writes (checked against the rebuilt model)."""

from __future__ import annotations

from transformers import PreTrainedConfig


class OmnifuseConfig(PreTrainedConfig):
    model_type = "omnifuse"

    def __init__(
        self,
        recipe_model: dict | None = None,
        llm_config: dict | None = None,
        parts: dict | None = None,
        placeholder_ids: dict | None = None,
        omnifuse_version: str | None = None,
        **kwargs,
    ) -> None:
        self.recipe_model = recipe_model or {}
        self.llm_config = llm_config or {}
        self.parts = parts or {}
        self.placeholder_ids = placeholder_ids or {}
        self.omnifuse_version = omnifuse_version
        super().__init__(**kwargs)
