"""``--format llm``: the language model alone, as a plain transformers causal-LM folder (the text side of
an ASR cascade, llama.cpp's ``convert_hf_to_gguf.py``, or any causal-LM server).

With LoRA merged (the default) the folder is the fine-tuned LLM. With ``--no-merge-lora`` it is the base
LLM plus ``adapter/``, a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)
that ``PeftModel.from_pretrained(base, DIR / "adapter")`` loads. The media parts are left out: the
folder answers text only.
"""

from __future__ import annotations

import copy
from pathlib import Path

from peft import LoraConfig
from torch import nn

from omnifuse.errors import OmnifuseError
from omnifuse.export.common import ExportOptions, Loaded, generation_config
from omnifuse.models.stages import unload_lora
from omnifuse.models.weights import save_tensors_atomic
from omnifuse.recipe import Recipe

ADAPTER = "adapter"


class LLMFormat:
    name = "llm"
    summary = "the language model alone (LoRA merged, or as a PEFT adapter), a plain causal-LM folder"

    def check(self, recipe: Recipe, options: ExportOptions) -> None:
        """Every generate recipe has a causal LM (an ASR cascade's included), so every one fits."""

    def write(self, loaded: Loaded, folder: Path, options: ExportOptions) -> str:
        llm = loaded.model.llm
        lora_in_llm = any("lora_" in n for n, _ in llm.named_parameters())
        if lora_in_llm and loaded.lora_merged:
            raise OmnifuseError("internal: LoRA adapters left in a model marked merged")  # a bug of ours
        if lora_in_llm:
            _write_adapter(llm, loaded.recipe, folder / ADAPTER)
            llm = copy.deepcopy(llm)
            unload_lora(llm, merge=False)
        _save_llm(llm, loaded, folder, options)
        if lora_in_llm:
            return _SNIPPET_ADAPTER
        return _SNIPPET


def _save_llm(llm: nn.Module, loaded: Loaded, folder: Path, options: ExportOptions) -> None:
    llm = llm.to(options.dtype)
    llm.generation_config = generation_config(loaded)
    llm.save_pretrained(folder, max_shard_size=options.max_shard_size, safe_serialization=True)
    loaded.processor.tokenizer.save_pretrained(folder)


def _write_adapter(llm: nn.Module, recipe: Recipe, folder: Path) -> None:
    """PEFT's adapter format: its LoraConfig and the adapter weights named ``base_model.model.<path>``
    without the adapter name (PEFT's ``get_peft_model_state_dict`` convention)."""
    spec = recipe.lora
    # the linear layers that got adapters (add_lora keeps only the ones this LLM has)
    targets = sorted(
        {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n, _ in llm.named_parameters() if ".lora_A." in n}
    )
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets)
    config.base_model_name_or_path = recipe.model.llm.name
    folder.mkdir()
    config.save_pretrained(folder)
    tensors = {
        "base_model.model." + n.replace(".default.", "."): p.detach().contiguous().clone()
        for n, p in llm.named_parameters()
        if "lora_" in n
    }
    save_tensors_atomic(tensors, folder / "adapter_model.safetensors", {"format": "pt"})


_SNIPPET = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained(DIR)
tokenizer = AutoTokenizer.from_pretrained(DIR)
messages = [{"role": "user", "content": "What is a red circle?"}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
print(tokenizer.decode(model.generate(ids)[0, ids.shape[1]:], skip_special_tokens=True))
```"""

_SNIPPET_ADAPTER = """```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR), f"{DIR}/adapter")
tokenizer = AutoTokenizer.from_pretrained(DIR)
```"""
