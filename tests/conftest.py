"""Shared fixtures: tiny random models and tokenizers (fast, deterministic, no assets needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from browser import CHROMIUM, DRIVER
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


@pytest.fixture
def browser(monkeypatch):
    """Headless Chromium (see tests/browser.py); tests using it carry ``skip_without_chromium``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=DRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
