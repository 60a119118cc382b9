"""The SPHINX recipe with the real packaged parts: tiled views through MobileNetV2 + EfficientNet-Lite0
and SmolLM2, counts and a training step, and generation with the KV cache.

Marked integration: loads SmolLM2-135M and both CNNs from the asset cache (converted once).
"""

from __future__ import annotations

import pytest
import skimage.data
import torch
from PIL import Image

from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.data.sources import resolve_data_path
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage, prepare_lora
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR

pytestmark = pytest.mark.integration
SPHINX = RECIPES_DIR / "sphinx.yaml"


def test_sphinx_tiles_real_images_and_trains():
    recipe = load_recipe(SPHINX)
    torch.manual_seed(0)
    model, proc = build_model(recipe.model, progress=False)
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    astronaut = Image.fromarray(skimage.data.astronaut())
    photo = Sample(
        "astronaut",
        (
            Message("user", (ImagePart(image=astronaut), TextPart("what color is the shape?"))),
            Message("assistant", (TextPart("white"),)),
        ),
    )
    samples = load_jsonl(resolve_data_path("easy-vqa:train"))[:3] + [photo]
    batch = proc.collate([proc.encode(s) for s in samples])
    # 64×64 easy-vqa images and the 512×512 photo both get a global view and 2×2 tiles of 32 px.
    assert batch.media_counts["image"] == [5, 5, 5, 5]
    pid = model.placeholder_ids["image"]
    assert (batch.input_ids == pid).sum(dim=1).tolist() == [5 * model.tokens_per_item("image")] * 4
    opt = torch.optim.AdamW(apply_stage(model, recipe.stages[0], recipe.lora))
    model.train()
    model.encoders.eval()
    losses = []
    for _ in range(3):
        loss = model(**batch.model_inputs()).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()
    engine = Engine(model, proc)
    cfg = GenerationConfig(max_new_tokens=3)
    assert engine.generate_ids(samples[:2], cfg) == engine.generate_ids(samples[:2], cfg, use_cache=False)
