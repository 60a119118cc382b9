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
from huggingface_hub import save_torch_state_dict
from tokenizers import AddedToken
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from omnifuse.errors import OmnifuseError
from omnifuse.export.common import ExportOptions, Loaded, exact_keys, generation_config
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
        rows = model.llm.get_input_embeddings().weight.shape[0]
        config = _config(loaded, found, image_id, vocab_size=max(rows, image_id + 1))
        with torch.device("meta"):
            expected = LlavaForConditionalGeneration(config).state_dict()
        state = llava_format.to_llava(model, expected)
        if image_id >= rows:
            state = _pad_vocabulary(state, image_id + 1 - rows)
        exact_keys(state, expected, "llava export")
        if config.tie_word_embeddings:
            state.pop("lm_head.weight")
        state = {k: v.detach().to(options.dtype).contiguous() for k, v in state.items()}
        save_torch_state_dict(state, folder, max_shard_size=options.max_shard_size, metadata={"format": "pt"})
        config.dtype = options.dtype
        config.save_pretrained(folder)
        generation = generation_config(loaded)
        if image_id >= rows:
            generation.suppress_tokens = [image_id]
        generation.save_pretrained(folder)
        _processor(loaded, found, tokenizer).save_pretrained(folder)
        return _SNIPPET


def _config(loaded: Loaded, found: llava_format.LlavaSettings, image_id: int, vocab_size: int) -> LlavaConfig:
    encoder, llm = loaded.model.encoders["image"], loaded.model.llm
    text = llm.config.__class__.from_dict(llm.config.to_dict())
    text.vocab_size = vocab_size
    return LlavaConfig(
        vision_config=encoder.tower.config.to_dict(),
        text_config=text.to_dict(),
        image_token_index=image_id,
        projector_hidden_act=found.projector_hidden_act,
        vision_feature_select_strategy=found.vision_feature_select_strategy,
        vision_feature_layer=found.vision_feature_layer,
        image_seq_length=found.image_seq_length,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )


def _pad_vocabulary(state: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """Zero rows for the added ``<image>`` token (its embedding is always overwritten by image features)."""
    out = dict(state)
    for key in (llava_format.LANGUAGE + "embed_tokens.weight", "lm_head.weight"):
        weight = out[key]
        out[key] = torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])
    return out


def _processor(loaded: Loaded, found: llava_format.LlavaSettings, tokenizer) -> LlavaProcessor:
    encoder = loaded.model.encoders["image"]
    size, shorter = encoder.image_size, encoder.resize_shorter
    resize = {"height": size, "width": size} if shorter is None else {"shortest_edge": shorter}
    image_processor = CLIPImageProcessorPil(
        size=resize,
        crop_size={"height": size, "width": size},
        do_center_crop=shorter is not None,
        resample=encoder.resample,
        image_mean=list(encoder.mean),
        image_std=list(encoder.std),
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
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
