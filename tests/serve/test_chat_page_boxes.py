"""The chat page draws a grounding answer's boxes on the latest image (headless Chromium, as
test_chat_page.py): the page's parser agrees with omnifuse.data.boxes and malformed boxes are skipped."""

from __future__ import annotations

from browser import needs_chromium, wait_for
from omnifuse.data.boxes import parse_grounding
from omnifuse.serve.server import ServerSettings
from serve.conftest import running_server

pytestmark = needs_chromium

TEXTS = [
    "<ref>the small red circle</ref><box>(100,200),(500,800)</box><box>(1,1),(9,9)</box>",
    "at <box>( 10 , 20 ),( 30 ,40 )</box>, <ref>b</ref> <box>(6,6),(9,9)</box> <box>(1,2),(3",
    "no box at all",
]


def test_the_page_parses_and_draws_boxes(browser):
    from selenium.webdriver.common.by import By

    with running_server(ServerSettings(model_name="tiny")) as s:
        browser.get(s.url + "/")
        wait_for(browser, lambda d: d.find_element(By.ID, "model").text == "model: tiny")
        for text in TEXTS:
            page = browser.execute_script("return parseBoxes(arguments[0])", text)
            ours = [
                {"phrase": g.phrase, "boxes": [[b.x1, b.y1, b.x2, b.y2] for b in g.boxes]}
                for g in parse_grounding(text)
            ]
            assert page == ours
        drawn = browser.execute_async_script(
            """const done = arguments[arguments.length - 1];
            const c = document.createElement("canvas"); c.width = 40; c.height = 20;
            c.getContext("2d").fillStyle = "#fff"; c.getContext("2d").fillRect(0, 0, 40, 20);
            const div = document.createElement("div"); document.body.appendChild(div);
            drawBoxes(div, arguments[0], c.toDataURL()).then((n) => {
              const canvas = div.querySelector("canvas.boxes");
              const px = canvas.getContext("2d").getImageData(4, 10, 1, 1).data;  // left edge of box 1
              done([n, canvas.width, canvas.height, Array.from(px)]);
            });""",
            TEXTS[0],
        )
        assert drawn[:3] == [2, 40, 20]
        assert drawn[3][:3] != [255, 255, 255]  # the outline was drawn at x = 0.1 · 40
        none = browser.execute_async_script(
            "const done = arguments[arguments.length - 1]; drawBoxes(document.body, 'no box', null).then(done);"
        )
        assert none == 0
