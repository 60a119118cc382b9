"""Thin adapter over Hugging Face causal LMs: load (through the asset resolver) and describe."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from omnifuse.assets import AssetKind, load_pretrained, pretrained_kwargs, resolve


def load_llm(
    name: str, progress: bool = True, dtype: torch.dtype = torch.float32, **load_kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a packaged asset name, a local folder or a hub id (weights in
    safetensors only, unless ``OMNIFUSE_ALLOW_PICKLE=1``: see :mod:`omnifuse.assets.folders`). ``dtype``:
    the storage dtype its weights are loaded in (a frozen LLM loads directly in the compute dtype, so the
    load never holds a float32 copy). ``load_kwargs`` go to ``from_pretrained`` (a bitsandbytes
    ``quantization_config`` with its ``device_map``: :mod:`omnifuse.models.quantize`)."""
    path = resolve(name, AssetKind.LLM, progress=progress)
    hint = (
        "Use a packaged name (see `omnifuse assets`), a local folder with config.json, safetensors weights "
        "and tokenizer files, or a Hugging Face id on a machine with hub access."
    )
    tokenizer = load_pretrained(
        lambda: AutoTokenizer.from_pretrained(path), "LLM tokenizer", name, path, hint
    )
    model = load_pretrained(
        lambda: AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **pretrained_kwargs(), **load_kwargs),
        "LLM",
        name,
        path,
        hint,
    )
    model.eval()
    return model, tokenizer


def hidden_size(llm: PreTrainedModel) -> int:
    return llm.get_input_embeddings().embedding_dim


def vocab_size(llm: PreTrainedModel) -> int:
    return llm.get_input_embeddings().num_embeddings
