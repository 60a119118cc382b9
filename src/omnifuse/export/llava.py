"""``--format llava``: a folder that plain transformers loads without omnifuse installed
(``LlavaForConditionalGeneration`` + ``AutoProcessor``: ``LlavaProcessor`` with a CLIP image processor),
the format vLLM and TGI serve. The parameter names are mapped by :mod:`omnifuse.models.llava_format`.

What the folder gets beyond the weights:

- the tokenizer with ``<image>`` added as a special token. When its id falls past the LLM's embedding rows
  (omnifuse itself keeps placeholders outside the vocabulary), one zero row is appended to the embeddings
  (and to an untied output head) and ``generation_config.suppress_tokens`` keeps it out of answers;
- a chat template that accepts transformers' message format (content lists with ``{"type": "image"}``),
  writes ``<image>`` where the image goes, adds the recipe's system prompt, then renders the LLM's own
  template — so ``processor.apply_chat_template`` gives the prompt omnifuse gives;
- the image processor (resize / centre crop / mean / std / resampling) of the recipe's tower.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from omnifuse.errors import OmnifuseError
from omnifuse.export.common import ExportOptions, Loaded, generation_config
from omnifuse.llm import vocab_size
from omnifuse.models import llava_format
from omnifuse.processing.processor import BASE_TEMPLATE
from omnifuse.recipe import Recipe


class LlavaFormat:
    name = "llava"
    summary = "transformers' LlavaForConditionalGeneration (vLLM / TGI load it), for LLaVA-shaped recipes"

    def check(self, recipe: Recipe, options: ExportOptions) -> None:
        llava_format.llava_fit(recipe.model)
        if not options.merge_lora and recipe.lora_components():
            raise OmnifuseError(
                "--format llava needs the LoRA adapters merged (LLaVA's layout has no place for them); drop "
                "--no-merge-lora, or use --format llm --no-merge-lora for the LLM with a PEFT adapter"
            )

    def write(self, loaded: Loaded, folder: Path, options: ExportOptions) -> str:
        model, processor = loaded.model, loaded.processor
        found = llava_format.settings(model)
        tokenizer = processor.tokenizer
        if llava_format.IMAGE_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_tokens([AddedToken(llava_format.IMAGE_TOKEN, special=True, normalized=False)])
        image_id = tokenizer.convert_tokens_to_ids(llava_format.IMAGE_TOKEN)
        rows = vocab_size(model.llm)
        llava = llava_format.to_llava(model, _config(loaded, found, image_id, vocab_size=rows))
        if image_id >= rows:
            _add_rows(llava, image_id + 1)
        llava.generation_config = generation_config(loaded)
        if image_id >= rows:
            llava.generation_config.suppress_tokens = [image_id]
        llava.to(options.dtype).save_pretrained(folder, max_shard_size=options.max_shard_size)
        _processor(loaded, found, tokenizer).save_pretrained(folder)
        return _SNIPPET


def _config(loaded: Loaded, found: llava_format.LlavaSettings, image_id: int, vocab_size: int) -> LlavaConfig:
    encoder, llm = loaded.model.encoders["image"], loaded.model.llm
    return LlavaConfig(
        vision_config=encoder.tower.config.to_dict(),
        text_config=llm.config.to_dict() | {"vocab_size": vocab_size},
        image_token_index=image_id,
        projector_hidden_act=found.projector_hidden_act,
        vision_feature_select_strategy=found.vision_feature_select_strategy,
        vision_feature_layer=found.vision_feature_layer,
        image_seq_length=found.image_seq_length,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )


def _add_rows(llava: LlavaForConditionalGeneration, rows: int) -> None:
    """Grow the vocabulary to ``rows`` for the added ``<image>`` token, with zero rows (its embedding is
    always overwritten by image features; the head's row is kept out of answers by suppress_tokens)."""
    old = llava.get_input_embeddings().weight.shape[0]
    llava.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        llava.get_input_embeddings().weight[old:] = 0
        llava.get_output_embeddings().weight[old:] = 0


def image_processor(encoder) -> CLIPImageProcessorPil:
    """transformers' CLIP image processor (PIL backend: no torchvision needed) set like ``encoder``'s
    preprocessing (an :class:`~omnifuse.encoders.vision.hf.HFVisionEncoder`)."""
    size, shorter = encoder.image_size, encoder.resize_shorter
    return CLIPImageProcessorPil(
        size={"height": size, "width": size} if shorter is None else {"shortest_edge": shorter},
        crop_size={"height": size, "width": size},
        do_center_crop=shorter is not None,
        resample=encoder.resample,
        image_mean=list(encoder.mean),
        image_std=list(encoder.std),
        do_convert_rgb=True,
    )


def _processor(loaded: Loaded, found: llava_format.LlavaSettings, tokenizer) -> LlavaProcessor:
    encoder = loaded.model.encoders["image"]
    return LlavaProcessor(
        image_processor=image_processor(encoder),
        tokenizer=tokenizer,
        patch_size=encoder.patch_size,
        vision_feature_select_strategy=found.vision_feature_select_strategy,
        num_additional_image_tokens=found.num_additional_image_tokens,
        image_token=llava_format.IMAGE_TOKEN,
        chat_template=chat_template(tokenizer.chat_template or BASE_TEMPLATE, loaded.processor.system_prompt),
    )


def chat_template(template: str, system_prompt: str | None) -> str:
    """The LLM's template behind a prelude that turns content lists into strings with ``<image>`` and adds
    the recipe's system prompt where a conversation has none (as omnifuse's processor does)."""
    system = "" if system_prompt is None else (
        "{%- if not messages or messages[0]['role'] != 'system' -%}"
        "{%- set ns.messages = [{'role': 'system', 'content': " + json.dumps(system_prompt) + "}] -%}"
        "{%- endif -%}"
    )  # fmt: skip
    return (
        "{%- set ns = namespace(messages=[], content='') -%}" + system
        + "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set ns.content = m['content'] -%}"
        "{%- else -%}{%- set ns.content = '' -%}{%- for part in m['content'] -%}"
        "{%- if part['type'] == 'image' -%}{%- set ns.content = ns.content + '" + llava_format.IMAGE_TOKEN + "' -%}"
        "{%- elif part['type'] == 'text' -%}{%- set ns.content = ns.content + part['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{%- set ns.messages = ns.messages + [{'role': m['role'], 'content': ns.content}] -%}"
        "{%- endfor -%}"
        "{%- set messages = ns.messages %}" + template
    )  # fmt: skip


_SNIPPET = """```python
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained(DIR)
processor = AutoProcessor.from_pretrained(DIR)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open("photo.png"), text=prompt, add_special_tokens=False, return_tensors="pt")
answer = model.generate(**inputs)[0, inputs["input_ids"].shape[1]:]
print(processor.decode(answer, skip_special_tokens=True))
```"""
