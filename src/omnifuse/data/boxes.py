"""Boxes as text, the Qwen-VL way, and where a box lands after omnifuse's image preprocessing.

Qwen-VL (Bai et al. 2023) writes a grounded phrase and its box as plain text::

    <ref>the small red circle</ref><box>(x1,y1),(x2,y2)</box>

with integer corner coordinates normalised to ``[0, 1000)`` of the *original* image (x right, y down;
``(x1, y1)`` the top-left and ``(x2, y2)`` the bottom-right corner). Several boxes of one phrase follow
each other (``<ref>..</ref><box>..</box><box>..</box>``); a box may stand without a phrase.

Three coordinate systems meet here:

* **pixels** of the original image, floats ``(left, top, right, bottom)``;
* **normalised** integers in ``[0, 1000)`` (:class:`Box`), what the model reads and writes. A resize
  of the whole image leaves them unchanged, so they are the form kept in data files;
* **the model's view**: a centre crop keeps only part of the image (:func:`box_in_region`), and tiling
  pads the image into a canvas and cuts it into tiles (:func:`tile_boxes`, the geometry of
  ``PIL.ImageOps.pad`` that :mod:`omnifuse.processing.tiling` uses, recomputed here).

Parsing never raises on model output: malformed box text is skipped, so a prediction that is not a box
scores 0 rather than crashing an evaluation (docs/grounding.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SCALE = 1000  # coordinates lie in [0, SCALE): Qwen-VL's normalisation
REF_OPEN, REF_CLOSE, BOX_OPEN, BOX_CLOSE = "<ref>", "</ref>", "<box>", "</box>"
GROUNDING_TOKENS = (REF_OPEN, REF_CLOSE, BOX_OPEN, BOX_CLOSE)

PixelBox = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels

_INT = r"\s*(-?\d{1,7})\s*"
_BOX_TEXT = rf"<box>\s*\({_INT},{_INT}\)\s*,\s*\({_INT},{_INT}\)\s*</box>"
_BOX = re.compile(_BOX_TEXT)
# an optional <ref>phrase</ref> (the phrase holds no other ref tag), then one or more boxes
_GROUP = re.compile(rf"(?:<ref>((?:(?!</?ref>).)*)</ref>\s*)?((?:{_BOX_TEXT}\s*)+)", re.DOTALL)


@dataclass(frozen=True)
class Box:
    """A box in normalised integer coordinates, ``0 ≤ x1 < x2 < 1000`` (likewise y) when valid."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def valid(self) -> bool:
        return 0 <= self.x1 < self.x2 < SCALE and 0 <= self.y1 < self.y2 < SCALE

    @property
    def area(self) -> int:
        return max(0, self.x2 - self.x1) * max(0, self.y2 - self.y1) if self.valid else 0

    def text(self) -> str:
        return f"{BOX_OPEN}({self.x1},{self.y1}),({self.x2},{self.y2}){BOX_CLOSE}"


@dataclass(frozen=True)
class Grounded:
    """A phrase (None: a bare box) and its boxes, as one ``<ref>..</ref><box>..</box>`` group."""

    phrase: str | None
    boxes: tuple[Box, ...]

    def text(self) -> str:
        ref = f"{REF_OPEN}{self.phrase}{REF_CLOSE}" if self.phrase is not None else ""
        return ref + "".join(b.text() for b in self.boxes)


def format_box(box: Box, phrase: str | None = None) -> str:
    """``<ref>phrase</ref><box>(x1,y1),(x2,y2)</box>`` (the ref left out when ``phrase`` is None)."""
    return Grounded(phrase, (box,)).text()


def format_grounding(items: Iterable[Grounded]) -> str:
    return "".join(item.text() for item in items)


def parse_grounding(text: str) -> list[Grounded]:
    """Every group of boxes in ``text`` with the phrase of the ``<ref>`` right before it (None when
    there is none), as Qwen-VL's tokenizer reads them. Boxes written one after the other share a phrase;
    text between groups is ignored; a ``<box>`` that is not ``(int,int),(int,int)`` is skipped. Never
    raises."""
    if not isinstance(text, str):
        return []
    items = []
    for m in _GROUP.finditer(text):
        boxes = tuple(Box(*(int(g) for g in b.groups())) for b in _BOX.finditer(m.group(2)))
        phrase = m.group(1).strip() if m.group(1) is not None else None
        items.append(Grounded(phrase, boxes))
    return items


def first_box(text: str) -> Box | None:
    """The first well-formed box in ``text`` (what Qwen-VL's referring-expression evaluation reads)."""
    items = parse_grounding(text)
    return items[0].boxes[0] if items else None


def has_box(text: str) -> bool:
    return bool(_BOX.search(text)) if isinstance(text, str) else False


# ------------------------------------------------------------------ IoU
def iou(a: Box | None, b: Box | None) -> float:
    """Intersection over union of two normalised boxes; 0 when either is missing or not valid."""
    if a is None or b is None or not a.valid or not b.valid:
        return 0.0
    w = min(a.x2, b.x2) - max(a.x1, b.x1)
    h = min(a.y2, b.y2) - max(a.y1, b.y1)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a.area + b.area - inter)


# ------------------------------------------------------------------ pixels ↔ normalised
def normalise(box: PixelBox, width: float, height: float) -> Box:
    """Pixel box of a ``width``×``height`` image → normalised integers, clipped to ``[0, 999]``.

    Qwen-VL's rule: ``int(x / width * 1000)`` (floor), so the right edge of the image maps to 999."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    left, top, right, bottom = box

    def to(v: float, side: float) -> int:
        return min(SCALE - 1, max(0, math.floor(v / side * SCALE + 1e-9)))

    return Box(to(left, width), to(top, height), to(right, width), to(bottom, height))


def denormalise(box: Box, width: float, height: float) -> PixelBox:
    """Normalised box → pixels of a ``width``×``height`` image (any size: a resize keeps boxes)."""
    return (box.x1 * width / SCALE, box.y1 * height / SCALE, box.x2 * width / SCALE, box.y2 * height / SCALE)


def xywh_to_pixels(bbox: Sequence[float]) -> PixelBox:
    """COCO's ``[x, y, width, height]`` → ``(left, top, right, bottom)``."""
    x, y, w, h = bbox
    return (x, y, x + w, y + h)


# ------------------------------------------------------------------ the model's view
def box_in_region(box: PixelBox, region: PixelBox) -> tuple[Box | None, float]:
    """Where a pixel box lies in ``region`` (the part of the image an encoder keeps, e.g. a centre crop:
    ``encoder.input_region(w, h)``): the clipped box normalised to the region, and the fraction of the
    box's area inside it (None and 0.0 when it lies wholly outside)."""
    left, top, right, bottom = region
    clipped = (max(box[0], left), max(box[1], top), min(box[2], right), min(box[3], bottom))
    area = max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])
    inside = max(0.0, clipped[2] - clipped[0]) * max(0.0, clipped[3] - clipped[1])
    if inside <= 0 or area <= 0:
        return None, 0.0
    shifted = (clipped[0] - left, clipped[1] - top, clipped[2] - left, clipped[3] - top)
    return normalise(shifted, right - left, bottom - top), inside / area


def pad_placement(width: int, height: int, canvas_w: int, canvas_h: int) -> PixelBox:
    """Where ``PIL.ImageOps.pad`` puts a ``width``×``height`` image in a ``canvas_w``×``canvas_h`` canvas
    (aspect kept, centred): the image's (left, top, right, bottom) in canvas pixels. Mirrors PIL's
    ``contain`` + ``pad`` rounding, so boxes follow the pixels exactly."""
    new_w, new_h = canvas_w, canvas_h
    im_ratio, dest_ratio = width / height, canvas_w / canvas_h
    if im_ratio != dest_ratio:
        if im_ratio > dest_ratio:
            new_h = round(height / width * canvas_w)
        else:
            new_w = round(width / height * canvas_h)
    x = round((canvas_w - new_w) * 0.5) if new_w != canvas_w else 0
    y = round((canvas_h - new_h) * 0.5) if new_w == canvas_w and new_h != canvas_h else 0
    return float(x), float(y), float(x + new_w), float(y + new_h)


@dataclass(frozen=True)
class TileBox:
    """A box's part in one tile: 0-based ``row``, ``col``, the part normalised to the tile, and the
    fraction of the box's area that this tile holds."""

    row: int
    col: int
    box: Box
    fraction: float


def _to_canvas(box: PixelBox, width: int, height: int, placed: PixelBox) -> PixelBox:
    sx, sy = (placed[2] - placed[0]) / width, (placed[3] - placed[1]) / height
    return (
        placed[0] + box[0] * sx,
        placed[1] + box[1] * sy,
        placed[0] + box[2] * sx,
        placed[1] + box[3] * sy,
    )


def tile_boxes(
    box: PixelBox, width: int, height: int, grid: tuple[int, int], tile_size: int
) -> list[TileBox]:
    """The tiles of a ``rows``×``cols`` tiling (:class:`omnifuse.processing.tiling.Tiling`) that a pixel box
    of the ``width``×``height`` image falls in, row by row, each with the box's part normalised to that
    tile. The global view sees the whole image, so there the box's normalised form is unchanged."""
    rows, cols = grid
    placed = pad_placement(width, height, cols * tile_size, rows * tile_size)
    canvas_box = _to_canvas(box, width, height, placed)
    area = max(0.0, canvas_box[2] - canvas_box[0]) * max(0.0, canvas_box[3] - canvas_box[1])
    out = []
    for r in range(rows):
        for c in range(cols):
            region = (c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size)
            part, fraction = box_in_region(canvas_box, region)
            if part is not None and area > 0:
                out.append(TileBox(r, c, part, fraction))
    return out


def from_tile(tile: TileBox, width: int, height: int, grid: tuple[int, int], tile_size: int) -> PixelBox:
    """A box normalised to one tile back to pixels of the original image (the inverse of
    :func:`tile_boxes` for the part of the box in that tile)."""
    rows, cols = grid
    placed = pad_placement(width, height, cols * tile_size, rows * tile_size)
    x1, y1, x2, y2 = denormalise(tile.box, tile_size, tile_size)
    ox, oy = tile.col * tile_size - placed[0], tile.row * tile_size - placed[1]
    sx, sy = width / (placed[2] - placed[0]), height / (placed[3] - placed[1])
    return ((x1 + ox) * sx, (y1 + oy) * sy, (x2 + ox) * sx, (y2 + oy) * sy)


# ------------------------------------------------------------------ drawing
PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))


def draw_grounding(image, text: str):
    """A copy of ``image`` (PIL) with every well-formed box in ``text`` outlined and labelled with its
    phrase (``chat --out``); the number of boxes drawn comes back too. Boxes are read as Qwen-VL writes
    them, relative to the whole image, so any image size works."""
    from PIL import ImageDraw

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 150))
    drawn = 0
    for k, group in enumerate(parse_grounding(text)):
        color = PALETTE[k % len(PALETTE)]
        for box in group.boxes:
            if not box.valid:
                continue
            left, top, right, bottom = denormalise(box, *canvas.size)
            draw.rectangle((left, top, right, bottom), outline=color, width=width)
            if group.phrase:
                label_top = top - 12 if top >= 12 else bottom + 2
                draw.text((left + 2, label_top), group.phrase, fill=color)
            drawn += 1
    return canvas, drawn
