"""Thin adapter over Hugging Face causal LMs: load (through the asset resolver) and describe."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from omnifuse.assets import resolve_llm
from omnifuse.errors import OmnifuseError


def load_llm(name: str, progress: bool = True) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a packaged asset name, a local folder or a hub id."""
    path = resolve_llm(name, progress=progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as exc:
        raise OmnifuseError(
            f"could not load the LLM {name!r} (resolved to {path}): {exc}. Use a packaged name "
            "(see `omnifuse assets`), a local folder with config.json + safetensors, or a Hugging Face id "
            "on a machine with hub access."
        ) from None
    model.eval()
    return model, tokenizer


def hidden_size(llm: PreTrainedModel) -> int:
    return llm.get_input_embeddings().embedding_dim


def vocab_size(llm: PreTrainedModel) -> int:
    return llm.get_input_embeddings().num_embeddings
