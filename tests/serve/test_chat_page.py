"""The chat page in a real browser: headless Chromium (Debian's), driven by Selenium with Debian's
chromedriver (Selenium is told not to download a browser or a driver)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from browser import needs_chromium, wait_for
from omnifuse.serve.server import ServerSettings
from serve.conftest import running_server

pytestmark = needs_chromium


def test_ask_about_an_image_and_see_the_streamed_answer(browser, tmp_path: Path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (220, 30, 30)).save(image)
    with running_server(ServerSettings(model_name="tiny", default_max_tokens=6)) as s:
        browser.get(s.url + "/")
        wait_for(browser, lambda d: d.find_element(By.ID, "model").text == "model: tiny")
        browser.find_element(By.ID, "image").send_keys(str(image))
        wait_for(
            browser,
            lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png"),
        )
        browser.find_element(By.ID, "question").send_keys("what color is the shape?")
        browser.find_element(By.ID, "send").click()
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']"))
        user = browser.find_element(By.CSS_SELECTOR, ".msg.user")
        assert user.text == "what color is the shape?"
        shown = user.find_element(By.TAG_NAME, "img")
        assert browser.execute_script("return arguments[0].naturalWidth", shown) == 32
        assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error")
        # The page kept the conversation: a follow-up sends both turns and gets a second answer.
        browser.find_element(By.ID, "question").send_keys("and the shape?")
        browser.find_element(By.ID, "send").click()
        wait_for(
            browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-done='1']")) == 2
        )
        assert s.service.scheduler.completed >= 2


def test_errors_are_shown_on_the_page(browser):
    from selenium.webdriver.common.by import By

    with running_server(ServerSettings(model_name="tiny", api_key="sesame")) as s:
        browser.get(s.url + "/")
        wait_for(browser, lambda d: "API key" in d.find_element(By.ID, "model").text)
        key = browser.find_element(By.ID, "key")
        key.send_keys("sesame")
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        wait_for(browser, lambda d: d.find_element(By.ID, "model").text == "model: tiny")
        browser.find_element(By.ID, "question").send_keys("word " * 400)  # over the tiny context length
        browser.find_element(By.ID, "send").click()
        err = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.error"))
        assert "context length" in err[0].text
