"""``--format hf`` (the default): a folder for every generate recipe (video not yet), loaded through
transformers' Auto classes once ``omnifuse.hf`` is imported (it registers omnifuse's config, model and
processor classes; no ``trust_remote_code``). The classes, the parameter names
(:mod:`omnifuse.hf.weights`: omnifuse's own) and the shapes that rebuild the parts without their assets
(:mod:`omnifuse.hf.parts`) live in :mod:`omnifuse.hf`; this module writes a trained run with them.
"""

from __future__ import annotations

from pathlib import Path

from omnifuse.errors import OmnifuseError
from omnifuse.export.common import ExportOptions, Loaded, generation_config
from omnifuse.hf.modeling import wrap
from omnifuse.hf.processing import OmnifuseProcessor, settings
from omnifuse.recipe import Recipe
from omnifuse.recipe.components import FramesEncoderSpec


class HFFormat:
    name = "hf"
    summary = (
        "generate recipes (not video yet): omnifuse's classes through transformers' Auto classes "
        "(import omnifuse.hf)"
    )

    def check(self, recipe: Recipe, options: ExportOptions) -> None:
        video = [m for m, enc in recipe.model.encoders.items() if isinstance(enc, FramesEncoderSpec)]
        if video:
            raise OmnifuseError(
                f"--format hf does not hold video encoders yet (encoders.{video[0]}: frames): its processor "
                "takes no videos and the frame encoder would be rebuilt from its assets; export the language "
                "model with --format llm"
            )
        if not options.merge_lora and recipe.lora_components():
            raise OmnifuseError(
                "--format hf stores the LoRA adapters merged into the base weights; drop --no-merge-lora "
                "(or use --format llm --no-merge-lora for the LLM with a PEFT adapter)"
            )

    def write(self, loaded: Loaded, folder: Path, options: ExportOptions) -> str:
        model = wrap(loaded.recipe.model, loaded.model, loaded.processor)
        model.generation_config = generation_config(loaded)
        if model.generation_config.do_sample:  # omnifuse chat seeds sampling with the recipe's seed
            model.generation_config.seed = loaded.recipe.seed
        # the recipe's settings, not defaults derived from a model config (transformers drops extra
        # attributes such as the seed when it reads a config marked as derived)
        model.generation_config._from_model_config = False
        model.save_pretrained(folder, max_shard_size=options.max_shard_size, dtype=options.dtype)
        OmnifuseProcessor(loaded.processor, settings(loaded.model, loaded.processor)).save_pretrained(folder)
        return SNIPPET


SNIPPET = """```python
import omnifuse.hf  # registers omnifuse's classes with transformers' Auto classes
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained(DIR)
processor = AutoProcessor.from_pretrained(DIR)
inputs = processor(images=Image.open("photo.png"), text="What is in the image?")
answer = model.generate(**inputs)[0, inputs["input_ids"].shape[1]:]
print(processor.decode(answer, skip_special_tokens=True))
```"""
