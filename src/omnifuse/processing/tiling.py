"""High-resolution tiling (LLaVA-NeXT "AnyRes", SPHINX): one image becomes several views.

An image is given to the model as a *global view* (the whole image, which the encoder's own transform
resizes to its input size) followed by *tiles* of the full-resolution image. The tile grid
(rows × cols, at most ``max_tiles`` tiles) is the one whose canvas, ``cols·tile_size`` ×
``rows·tile_size`` pixels, keeps the most of the image's resolution when the image is fitted into it
with its aspect ratio kept, and wastes the least canvas among equals — LLaVA-NeXT's "best resolution"
rule, taken from ``transformers.image_processing_utils.select_best_resolution``. The image is resized
into that canvas with ``PIL.ImageOps.pad`` (aspect kept, centred, black borders, as LLaVA-NeXT pads)
and cut into ``tile_size`` squares; each view then goes through the encoder and the connector like
any single image.

Where a view sits is told to the LLM in plain text placed before the view's placeholder tokens, so
any tokenizer works and no vocabulary is added:

* ``markers: text`` — ``<global>`` before the global view and ``<tile r,c>`` (1-based row, column)
  before each tile (Idefics3 writes the same information with added ``<row_r_col_c>`` tokens);
* ``markers: newline`` — a ``"\\n"`` before the first tile of every row and nothing else (LLaVA-NeXT
  puts a learned newline embedding after each row of features); one token per row.

When the chosen grid is 1×1 and the global view is on, the single tile would repeat the global view,
so only the global view is given: small images cost what they cost without tiling.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageOps
from transformers.image_processing_utils import select_best_resolution

GLOBAL_MARKER = "<global>"
PAD_COLOR = (0, 0, 0)


def tile_marker(row: int, col: int) -> str:
    """The text before the tile at 1-based (row, col) with ``markers: text``."""
    return f"<tile {row},{col}>"


def select_grid(width: int, height: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """(rows, cols) with rows·cols ≤ max_tiles whose canvas best fits a ``width``×``height`` image.

    Candidates are listed by rows, then cols, ascending; an exact tie (same kept and wasted pixels)
    goes to the first listed."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    grids = [(r, c) for r in range(1, max_tiles + 1) for c in range(1, max_tiles // r + 1)]
    best_h, best_w = select_best_resolution(
        (height, width), [(r * tile_size, c * tile_size) for r, c in grids]
    )
    return best_h // tile_size, best_w // tile_size


@dataclass(frozen=True)
class Tiling:
    """How one modality's images are split into views (flat arguments; built from the recipe's
    ``model.tiling.<modality>`` by ``omnifuse.models.builders``)."""

    max_tiles: int
    tile_size: int
    global_view: bool = True
    markers: str = "text"  # "text" | "newline"

    def __post_init__(self) -> None:
        if self.max_tiles < 1 or self.tile_size < 1:
            raise ValueError(
                f"max_tiles and tile_size must be positive, got {self.max_tiles}, {self.tile_size}"
            )
        if self.markers not in ("text", "newline"):
            raise ValueError(f"markers must be 'text' or 'newline', got {self.markers!r}")

    def grid(self, image: Image.Image) -> tuple[int, int]:
        return select_grid(image.width, image.height, self.max_tiles, self.tile_size)

    def views(self, image: Image.Image) -> list[tuple[str, Image.Image]]:
        """The views in text order, each with the marker text that precedes its placeholder tokens:
        the global view first (when on), then the tiles row by row."""
        rows, cols = self.grid(image)
        views: list[tuple[str, Image.Image]] = []
        if self.global_view:
            views.append((GLOBAL_MARKER if self.markers == "text" else "", image))
            if rows == cols == 1:
                return views
        size = self.tile_size
        canvas = ImageOps.pad(
            image.convert("RGB"), (cols * size, rows * size), method=Image.BICUBIC, color=PAD_COLOR
        )
        for r in range(rows):
            for c in range(cols):
                if self.markers == "text":
                    marker = tile_marker(r + 1, c + 1)
                else:  # a row break before each row, except before the very first view of the image
                    marker = "\n" if c == 0 and (r > 0 or self.global_view) else ""
                views.append((marker, canvas.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))))
        return views
