"""Local model folders: checked before Hugging Face loads them; pickled weights only with the opt-in."""

from __future__ import annotations

import pytest
import torch

from omnifuse.assets import PICKLE_ENV, check_model_folder, pretrained_kwargs
from omnifuse.errors import OmnifuseError
from omnifuse.llm import load_llm
from tiny import CHATML, make_llm, make_tokenizer


@pytest.fixture
def pickled_llm(tmp_path, monkeypatch):
    monkeypatch.delenv(PICKLE_ENV, raising=False)
    tokenizer = make_tokenizer(CHATML)
    model = make_llm(len(tokenizer))
    model.config.save_pretrained(tmp_path)  # transformers 5 writes only safetensors: pickle by hand
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file() and not list(tmp_path.glob("*.safetensors"))
    return tmp_path


def test_pickled_llm_is_refused_with_the_conversion(pickled_llm):
    with pytest.raises(OmnifuseError) as info:
        load_llm(str(pickled_llm), progress=False)
    message = str(info.value)
    assert str(pickled_llm) in message and "pytorch_model.bin" in message
    assert "safe_serialization=True" in message and f"{PICKLE_ENV}=1" in message
    assert pretrained_kwargs() == {"use_safetensors": True}


def test_pickled_llm_loads_when_opted_in(pickled_llm, monkeypatch):
    monkeypatch.setenv(PICKLE_ENV, "1")
    assert pretrained_kwargs() == {}
    model, tokenizer = load_llm(str(pickled_llm), progress=False)
    reference = make_llm(len(tokenizer))
    torch.testing.assert_close(model.lm_head.weight, reference.lm_head.weight)


def test_safetensors_beside_a_pickle_is_used_without_the_opt_in(pickled_llm):
    tokenizer = make_tokenizer(CHATML)
    make_llm(len(tokenizer), seed=1).save_pretrained(pickled_llm)  # model.safetensors beside the .bin
    model, _ = load_llm(str(pickled_llm), progress=False)
    torch.testing.assert_close(model.lm_head.weight, make_llm(len(tokenizer), seed=1).lm_head.weight)


@pytest.mark.parametrize(
    "files, says",
    [
        ({}, "is empty"),
        ({"model.safetensors": b""}, "has no config.json"),
        ({"config.json": b"{oops", "model.safetensors": b""}, "not valid JSON"),
        ({"config.json": b"[]"}, "must hold a JSON object"),
        ({"config.json": b"{}", "notes.txt": b"x"}, "holds no weights"),
        ({"config.json": b"{}", "model.safetensors": b"text"}, "no safetensors header"),
        ({"config.json": b"{}", "weights.pt": b"x"}, "only pickled weights"),
    ],
)
def test_bad_folders_are_refused_naming_the_folder(tmp_path, monkeypatch, files, says):
    monkeypatch.delenv(PICKLE_ENV, raising=False)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    with pytest.raises(OmnifuseError, match=says) as info:
        check_model_folder(tmp_path, "LLM")
    assert str(tmp_path) in str(info.value)
