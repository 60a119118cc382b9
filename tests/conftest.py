"""Shared fixtures: tiny random models and tokenizers (fast, deterministic, no assets needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tiny import CHATML, make_parts, make_tokenizer, write_color_dataset


@pytest.fixture
def chatml_tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer(CHATML)


@pytest.fixture
def tiny_parts(chatml_tokenizer):
    """Injectable parts for build_model/train: tiny LLM + tokenizer + encoder."""
    return make_parts(chatml_tokenizer)


@pytest.fixture
def color_data(tmp_path) -> Path:
    return write_color_dataset(tmp_path / "colors")
