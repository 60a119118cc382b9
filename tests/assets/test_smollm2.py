"""The packaged SmolLM2 GGUF, converted once into the real asset cache (``OMNIFUSE_CACHE`` honoured,
never wiped): the converted folder must reload fast and reproduce the GGUF model's logits.

The GGUF load takes ~20-40 s, so it happens exactly once, in a session fixture.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from omnifuse.assets import AssetKind, get_asset, resolve, source_path

pytestmark = pytest.mark.integration

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def converted() -> Path:
    """The converted folder (converted now if the cache lacks it; `make test` prepares it first)."""
    return Path(resolve(NAME, AssetKind.LLM, progress=False))


@pytest.fixture(scope="session")
def reloaded(converted):
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32).eval()
    seconds = time.perf_counter() - t0
    return model, seconds


@pytest.fixture(scope="session")
def tokenizer(converted):
    return AutoTokenizer.from_pretrained(converted)


def test_converted_folder_layout(converted):
    names = {p.name for p in converted.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "omnifuse-asset.json"} <= names
    assert not any(n.startswith(".") for n in names)
    config = json.loads((converted / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config  # else the reload would go through the GGUF quantizer
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (576, 30, 49152)
    with safe_open(str(converted / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F32"


def test_reload_is_fast_and_tied(reloaded):
    model, seconds = reloaded
    assert seconds < 10, f"reload took {seconds:.1f} s"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


def test_tokenizer_and_chat_template(tokenizer):
    assert tokenizer("Hello world").input_ids == [19556, 905]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_same_logits_as_the_gguf_model(reloaded, tokenizer):
    gguf = source_path(get_asset(NAME))
    original = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    ).eval()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = original(ids).logits
        actual = reloaded[0](ids).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)
    assert tokenizer.decode(actual[0, -1].argmax()) == tokenizer.decode(expected[0, -1].argmax())


def test_greedy_answer(reloaded, tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = reloaded[0].generate(**inputs, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
