"""omnifuse's classes for transformers' Auto classes: ``import omnifuse.hf`` registers them, then an
exported folder (``omnifuse export RUN --out DIR``, format hf) loads like any transformers model::

    import omnifuse.hf  # noqa: F401  (registers model_type "omnifuse")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(DIR)
    processor = AutoProcessor.from_pretrained(DIR)
    inputs = processor(images=Image.open("photo.png"), text="What is in the image?")
    answer = model.generate(**inputs)[0, inputs["input_ids"].shape[1]:]

Registered: ``AutoConfig`` ("omnifuse" → :class:`OmnifuseConfig`), ``AutoModelForImageTextToText`` and
``AutoModelForCausalLM`` (→ :class:`OmnifuseForConditionalGeneration`; the causal-LM class also takes
recipes without images, such as a spoken-question model), and ``AutoProcessor`` (→
:class:`OmnifuseProcessor`). ``import omnifuse`` alone stays light: this module imports torch and
the model code, so it registers only when imported.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from omnifuse.hf.config import OmnifuseConfig
from omnifuse.hf.modeling import OmnifuseForConditionalGeneration
from omnifuse.hf.processing import OmnifuseProcessor


def register() -> None:
    """Register omnifuse's classes with transformers' Auto classes (done on import; safe to repeat)."""
    AutoConfig.register(OmnifuseConfig.model_type, OmnifuseConfig, exist_ok=True)
    AutoModelForImageTextToText.register(OmnifuseConfig, OmnifuseForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(OmnifuseConfig, OmnifuseForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(OmnifuseConfig, OmnifuseProcessor, exist_ok=True)


register()

__all__ = ["OmnifuseConfig", "OmnifuseForConditionalGeneration", "OmnifuseProcessor", "register"]
