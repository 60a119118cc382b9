"""Qwen-VL box text (parse ∘ format round trip, malformed text never raising) and where a box lands after
resize, centre crop and tiling — checked against the pixels the real transforms produce."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from omnifuse.data.boxes import (
    Box,
    Grounded,
    box_in_region,
    denormalise,
    first_box,
    format_box,
    format_grounding,
    from_tile,
    iou,
    normalise,
    pad_placement,
    parse_grounding,
    tile_boxes,
)
from omnifuse.encoders.vision.cnn import crop_resize_size, kept_region, resize_image
from omnifuse.processing.tiling import Tiling


def _random_box(rng: random.Random) -> Box:
    x1, x2 = sorted(rng.sample(range(1000), 2))
    y1, y2 = sorted(rng.sample(range(1000), 2))
    return Box(x1, y1, x2, y2)


def test_format_then_parse_is_the_identity():
    rng = random.Random(0)
    for _ in range(200):
        items = [
            Grounded(rng.choice([None, "the small red circle left of the triangle", "a dog"]),
                     tuple(_random_box(rng) for _ in range(rng.randint(1, 3))))
            for _ in range(rng.randint(1, 4))
        ]  # fmt: skip
        text = format_grounding(items)
        parsed = parse_grounding(text)
        assert format_grounding(parsed) == text  # format ∘ parse = identity on text
        # groups written one after another merge only when the second has no phrase
        assert [b for g in parsed for b in g.boxes] == [b for g in items for b in g.boxes]
    assert format_box(Box(1, 2, 30, 40), "a cat") == "<ref>a cat</ref><box>(1,2),(30,40)</box>"
    assert parse_grounding("<ref>a cat</ref><box>(1,2),(30,40)</box>") == [
        Grounded("a cat", (Box(1, 2, 30, 40),))
    ]


@pytest.mark.parametrize(
    "text",
    ["", "a red circle", "<box>(1,2),(3)</box>", "<box>(1,2),(3,4)", "<ref>x</ref>", "<box>(a,b),(c,d)</box>",
     "<box>" * 1000, "(1,2),(3,4)", None, 42, "<box>(" + "9" * 5000 + ",1),(2,3)</box>"],
)  # fmt: skip
def test_malformed_box_text_parses_to_nothing(text):
    assert parse_grounding(text) == []
    assert first_box(text) is None


def test_boxes_in_surrounding_text_and_spaces_are_found():
    assert first_box("It is at <box>( 10 , 20 ),( 30 ,40 )</box>.") == Box(10, 20, 30, 40)
    groups = parse_grounding("<ref>a</ref> <box>(1,1),(5,5)</box> and <ref>b</ref><box>(6,6),(9,9)</box>")
    assert [g.phrase for g in groups] == ["a", "b"]


def test_iou_on_known_boxes():
    a = Box(0, 0, 100, 100)
    assert iou(a, a) == 1.0
    assert iou(a, Box(50, 0, 150, 100)) == pytest.approx(5000 / 15000)
    assert iou(a, Box(0, 0, 50, 50)) == pytest.approx(0.25)
    assert iou(a, Box(200, 200, 300, 300)) == 0.0
    assert iou(a, Box(100, 0, 200, 100)) == 0.0  # touching edges
    assert iou(a, None) == 0.0
    assert iou(a, Box(50, 50, 10, 10)) == 0.0  # x2 < x1: not a box
    assert iou(a, Box(0, 0, 100, 1000)) == 0.0  # 1000 is outside [0, 1000)


def test_normalise_follows_qwen_vl_and_a_resize_keeps_boxes():
    assert normalise((0, 0, 640, 480), 640, 480) == Box(0, 0, 999, 999)
    assert normalise((64, 48, 320, 240), 640, 480) == Box(100, 100, 500, 500)
    rng = random.Random(1)
    for _ in range(100):
        w, h = rng.randint(50, 2000), rng.randint(50, 2000)
        px = (rng.uniform(0, w / 2), rng.uniform(0, h / 2), rng.uniform(w / 2, w), rng.uniform(h / 2, h))
        box = normalise(px, w, h)
        scale = rng.uniform(0.2, 5)
        resized = normalise(tuple(v * scale for v in px), w * scale, h * scale)
        assert all(
            abs(a - b) <= 1 for a, b in zip(box.__dict__.values(), resized.__dict__.values(), strict=True)
        )
        back = denormalise(box, w, h)
        assert all(abs(a - b) <= max(w, h) / 1000 + 1e-6 for a, b in zip(back, px, strict=True))


def _white_box_image(w: int, h: int, px: tuple[int, int, int, int]) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[px[1] : px[3], px[0] : px[2]] = 255
    return Image.fromarray(arr)


def _extent(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Pixel extent (right/bottom exclusive) of the bright pixels."""
    mask = np.asarray(image.convert("L")) > 127
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_a_centre_crop_moves_boxes_as_the_pixels_move():
    w, h, size = 400, 240, 64
    px = (30, 100, 300, 180)  # spills over the left edge of the centre crop
    region = kept_region(w, h, size, crop_resize_size(size))
    mapped, fraction = box_in_region(px, region)
    assert 0 < fraction < 1
    seen = _extent(resize_image(_white_box_image(w, h, px), size, crop_resize_size(size), Image.NEAREST))
    expected = denormalise(mapped, size, size)
    assert all(abs(a - b) <= 2 for a, b in zip(seen, expected, strict=True))
    assert box_in_region((0, 0, 20, 20), region) == (None, 0.0)  # wholly cut off by the crop


@pytest.mark.parametrize("size", [(300, 200), (150, 420), (256, 256)])
def test_tiling_moves_boxes_as_the_pixels_move(size):
    w, h = size
    tiling = Tiling(max_tiles=4, tile_size=64, global_view=False)
    rng = random.Random(w)
    for _ in range(5):
        x1, y1 = rng.randint(0, w - 40), rng.randint(0, h - 40)
        px = (x1, y1, rng.randint(x1 + 20, w), rng.randint(y1 + 20, h))
        image = _white_box_image(w, h, px)
        grid = tiling.grid(image)
        views = tiling.views(image)
        tiles = {(t.row, t.col): t for t in tile_boxes(px, w, h, grid, 64)}
        for k, (_, view) in enumerate(views):
            row, col = divmod(k, grid[1])
            seen = _extent(view)
            if (row, col) not in tiles:
                assert seen is None or (seen[2] - seen[0]) * (seen[3] - seen[1]) <= 64  # resampling fringe
                continue
            expected = denormalise(tiles[(row, col)].box, 64, 64)
            assert seen is not None
            assert all(abs(a - b) <= 2.5 for a, b in zip(seen, expected, strict=True)), (
                row,
                col,
                seen,
                expected,
            )
        assert sum(t.fraction for t in tiles.values()) == pytest.approx(1.0, abs=0.02)
        # and back: each tile's part maps into the original box
        for t in tiles.values():
            back = from_tile(t, w, h, grid, 64)
            assert (
                back[0] >= px[0] - 2
                and back[2] <= px[2] + 2
                and back[1] >= px[1] - 2
                and back[3] <= px[3] + 2
            )


def test_pad_placement_matches_pil():
    from PIL import ImageOps

    for w, h, cw, ch in [(300, 200, 128, 128), (150, 420, 64, 192), (99, 100, 128, 64), (64, 64, 128, 128)]:
        padded = ImageOps.pad(_white_box_image(w, h, (0, 0, w, h)), (cw, ch), method=Image.NEAREST)
        assert _extent(padded) == tuple(int(v) for v in pad_placement(w, h, cw, ch))
