"""shapes-rerendered: easy-vqa's questions over shapes drawn by another renderer (a generalisation check).

easy-vqa draws one shape (circle, rectangle, triangle; eight colours) on a 64×64 image with a light
tint, upright, at moderate sizes. A model trained on it can learn that renderer rather than the shapes.
This set keeps easy-vqa's exact vocabulary — its colours, shapes, answer list and question templates,
read from the installed ``easy_vqa`` package with each template asked as often as easy-vqa asks it — and
changes only the drawing, each change recorded in the sample's ``meta``:

* image size: 48–160 px square (the encoder resizes it; easy-vqa is always 64);
* shape size: ``small`` (6–14 % of the side), ``medium`` (15–35 %, easy-vqa's range) or ``large``
  (40–80 %);
* position: anywhere, or (``placement: edge``) within two pixels of an edge or a corner — always whole;
* rotation: rectangles and triangles turned by up to ±25° in half of the images;
* background: a muted colour (not easy-vqa's near-white tint) — solid, a two-colour gradient or solid
  with light noise — never close to the shape's colour nor to any of easy-vqa's eight colours (so the
  background cannot be taken for a named colour).

One image per question. ``omnifuse data shapes-rerendered --out DIR [--n 1000] [--seed 0]`` writes
``test.jsonl`` and ``images/``; recipes and ``omnifuse eval --data`` can also name
``shapes-rerendered:test`` (1000 questions, seed 0, made once into the cache).

easy-vqa exposes only its data, not its generator, so the question templates are recovered from the
package's own questions (each colour or shape word replaced by a slot); ``answer`` reproduces the
package's answers (tests check it on the package's questions).
"""

from __future__ import annotations

import colorsys
import math
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from easy_vqa import get_test_questions, get_train_questions
from PIL import Image, ImageDraw

from omnifuse.data.easy_vqa import SHAPES, _question_types
from omnifuse.data.export import is_complete, write_export
from omnifuse.data.jsonl import write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.progress import progress_bar

VERSION = 2  # part of the export's manifest: a change of drawing or wording rebuilds cached exports
DEFAULT_N = 1000
# easy-vqa's own shape colours (its images' pixels are these exact values; named CSS colours)
COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "teal": (0, 128, 128),
    "brown": (165, 42, 42),
    "yellow": (255, 255, 0),
}
IMAGE_SIDES = (48, 64, 96, 128, 160)
SIZES = {"small": (0.06, 0.14), "medium": (0.15, 0.35), "large": (0.40, 0.80)}  # extent / image side
BACKGROUNDS = ("solid", "gradient", "noise")
MAX_ROTATION = 25.0  # degrees, rectangles and triangles only
EDGE_SHARE = 0.4  # share of shapes placed against an edge or a corner
MIN_FROM_SHAPE = 150.0  # RGB distance of every background pixel colour from the shape's colour
MIN_FROM_VOCABULARY = 100.0  # ... and from every vocabulary colour (no nameable background)
SUPERSAMPLE = 4  # shapes are drawn 4× larger and shrunk, for anti-aliased edges like easy-vqa's


@dataclass(frozen=True)
class Template:
    text: str  # easy-vqa's wording with a "{color}" or "{shape}" slot (or none)
    kind: str  # question_type: "yes/no", "color" or "shape"
    weight: int  # how many of easy-vqa's questions use it
    negated: bool  # "is there not a ...", "is no ... present": yes when the asked thing is absent

    @property
    def slot(self) -> str | None:
        return "color" if "{color}" in self.text else "shape" if "{shape}" in self.text else None


@cache
def templates() -> tuple[Template, ...]:
    """easy-vqa's question templates, from its train and test questions (sorted, so deterministic)."""
    types = _question_types()
    colours = sorted(a for a, t in types.items() if t == "color")
    if set(colours) != set(COLORS):
        raise OmnifuseError(
            f"the installed easy-vqa package names the colours {colours}, not {sorted(COLORS)}; reinstall "
            "it with `pip install --force-reinstall easy-vqa==1.0`."
        )
    words = re.compile(r"\b(" + "|".join(colours + sorted(SHAPES)) + r")\b")
    counts: Counter[tuple[str, str]] = Counter()
    for texts, answers, _ in (get_train_questions(), get_test_questions()):
        for text, answer in zip(texts, answers, strict=True):
            slotted = words.sub(lambda m: "{color}" if m.group(1) in COLORS else "{shape}", text)
            counts[slotted, types[answer]] += 1
    return tuple(
        Template(text, kind, n, kind == "yes/no" and bool({"not", "no"} & set(text.split())))
        for (text, kind), n in sorted(counts.items())
    )


def answer(template: Template, shape: str, color: str, asked: str | None) -> str:
    """The answer to ``template`` (its slot filled with ``asked``) about an image of a ``color`` ``shape``."""
    if template.kind == "color":
        return color
    if template.kind == "shape":
        return shape
    present = asked == (color if template.slot == "color" else shape)
    return "yes" if present != template.negated else "no"


def _ask(template: Template, shape: str, color: str, rng: random.Random) -> str | None:
    """The word in the template's slot: the drawn one for a colour or shape question; for yes/no, any word
    of the slot's vocabulary, uniformly, as easy-vqa asks (a colour asked about is present 1 time in 8, a
    shape 1 in 3: the package's own shares, which the test checks)."""
    if template.slot is None:
        return None
    drawn, options = (color, sorted(COLORS)) if template.slot == "color" else (shape, sorted(SHAPES))
    return drawn if template.kind != "yes/no" else rng.choice(options)


def _far_enough(rgb: tuple[float, ...], shape_rgb: tuple[int, ...]) -> bool:
    if math.dist(rgb, shape_rgb) < MIN_FROM_SHAPE:
        return False
    return all(math.dist(rgb, c) >= MIN_FROM_VOCABULARY for c in COLORS.values())


def _background_colour(rng: random.Random, shape_rgb: tuple[int, ...]) -> tuple[int, int, int]:
    """A muted colour (saturation ≤ 0.5, value ≥ 0.35) that is not easy-vqa's near-white tint."""
    while True:  # rejection sampling; most draws qualify
        hue, saturation, value = rng.random(), rng.uniform(0.1, 0.5), rng.uniform(0.35, 1.0)
        rgb = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value))
        if min(rgb) < 215 and _far_enough(rgb, shape_rgb):
            return rgb


def _background(rng: random.Random, side: int, shape_rgb: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    """An H×W×3 float array and its description for ``meta``."""
    kind = rng.choice(BACKGROUNDS)
    first = _background_colour(rng, shape_rgb)
    if kind == "gradient":
        while True:  # both ends and every colour between them stay far from the shape's colour
            second = _background_colour(rng, shape_rgb)
            mix = [tuple(a + (b - a) * t / 8 for a, b in zip(first, second, strict=True)) for t in range(9)]
            if all(_far_enough(c, shape_rgb) for c in mix):
                break
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:side, 0:side] / max(side - 1, 1)
        ramp = (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle)
        t = ((ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-9))[..., None]
        array = np.asarray(first, float) * (1 - t) + np.asarray(second, float) * t
        return array, {
            "kind": kind,
            "colors": [list(first), list(second)],
            "angle": round(math.degrees(angle)),
        }
    array = np.broadcast_to(np.asarray(first, float), (side, side, 3)).copy()
    if kind == "noise":
        sigma = rng.uniform(4.0, 12.0)
        array += np.random.default_rng(rng.getrandbits(64)).normal(0.0, sigma, array.shape)
        return array, {"kind": kind, "colors": [list(first)], "sigma": round(sigma, 1)}
    return array, {"kind": kind, "colors": [list(first)]}


def _outline(shape: str, extent: float, rng: random.Random) -> tuple[list[tuple[float, float]], float]:
    """The shape's vertices around (0, 0) (a circle: its bounding square) and its rotation in degrees."""
    if shape == "circle":
        r = extent / 2
        return [(-r, -r), (r, -r), (r, r), (-r, r)], 0.0
    aspect = rng.uniform(0.45, 1.0)  # the shorter side over the longer, either way round
    w, h = (extent, extent * aspect) if rng.random() < 0.5 else (extent * aspect, extent)
    if shape == "rectangle":
        points = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    else:  # easy-vqa's triangles are upright, apex at the top
        points = [(0.0, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION) if rng.random() < 0.5 else 0.0
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(x * c - y * s, x * s + y * c) for x, y in points], angle


def _place(points: list[tuple[float, float]], side: int, rng: random.Random) -> tuple[list, str]:
    """Shift ``points`` so the whole shape lies inside the image, against an edge in EDGE_SHARE of cases."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    width, height = max(xs) - min(xs), max(ys) - min(ys)
    room = side - 2  # one pixel of margin on each side
    scale = min(1.0, room / max(width, height))  # a large rotated shape is shrunk to fit
    points = [(x * scale, y * scale) for x, y in points]
    width, height = width * scale, height * scale
    placement = "edge" if rng.random() < EDGE_SHARE else "free"
    left, top = rng.uniform(1, 1 + room - width), rng.uniform(1, 1 + room - height)
    if placement == "edge":  # one side, or two (a corner), within two pixels of the border
        sides = rng.choice((("x",), ("y",), ("x", "y")))
        if "x" in sides:
            left = rng.choice((rng.uniform(1, 2), side - 1 - width - rng.uniform(0, 1)))
        if "y" in sides:
            top = rng.choice((rng.uniform(1, 2), side - 1 - height - rng.uniform(0, 1)))
    dx, dy = left - min(x for x, _ in points), top - min(y for _, y in points)
    return [(x + dx, y + dy) for x, y in points], placement


def draw(shape: str, color: str, rng: random.Random) -> tuple[Image.Image, dict]:
    """One image of a ``color`` ``shape`` with a random size, place, rotation and background, and its meta."""
    side = rng.choice(IMAGE_SIDES)
    size = rng.choice(tuple(SIZES))
    extent = max(5.0, side * rng.uniform(*SIZES[size]))
    points, rotation = _outline(shape, extent, rng)
    points, placement = _place(points, side, rng)
    shape_rgb = COLORS[color]
    background, background_meta = _background(rng, side, shape_rgb)
    mask = Image.new("L", (side * SUPERSAMPLE, side * SUPERSAMPLE), 0)
    big = [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in points]
    pen = ImageDraw.Draw(mask)
    if shape == "circle":
        pen.ellipse((big[0][0], big[0][1], big[2][0], big[2][1]), fill=255)
    else:
        pen.polygon(big, fill=255)
    alpha = np.asarray(mask.resize((side, side), Image.Resampling.BOX), float)[..., None] / 255.0
    pixels = background * (1 - alpha) + np.asarray(shape_rgb, float) * alpha
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    meta = {
        "image_size": side,
        "size": size,
        "extent_px": round(max(max(xs) - min(xs), max(ys) - min(ys)), 1),
        "box": [round(min(xs), 1), round(min(ys), 1), round(max(xs), 1), round(max(ys), 1)],
        "placement": placement,
        "rotation": round(rotation, 1),
        "background": background_meta,
    }
    return image, meta


def make_samples(
    folder: Path, n: int, seed: int, advance: Callable[[int], None] = lambda k: None
) -> list[Sample]:
    """Draw ``n`` images under ``folder/images``, one easy-vqa question each."""
    rng = random.Random(f"shapes-rerendered/{seed}")
    pool = templates()
    weights = [t.weight for t in pool]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for k in range(n):
        shape, color = rng.choice(sorted(SHAPES)), rng.choice(sorted(COLORS))
        template = rng.choices(pool, weights)[0]
        asked = _ask(template, shape, color, rng)
        question = template.text.format(**{template.slot: asked}) if template.slot else template.text
        reply = answer(template, shape, color, asked)
        image, drawing = draw(shape, color, rng)
        path = folder / "images" / f"{k:05d}.png"
        image.save(path)
        messages = (
            Message("user", (ImagePart(path), TextPart(question))),
            Message("assistant", (TextPart(reply),)),
        )
        meta = {"question_type": template.kind, "shape": shape, "color": color, "template": template.text,
                "asked": asked, **drawing}  # fmt: skip
        samples.append(Sample(f"rerendered-{k:05d}", messages, meta))
        advance(1)
    return samples


def export_shapes_rerendered(
    out_dir: Path | str, n: int = DEFAULT_N, seed: int = 0, progress: bool = True
) -> dict[str, Path]:
    """Write ``test.jsonl`` and ``images/`` into ``out_dir`` (atomically; an existing export with the
    same settings is kept). Returns ``{"test": path}``."""
    if not isinstance(n, int) or n < 1:
        raise OmnifuseError(f"shapes-rerendered needs at least one question (--n 1 or more); got {n!r}.")
    out_dir = Path(out_dir)
    files = {"test": out_dir / "test.jsonl"}
    manifest = {"data": "shapes-rerendered", "version": VERSION, "n": n, "seed": seed}
    if is_complete(out_dir, manifest, files.values()):
        return files

    def build(tmp: Path) -> None:
        with progress_bar("shapes-rerendered", n, enabled=progress) as bar:
            write_jsonl(make_samples(tmp, n, seed, bar.advance), tmp / "test.jsonl")

    write_export(out_dir, manifest, files.values(), build, "shapes-rerendered")
    return files


def ensure_shapes_rerendered(cache_root: Path | str, progress: bool = True) -> dict[str, Path]:
    """The default export in the cache (``shapes-rerendered:test`` in recipes and ``--data``)."""
    return export_shapes_rerendered(
        Path(cache_root) / "data" / f"shapes-rerendered-v{VERSION}", progress=progress
    )
