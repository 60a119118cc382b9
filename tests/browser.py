"""Headless Chromium for page tests (the ``browser`` fixture is in conftest.py): Debian's chromium and
chromedriver, driven by Selenium (told not to download a browser or a driver)."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
skip_without_chromium = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (scripts/install.sh installs them)",
)
needs_chromium = [pytest.mark.slow, skip_without_chromium]  # as a module's pytestmark


def wait_for(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)
