"""The HTML run report, rendered in headless Chromium: its images load and its tables are there."""

from __future__ import annotations

import json

import pytest

from browser import skip_without_chromium, wait_for
from omnifuse.eval.html import stage_table, write_html_report
from omnifuse.eval.runner import evaluate_run
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    from tiny import write_color_dataset

    root = tmp_path_factory.mktemp("html")
    data = write_color_dataset(root / "colors")
    raw = tiny_recipe_dict(data)
    raw["eval"] |= {"every": 2, "during_limit": 6}
    train(parse_recipe(raw), root / "run", parts=make_parts(), progress=False)
    run = RunDir(root / "run")
    loaded = load_model(run, progress=False, parts=make_parts())
    evaluate_run(run, progress=False, loaded=loaded, robustness=True)
    # An answer holding markup must show as text, never become part of the page.
    preds = [json.loads(x) for x in (run.path / "predictions.jsonl").read_text().splitlines()]
    preds[0]["prediction"] = "<b id='injected'>bold</b>"
    (run.path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return run, write_html_report(run, loaded=loaded, samples=6, explained=2, progress=False), loaded


def test_stage_table_counts_what_each_stage_trains(reported):
    run, _, (recipe, model, _) = reported
    rows = {r.component: r for r in stage_table(model, recipe)}
    assert rows["connectors"].cells[0].startswith("full ") and rows["connectors"].cells[1].startswith("full ")
    assert rows["llm"].cells[0] == "frozen" and rows["llm"].cells[1].startswith("LoRA ")
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert rows["llm"].cells[1] == f"LoRA {lora:,}"
    assert rows["encoders"].cells == ["frozen", "frozen"]
    assert rows["llm"].total == sum(p.numel() for p in model.llm.parameters())


@pytest.mark.slow
@skip_without_chromium
def test_the_page_shows_its_images_and_tables_in_chromium(reported, browser):
    from selenium.webdriver.common.by import By

    run, page, _ = reported
    text = page.read_text()
    assert "<script" not in text and 'src="http' not in text  # self-contained, nothing to fetch
    browser.get(page.as_uri())
    wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete")
    images = browser.find_elements(By.TAG_NAME, "img")
    # The curve, the samples and, for two of them, attention and gradient maps (the tiny model's MLP
    # connector keeps the encoder's token grid).
    assert len(images) == 1 + 6 + 2 * 2
    captions = [
        f.text for f in browser.find_elements(By.CSS_SELECTOR, "#explanations ~ .heatmaps figcaption")
    ]
    assert sum("attention" in c for c in captions) == 2 and sum("gradient" in c for c in captions) == 2
    for img in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    assert "95 % CI [" in browser.find_element(By.CSS_SELECTOR, ".score").text
    ci_cells = browser.find_elements(By.CSS_SELECTOR, "#per-type td:nth-child(4)")
    assert ci_cells and all(c.text.startswith("[") for c in ci_cells)
    for table in ("per-type", "robustness-table", "stages"):
        assert browser.find_element(By.ID, table).find_elements(By.TAG_NAME, "tr")
    probes = [
        r.text.split(" ")[0] for r in browser.find_elements(By.CSS_SELECTOR, "#robustness-table tr")[1:]
    ]
    assert probes == ["clean", "blank", "noise-0.1", "noise-0.3", "shuffled", "token-dropout-0.5"]
    stages = browser.find_element(By.ID, "stages").find_elements(By.TAG_NAME, "th")
    assert [th.text.split("\n")[0] for th in stages] == ["component", "align", "instruct", "parameters"]
    assert not browser.find_elements(By.ID, "injected")
    assert (
        "<b id='injected'>bold</b>"
        in browser.find_element(By.ID, "samples").find_element(By.XPATH, "..").text
    )
    assert "evaluations during training" in browser.find_element(By.TAG_NAME, "figcaption").text
