"""What every export format shares: its options, the loaded run it writes from, and the contract a format
implements (:class:`ExportFormat`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from transformers import GenerationConfig

from omnifuse.errors import OmnifuseError
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.recipe import Recipe
from omnifuse.rundir import RunDir

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ExportOptions:
    merge_lora: bool = True
    dtype: torch.dtype = torch.float32  # what the weights are stored in
    max_shard_size: str = "2GB"  # larger state dicts are split into shards with an index file


@dataclass
class Loaded:
    """A trained run as a format's writer receives it."""

    run: RunDir
    recipe: Recipe
    model: MultimodalLM  # float32, on the CPU, in eval mode; LoRA folded into its base layers when merged
    processor: Processor
    lora_merged: bool  # True when merged, and when the recipe trains no LoRA


class ExportFormat(Protocol):
    name: str
    summary: str  # one line for `omnifuse export --help` and the model card

    def check(self, recipe: Recipe, options: ExportOptions) -> None:
        """Refuse, with one paragraph naming the part (or option) that does not fit, before anything loads."""

    def write(self, loaded: Loaded, folder: Path, options: ExportOptions) -> str:
        """Write the model into ``folder`` (an empty folder); return a Python loading snippet."""


def generation_config(loaded: Loaded) -> GenerationConfig:
    """The LLM's generation config with the recipe's settings: its answer length, greedy or sampled as
    the recipe says, and omnifuse's stop tokens (EOS and the template's end-of-turn token)."""
    config = GenerationConfig.from_dict(loaded.model.llm.generation_config.to_dict())
    spec, processor = loaded.recipe.generation, loaded.processor
    config.max_new_tokens = spec.max_new_tokens
    config.do_sample = spec.temperature > 0
    if config.do_sample:
        config.temperature, config.top_p = spec.temperature, spec.top_p
    else:
        config.temperature = config.top_p = config.top_k = None
    if processor.stop_ids:
        config.eos_token_id = processor.stop_ids if len(processor.stop_ids) > 1 else processor.stop_ids[0]
    config.pad_token_id = processor.pad_id
    return config


SHARD_SIZE = re.compile(r"\d+(\.\d+)?\s*(KB|MB|GB|TB)", re.IGNORECASE)  # what save_pretrained accepts


def check_shard_size(text: str) -> str:
    if not SHARD_SIZE.fullmatch(text.strip()):
        raise OmnifuseError(
            f"--max-shard-size {text!r} is not a size such as 500MB, 2GB or 10GB (units KB, MB, GB, TB)"
        )
    return text.strip()


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise OmnifuseError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]
