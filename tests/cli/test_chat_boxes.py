"""``omnifuse chat --out``: the answer's Qwen-VL boxes drawn on the image; bad use refused before a model loads."""

from __future__ import annotations

import numpy as np
from PIL import Image

from omnifuse.cli import main
from omnifuse.cli.chat import _draw_boxes
from omnifuse.data.boxes import PALETTE, draw_grounding


def test_boxes_are_drawn_where_the_text_puts_them():
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    canvas, drawn = draw_grounding(image, "<ref>a dog</ref><box>(100,200),(500,800)</box> and <box>(1,2),(3")
    assert drawn == 1
    pixels = np.asarray(canvas)
    assert tuple(pixels[50, 20]) == PALETTE[0]  # left edge x = 0.1 · 200, y = 50 inside 20..80
    assert tuple(pixels[50, 60]) == (255, 255, 255)  # inside the box: untouched
    assert draw_grounding(image, "no box here")[1] == 0


def test_chat_out_writes_a_png(tmp_path, capsys):
    source = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(source)
    out = tmp_path / "boxes.png"
    _draw_boxes("<ref>x</ref><box>(0,0),(500,500)</box>", [source], out)
    assert Image.open(out).size == (64, 64)
    assert "1 box(es) drawn" in capsys.readouterr().err


def test_chat_out_needs_an_image_and_a_png_path(tmp_path, capsys):
    run = tmp_path / "run"  # never loaded: the options are refused first
    assert main(["chat", str(run), "where?", "--out", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "--image" in err and "Traceback" not in err
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["chat", str(run), "where?", "--image", str(image), "--out", str(tmp_path / "o.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
