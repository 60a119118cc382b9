"""shapes-grounding: generated scenes of a few coloured shapes with exact boxes, in Qwen-VL's box text.

Every scene is a ``SIDE``×``SIDE`` image with 2–4 shapes (circle, square, triangle; red, green, blue,
yellow; small or large) that never overlap. Each shape gets the shortest phrase that picks it out alone —
"the circle", "the red circle", "the small red circle" — in 30 % of cases with a relation to a shape that
is unique by its kind added ("the red circle left of the triangle"), and where its own attributes do not
single it out, all of them and such a relation: "the small red circle left of the triangle". Boxes are the exact
drawn extents, normalised to ``[0, 1000)`` (:mod:`omnifuse.data.boxes`).

Three kinds of sample per scene (``meta.task`` chooses the metric in ``omnifuse eval``, ``meta.question_type``
names the table row):

* ``grounding`` — referring expression → box: "Give the box of the small red circle." →
  ``<ref>the small red circle</ref><box>(x1,y1),(x2,y2)</box>`` (one per shape);
* ``describe`` — box → description: "What is in <box>(x1,y1),(x2,y2)</box>?" → "a small red circle"
  (exact match, the VQA metric; one per scene);
* ``grounded_caption`` — "Describe the image with boxes." → every shape left to right,
  ``<ref>a small red circle</ref><box>…</box> <ref>a large blue square</ref><box>…</box>`` (one per scene).

``omnifuse data shapes-grounding --out DIR`` writes ``train.jsonl``, ``test.jsonl`` and ``images/``;
recipes can name ``shapes-grounding:train`` / ``shapes-grounding:test`` (made once into the cache).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from omnifuse.data.boxes import Grounded, format_box, format_grounding, normalise
from omnifuse.data.export import is_complete, write_export
from omnifuse.data.jsonl import write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.progress import progress_bar

VERSION = 2  # part of the export's manifest: a change of scene or wording rebuilds cached exports
SIDE = 128
SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SIZES = {"small": (16, 22), "large": (32, 42)}  # side of the shape's box in pixels, per size word
BACKGROUND = (245, 245, 245)
RELATIONS = ("left of", "right of", "above", "below")
RELATION_SHARE = (
    0.3  # share of uniquely described shapes that also get a relation ("... left of the triangle")
)
DEFAULT_SCENES = {"train": 3000, "test": 300}


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # pixels (left, top, right, bottom), right/bottom exclusive

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def words(self, keys: tuple[str, ...]) -> str:
        return " ".join(getattr(self, k) for k in ("size", "color", "shape") if k in keys)


def _overlaps(a: tuple[int, ...], b: tuple[int, ...], gap: int = 4) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def random_scene(rng: random.Random, n_min: int = 2, n_max: int = 4) -> list[Shape]:
    """2–4 shapes placed without overlap (rejection sampling; a crowded draw starts again)."""
    while True:
        shapes: list[Shape] = []
        for _ in range(rng.randint(n_min, n_max)):
            size = rng.choice(tuple(SIZES))
            side = rng.randint(*SIZES[size])
            for _attempt in range(50):
                x, y = rng.randint(2, SIDE - side - 2), rng.randint(2, SIDE - side - 2)
                box = (x, y, x + side, y + side)
                if not any(_overlaps(box, s.box) for s in shapes):
                    shapes.append(Shape(rng.choice(SHAPES), rng.choice(tuple(COLORS)), size, box))
                    break
        if len(shapes) >= n_min:
            return shapes


def draw_scene(shapes: list[Shape]) -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in shapes:
        left, top, right, bottom = s.box
        fill = COLORS[s.color]
        # PIL's corners are inclusive: right - 1 / bottom - 1 make the drawn extent equal the box
        if s.shape == "circle":
            draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
        elif s.shape == "square":
            draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)
        else:
            draw.polygon(
                [((left + right - 1) / 2, top), (left, bottom - 1), (right - 1, bottom - 1)], fill=fill
            )
    return image


_ATTRIBUTE_SETS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))


def _matches(s: Shape, keys: tuple[str, ...], ref: Shape) -> bool:
    return all(getattr(s, k) == getattr(ref, k) for k in keys)


def _related(a: Shape, b: Shape, relation: str) -> bool:
    (ax, ay), (bx, by) = a.centre, b.centre
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def _relations(target: Shape, scene: list[Shape], keys: tuple[str, ...]) -> list[str]:
    """Phrases "the <keys words> <relation> the <anchor shape>" that pick out ``target`` alone, with
    anchors unique by their kind of shape."""
    anchors = [a for a in scene if a is not target and sum(s.shape == a.shape for s in scene) == 1]
    options = []
    for anchor in anchors:
        for relation in RELATIONS:
            chosen = [s for s in scene if _matches(s, keys, target) and _related(s, anchor, relation)]
            if chosen == [target]:
                options.append(f"the {target.words(keys)} {relation} the {anchor.shape}")
    return options


def referring_phrase(target: Shape, scene: list[Shape], rng: random.Random) -> str | None:
    """The shortest attribute phrase unique to ``target`` ("the red circle"), in RELATION_SHARE of the
    cases with a relation to a shape unique by its kind added ("the red circle left of the triangle");
    where no attributes are unique, all three plus a relation; None when nothing picks it out."""
    for keys in _ATTRIBUTE_SETS:
        if sum(_matches(s, keys, target) for s in scene) == 1:
            options = _relations(target, scene, keys) if rng.random() < RELATION_SHARE else []
            return rng.choice(options) if options else f"the {target.words(keys)}"
    options = _relations(target, scene, ("size", "color", "shape"))
    return rng.choice(options) if options else None


def _box_text(s: Shape) -> str:
    return format_box(normalise(s.box, SIDE, SIDE))


def scene_samples(scene_id: str, image: Path, scene: list[Shape], rng: random.Random) -> list[Sample]:
    """The grounding, describe and grounded-caption samples of one scene."""
    picture = ImagePart(image)

    def sample(kind: str, question: str, answer: str, **meta: object) -> Sample:
        messages = (Message("user", (picture, TextPart(question))), Message("assistant", (TextPart(answer),)))
        task = "vqa" if kind == "describe" else kind
        return Sample(f"{scene_id}-{kind}-{len(out)}", messages, {"task": task, "question_type": kind,
                                                                  "scene": scene_id, **meta})  # fmt: skip

    out: list[Sample] = []
    for s in scene:
        phrase = referring_phrase(s, scene, rng)
        if phrase is not None:
            answer = format_box(normalise(s.box, SIDE, SIDE), phrase)
            out.append(sample("grounding", f"Give the box of {phrase}.", answer, phrase=phrase))
    target = rng.choice(scene)
    described = f"a {target.words(('size', 'color', 'shape'))}"
    out.append(sample("describe", f"What is in {_box_text(target)}?", described))
    ordered = sorted(scene, key=lambda s: (s.box[0], s.box[1]))
    caption = format_grounding(
        Grounded(f"a {s.words(('size', 'color', 'shape'))}", (normalise(s.box, SIDE, SIDE),)) for s in ordered
    )
    out.append(sample("grounded_caption", "Describe the image with boxes.", caption))
    return out


def make_split(
    folder: Path, split: str, scenes: int, seed: int, advance: Callable[[int], None] = lambda n: None
) -> list[Sample]:
    """Draw ``scenes`` scenes of ``split`` (its own seed), write their PNGs under ``folder/images``."""
    rng = random.Random(f"shapes-grounding/{split}/{seed}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for k in range(scenes):
        scene = random_scene(rng)
        path = folder / "images" / f"{split}-{k:05d}.png"
        draw_scene(scene).save(path)
        samples += scene_samples(f"{split}-{k:05d}", path, scene, rng)
        advance(1)
    return samples


def export_shapes_grounding(
    out_dir: Path | str, scenes: dict[str, int] | None = None, seed: int = 0, progress: bool = True
) -> dict[str, Path]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``images/`` into ``out_dir`` (atomically; an existing
    export of the same settings is kept). Returns {split: jsonl path}."""
    scenes = dict(DEFAULT_SCENES if scenes is None else scenes)
    bad = {k: v for k, v in scenes.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise OmnifuseError(f"shapes-grounding needs at least one scene per split; got {bad}")
    out_dir = Path(out_dir)
    files = {split: out_dir / f"{split}.jsonl" for split in scenes}
    manifest = {"data": "shapes-grounding", "version": VERSION, "scenes": scenes, "seed": seed}
    if is_complete(out_dir, manifest, files.values()):
        return files

    def build(tmp: Path) -> None:
        with progress_bar("shapes-grounding", sum(scenes.values()), enabled=progress) as bar:
            for split, n in scenes.items():
                write_jsonl(make_split(tmp, split, n, seed, bar.advance), tmp / f"{split}.jsonl")

    write_export(out_dir, manifest, files.values(), build, "shapes-grounding")
    return files


def ensure_shapes_grounding(cache_root: Path | str, progress: bool = True) -> dict[str, Path]:
    """The default export in the cache (``shapes-grounding:train`` / ``:test`` in recipes)."""
    return export_shapes_grounding(
        Path(cache_root) / "data" / f"shapes-grounding-v{VERSION}", progress=progress
    )
