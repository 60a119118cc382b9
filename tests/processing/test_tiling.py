"""High-resolution tiling: grid choice (hand-computed cases), views, and the processor's token layout."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.processing import MediaSlot, Processor, Tiling
from omnifuse.processing.processor import IGNORE_INDEX
from omnifuse.processing.tiling import select_grid
from tiny import CHATML, TinyVisionEncoder, make_tokenizer

PH = 10_000  # placeholder id
T = 3  # placeholder tokens per view


def sk(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)())


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    gen = np.random.default_rng(seed)
    return Image.fromarray(gen.integers(0, 256, (height, width, 3), dtype=np.uint8))


# Each case was worked out by hand with LLaVA-NeXT's rule: for every grid the image is fitted into
# the canvas (cols·tile × rows·tile) with its aspect kept; the largest fitted area (capped at the image's
# own area) wins, then the smallest canvas.
@pytest.mark.parametrize(
    "width, height, max_tiles, tile, grid",
    [
        (64, 64, 4, 32, (2, 2)),  # the 2×2 canvas holds the image exactly
        (64, 64, 4, 128, (1, 1)),  # every canvas holds all 64² pixels: the smallest one wins
        (20, 20, 4, 32, (1, 1)),  # smaller than one tile
        (200, 100, 4, 100, (1, 2)),  # 1×2 and 2×2 both hold 200×100; 1×2 wastes less
        (100, 200, 4, 100, (2, 1)),
        (1000, 100, 4, 100, (1, 4)),  # 1×4 keeps 400×40, 1×3 300×30, 2×2 200×20
        (512, 512, 4, 128, (2, 2)),  # astronaut
        (600, 400, 4, 128, (2, 2)),  # coffee: 2×2 keeps 256×170, 1×2..1×4 only 192×128
        (600, 400, 6, 128, (2, 3)),  # coffee with 6 tiles: 2×3 holds it at scale .64 exactly (384×256)
        (640, 427, 6, 128, (2, 3)),  # rocket: 2×3 keeps 383×255, 3×2 256×170
        (427, 640, 6, 128, (3, 2)),  # the same rotated
        (640, 427, 4, 128, (2, 2)),  # rocket with 4 tiles: 2×2 keeps 256×170, 1×4 191×128
    ],
)
def test_select_grid_hand_computed(width, height, max_tiles, tile, grid):
    rows, cols = select_grid(width, height, max_tiles, tile)
    assert (rows, cols) == grid and rows * cols <= max_tiles


def test_views_of_an_exact_fit_are_the_image_quadrants():
    image = noise(64, 64)
    views = Tiling(max_tiles=4, tile_size=32).views(image)
    assert [m for m, _ in views] == ["<global>", "<tile 1,1>", "<tile 1,2>", "<tile 2,1>", "<tile 2,2>"]
    assert np.array_equal(np.asarray(views[0][1]), np.asarray(image))  # the whole image, unresized
    pixels = np.asarray(image)
    for (_, tile), (r, c) in zip(views[1:], [(0, 0), (0, 1), (1, 0), (1, 1)], strict=True):
        assert tile.size == (32, 32)
        assert np.array_equal(np.asarray(tile), pixels[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32])


@pytest.mark.parametrize(
    "name, max_tiles, grid",
    [("astronaut", 4, (2, 2)), ("coffee", 4, (2, 2)), ("coffee", 6, (2, 3)), ("rocket", 6, (2, 3))],
)
def test_views_of_sample_images(name, max_tiles, grid):
    image = sk(name)
    tiling = Tiling(max_tiles=max_tiles, tile_size=128)
    views = tiling.views(image)
    rows, cols = grid
    assert tiling.grid(image) == grid
    assert len(views) == 1 + rows * cols
    assert views[0] == ("<global>", image)
    assert [m for m, _ in views[1:]] == [
        f"<tile {r},{c}>" for r in range(1, rows + 1) for c in range(1, cols + 1)
    ]
    assert all(v.size == (128, 128) and v.mode == "RGB" for _, v in views[1:])
    # Reassembled, the tiles are the image fitted into the canvas with its aspect kept (black borders).
    canvas = np.concatenate(
        [
            np.concatenate([np.asarray(views[1 + r * cols + c][1]) for c in range(cols)], 1)
            for r in range(rows)
        ]
    )
    w, h = image.size
    scale = min(cols * 128 / w, rows * 128 / h)
    fit_w, fit_h = round(w * scale), round(h * scale)
    pad_x, pad_y = (cols * 128 - fit_w) // 2, (rows * 128 - fit_h) // 2
    if pad_y:  # letterboxed: the bands above and below are black, the middle is the picture
        assert canvas[: pad_y - 1].max() == 0 and canvas[rows * 128 - pad_y + 1 :].max() == 0
    if pad_x:
        assert canvas[:, : pad_x - 1].max() == 0 and canvas[:, cols * 128 - pad_x + 1 :].max() == 0
    middle = canvas[pad_y + 1 : pad_y + fit_h - 1, pad_x + 1 : pad_x + fit_w - 1]
    reference = np.asarray(image.resize((fit_w, fit_h), Image.BICUBIC))[1:-1, 1:-1]
    assert np.abs(middle.astype(int) - reference.astype(int)).mean() < 2


def test_coffee_is_letterboxed_top_and_bottom():
    views = Tiling(max_tiles=4, tile_size=128).views(sk("coffee"))  # 600×400 into 256×256: 256×171
    top_left, bottom_left = np.asarray(views[1][1]), np.asarray(views[3][1])
    assert top_left[:40].max() == 0 and top_left[50:].max() > 0
    assert bottom_left[-40:].max() == 0 and bottom_left[:70].max() > 0


def test_newline_markers_and_no_global_view():
    image = noise(64, 64)
    assert [m for m, _ in Tiling(4, 32, markers="newline").views(image)] == ["", "\n", "", "\n", ""]
    no_global = Tiling(4, 32, global_view=False, markers="newline").views(image)
    assert [m for m, _ in no_global] == ["", "", "\n", ""]
    assert len(Tiling(4, 32, global_view=False).views(image)) == 4


def test_a_one_tile_grid_gives_only_the_global_view():
    small = noise(20, 30)
    assert Tiling(4, 32).views(small) == [("<global>", small)]
    assert Tiling(4, 32, markers="newline").views(small) == [("", small)]
    padded = Tiling(4, 32, global_view=False).views(small)
    assert len(padded) == 1 and padded[0][1].size == (32, 32)


# ---------------------------------------------------------------- the processor's layout


def processor(tiling: Tiling | None) -> Processor:
    slot = MediaSlot(TinyVisionEncoder(image_size=32).preprocess, T, PH, tiling)
    return Processor(make_tokenizer(CHATML), {"image": slot}, system_prompt="")


def sample(image: Image.Image, answer: str = "red circle") -> Sample:
    return Sample(
        "s1",
        (
            Message("user", (ImagePart(image=image), TextPart("what color is the shape?"))),
            Message("assistant", (TextPart(answer),)),
        ),
    )


def layout(proc: Processor, ids: list[int]) -> list:
    """The token sequence as alternating decoded text and placeholder-run lengths."""
    out, text, run = [], [], 0
    for tok in ids + [None]:
        if tok == PH:
            if text:
                out.append(proc.tokenizer.decode(text))
                text = []
            run += 1
        else:
            if run:
                out.append(run)
                run = 0
            if tok is not None:
                text.append(tok)
    return out + ([proc.tokenizer.decode(text)] if text else [])


@pytest.mark.parametrize("name, views", [("astronaut", 5), ("coffee", 5), ("rocket", 5)])
def test_processor_interleaves_text_markers_and_placeholders(name, views):
    proc = processor(Tiling(max_tiles=4, tile_size=32))
    enc = proc.encode(sample(sk(name)))
    parts = layout(proc, enc.input_ids)
    assert parts[0].endswith("user\n<global>")
    assert parts[1:10] == [T, "<tile 1,1>", T, "<tile 1,2>", T, "<tile 2,1>", T, "<tile 2,2>", T]
    assert parts[10].startswith("what color is the shape?")
    assert enc.input_ids.count(PH) == views * T
    assert len(enc.media["image"]) == views and all(v.shape == (3, 32, 32) for v in enc.media["image"])
    # Markers and placeholders carry no label; the answer and end of turn still do.
    labelled = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert proc.tokenizer.decode(labelled) == "red circle<|im_end|>\n"


def test_processor_newline_layout():
    proc = processor(Tiling(max_tiles=6, tile_size=32, markers="newline"))
    enc = proc.encode(sample(sk("rocket")))  # 2×3 tiles
    parts = layout(proc, enc.input_ids)
    assert parts[0].endswith("user\n") and parts[1:6] == [T, "\n", 3 * T, "\n", 3 * T]
    assert len(enc.media["image"]) == 7


def test_tiling_a_small_image_with_newline_markers_changes_nothing():
    small = noise(24, 24)
    plain, tiled = (
        processor(None).encode(sample(small)),
        processor(Tiling(4, 32, markers="newline")).encode(sample(small)),
    )
    assert plain.input_ids == tiled.input_ids and plain.labels == tiled.labels
    assert len(tiled.media["image"]) == 1 and torch.equal(plain.media["image"][0], tiled.media["image"][0])


def test_collate_counts_views_per_sample():
    proc = processor(Tiling(max_tiles=4, tile_size=32))
    batch = proc.collate([proc.encode(sample(sk("astronaut"))), proc.encode(sample(noise(20, 20)))])
    assert batch.media_counts["image"] == [5, 1]
    assert batch.media["image"].shape == (6, 3, 32, 32)
    assert (batch.input_ids == PH).sum(dim=1).tolist() == [5 * T, T]
