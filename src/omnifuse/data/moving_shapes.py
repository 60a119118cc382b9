"""moving-shapes: short synthetic clips whose questions need more than one frame (and some, the sound).

Each clip (64×64 px, 10–14 frames at 6 fps, MP4 written with PyAV) is one of four scenes:

* ``move`` — a shape moves left, right, up or down: "which way does the circle move?" (``direction``),
  and the static control "what shape moves?" (``shape``, answerable from any one frame);
* ``recolour`` — a shape changes colour part-way: "what colour is the square at the end?"
  (``colour_end``) and "... at the start?" (``colour_start``);
* ``sequence`` — two shapes appear one after another (the second within the first half, so the middle
  frame shows both): "which shape appears first?" (``order_first``) and "... last?" (``order_last``);
* ``narrated`` — two shapes of different colours move different ways while an espeak-ng voice says
  "look at the <colour> one": "what colour does the voice say?" (``audio_colour``, the sound alone) and
  "which way does the shape the voice names move?" (``audio_direction``, sound and motion).

The test split uses other speeds, sizes, starting positions and voices than training. Beside
``test.jsonl`` the export writes the two ablations of the same questions: ``test-single.jsonl`` (every
clip replaced by its middle frame held for the clip's length, sound kept: the single-frame baseline)
and ``test-noaudio.jsonl`` (the narrated clips without their sound track). ``train-captions.jsonl`` and
``test-captions.jsonl`` hold one caption per clip ("describe the clip." → "the square appears first and the
circle appears last") naming everything the clip's questions ask: a pre-training stage for a temporal
connector, as Video-LLaMA pre-trains its video Q-Former on captioned clips.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from omnifuse.audio.io import SAMPLE_RATE, load_audio
from omnifuse.audio.tts import INSTALL_HINT, espeak_available, synthesize
from omnifuse.data.export import is_complete, write_export
from omnifuse.data.jsonl import write_jsonl
from omnifuse.data.sample import Message, Sample, TextPart, VideoPart
from omnifuse.errors import OmnifuseError
from omnifuse.progress import progress_bar
from omnifuse.video import write_video

FORMAT_VERSION = 2  # 2: the caption files
CAPTION_PROMPT = "describe the clip."
SIZE, FPS = 64, 6
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 230), "yellow": (235, 210, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SCENES = ("move", "recolour", "sequence", "narrated")
TRAIN_VOICES = ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb+f4")
TEST_VOICES = ("en-us+f3", "en-gb+m2")
DEFAULT_CLIPS = {"train": 600, "test": 160}
BACKGROUND = (235, 235, 235)
# What differs between the splits: speed (px per frame), size (radius px), the band of starting positions.
SPLIT_RANGES = {
    "train": {"speed": [(2.0, 2.8)], "radius": [(6, 8)], "band": [(0.3, 0.7)]},
    "test": {
        "speed": [(1.4, 1.8), (3.0, 3.4)],
        "radius": [(4, 5), (9, 9)],
        "band": [(0.12, 0.3), (0.7, 0.88)],
    },
}


@dataclass
class Sprite:
    shape: str
    colour: str
    x: float
    y: float
    radius: int
    dx: float = 0.0
    dy: float = 0.0
    appear: int = 0  # first frame it is shown
    recolour: tuple[int, str] | None = None  # (frame, new colour)

    def colour_at(self, frame: int) -> str:
        if self.recolour is not None and frame >= self.recolour[0]:
            return self.recolour[1]
        return self.colour


@dataclass
class Scene:
    kind: str
    frames: int
    sprites: list[Sprite]
    questions: list[tuple[str, str, str]]  # (question_type, question, answer)
    caption: str  # everything the questions ask, in one sentence
    narration: str | None = None
    meta: dict = field(default_factory=dict)


def _draw(sprite: Sprite, draw: ImageDraw.ImageDraw, frame: int) -> None:
    x, y, r = sprite.x + sprite.dx * frame, sprite.y + sprite.dy * frame, sprite.radius
    fill = COLOURS[sprite.colour_at(frame)]
    box = (x - r, y - r, x + r, y + r)
    if sprite.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif sprite.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)


def render(scene: Scene) -> np.ndarray:
    """The scene's frames, ``[N, 64, 64, 3]`` uint8."""
    out = np.empty((scene.frames, SIZE, SIZE, 3), dtype=np.uint8)
    for f in range(scene.frames):
        img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
        draw = ImageDraw.Draw(img)
        for sprite in scene.sprites:
            if f >= sprite.appear:
                _draw(sprite, draw, f)
        out[f] = np.asarray(img)
    return out


def _pick(rng: random.Random, ranges: list[tuple[float, float]]) -> float:
    lo, hi = rng.choice(ranges)
    return rng.uniform(lo, hi)


def _mover(rng: random.Random, split: str, frames: int, direction: str, shape: str, colour: str) -> Sprite:
    """A sprite that moves ``direction`` and stays inside the frame; its cross position lies in the split's band."""
    ranges = SPLIT_RANGES[split]
    radius = int(round(_pick(rng, ranges["radius"])))
    speed = _pick(rng, ranges["speed"])
    travel = speed * (frames - 1)
    ux, uy = DIRECTIONS[direction]
    room = SIZE - 2 * radius - 2 - travel
    along = radius + 1 + rng.uniform(0, max(room, 0)) + (travel if (ux or uy) < 0 else 0)
    cross = min(max(_pick(rng, ranges["band"]) * SIZE, radius + 1), SIZE - radius - 1)
    x, y = (along, cross) if ux else (cross, along)
    return Sprite(shape, colour, x, y, radius, dx=ux * speed, dy=uy * speed)


def _static(rng: random.Random, split: str, shape: str, colour: str, avoid: Sprite | None = None) -> Sprite:
    ranges = SPLIT_RANGES[split]
    radius = int(round(_pick(rng, ranges["radius"])))
    for _ in range(100):
        x = min(max(_pick(rng, ranges["band"]) * SIZE, radius + 1), SIZE - radius - 1)
        y = rng.uniform(radius + 1, SIZE - radius - 1)
        if rng.random() < 0.5:
            x, y = y, x
        if avoid is None or abs(x - avoid.x) + abs(y - avoid.y) > 2 * (radius + avoid.radius):
            break
    return Sprite(shape, colour, x, y, radius)


def make_scene(kind: str, split: str, rng: random.Random) -> Scene:
    frames = rng.randint(10, 14)
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    if kind == "move":
        direction = rng.choice(list(DIRECTIONS))
        questions = [
            ("direction", f"which way does the {shape} move?", direction),
            ("shape", "what shape moves?", shape),
        ]
        sprite = _mover(rng, split, frames, direction, shape, colour)
        return Scene(kind, frames, [sprite], questions, f"the {colour} {shape} moves {direction}")
    if kind == "recolour":
        after = rng.choice([c for c in COLOURS if c != colour])
        sprite = _static(rng, split, shape, colour)
        sprite.recolour = (rng.randint(int(0.3 * frames), int(0.7 * frames)), after)
        questions = [
            ("colour_end", f"what colour is the {shape} at the end?", after),
            ("colour_start", f"what colour is the {shape} at the start?", colour),
        ]
        caption = f"the {shape} is {colour} at the start and {after} at the end"
        return Scene(kind, frames, [sprite], questions, caption)
    if kind == "sequence":
        first, last = rng.sample(SHAPES, 2)
        a = _static(rng, split, first, colour)
        b = _static(rng, split, last, rng.choice(list(COLOURS)), avoid=a)
        b.appear = rng.randint(max(2, int(0.15 * frames)), int(0.45 * frames))
        questions = [
            ("order_first", "which shape appears first?", first),
            ("order_last", "which shape appears last?", last),
        ]
        return Scene(
            kind, frames, [a, b], questions, f"the {first} appears first and the {last} appears last"
        )
    return _narrated(split, rng, frames)


def _narrated(split: str, rng: random.Random, frames: int) -> Scene:
    named, other = rng.sample(list(COLOURS), 2)
    d_named, d_other = rng.sample(list(DIRECTIONS), 2)
    sprites = [
        _mover(rng, split, frames, d_named, rng.choice(SHAPES), named),
        _mover(rng, split, frames, d_other, rng.choice(SHAPES), other),
    ]
    moves = " and ".join(
        f"the {s.colour} {s.shape} moves {d}" for s, d in zip(sprites, (d_named, d_other), strict=True)
    )
    caption = f"the voice says {named}; {moves}"
    rng.shuffle(sprites)
    questions = [
        ("audio_colour", "what colour does the voice say?", named),
        ("audio_direction", "which way does the shape the voice names move?", d_named),
    ]
    return Scene("narrated", frames, sprites, questions, caption, narration=f"look at the {named} one")


def _middle_held(frames: np.ndarray) -> np.ndarray:
    return np.repeat(frames[len(frames) // 2][None], len(frames), axis=0)


def _clip_files(root: Path, split: str, name: str, scene: Scene, audio, voice) -> dict[str, Path]:
    """Write the clip and its ablations; returns {variant: path} for test.jsonl, -single, -noaudio."""
    frames = render(scene)
    paths = {"": root / "clips" / split / f"{name}.mp4"}
    write_video(paths[""], frames, FPS, audio=audio)
    if split == "test":
        paths["-single"] = root / "clips" / "test-single" / f"{name}.mp4"
        write_video(paths["-single"], _middle_held(frames), FPS, audio=audio)
        paths["-noaudio"] = paths[""]
        if audio is not None:
            paths["-noaudio"] = root / "clips" / "test-noaudio" / f"{name}.mp4"
            write_video(paths["-noaudio"], frames, FPS)
    return paths


def _speak(text: str, voice: str, cache: dict) -> np.ndarray:
    if (text, voice) not in cache:
        wave = load_audio(synthesize(text, voice=voice), SAMPLE_RATE)
        cache[text, voice] = 0.5 * wave / max(float(np.abs(wave).max()), 1e-6)
    return cache[text, voice]


def _build(root: Path, clips: dict[str, int], seed: int, progress: bool) -> None:
    speech: dict = {}
    for split, n in clips.items():
        rng = random.Random(f"{seed}:{split}")
        voices = TRAIN_VOICES if split == "train" else TEST_VOICES
        variants: dict[str, list[Sample]] = {}
        for d in (
            "clips/" + split,
            *(("clips/test-single", "clips/test-noaudio") if split == "test" else ()),
        ):
            (root / d).mkdir(parents=True, exist_ok=True)
        with progress_bar(f"moving-shapes: {split}", total=n, enabled=progress) as bar:
            for i in range(n):
                scene = make_scene(SCENES[i % len(SCENES)], split, rng)
                voice = rng.choice(voices) if scene.narration else None
                audio = _speak(scene.narration, voice, speech) if scene.narration else None
                name = f"{split}-{i:05d}"
                paths = _clip_files(root, split, name, scene, audio, voice)
                for variant, path in paths.items():
                    for qtype, question, answer in scene.questions:
                        meta = {
                            "question_type": qtype,
                            "scene": scene.kind,
                            "frames": scene.frames,
                            "fps": FPS,
                        }
                        if voice:
                            meta.update(voice=voice, narration=scene.narration)
                        messages = (
                            Message("user", (VideoPart(path), TextPart(question))),
                            Message("assistant", (TextPart(answer),)),
                        )
                        variants.setdefault(variant, []).append(Sample(f"{name}-{qtype}", messages, meta))
                variants.setdefault("-captions", []).append(_caption_sample(name, paths[""], scene))
                bar.advance()
        for variant, samples in variants.items():
            write_jsonl(samples, root / f"{split}{variant}.jsonl")


def _caption_sample(name: str, path: Path, scene: Scene) -> Sample:
    messages = (
        Message("user", (VideoPart(path), TextPart(CAPTION_PROMPT))),
        Message("assistant", (TextPart(scene.caption),)),
    )
    meta = {"question_type": "caption", "scene": scene.kind, "frames": scene.frames, "fps": FPS}
    return Sample(f"{name}-caption", messages, meta)


def _files(out_dir: Path) -> dict[str, Path]:
    names = ("train", "test", "test-single", "test-noaudio", "train-captions", "test-captions")
    return {n: out_dir / f"{n}.jsonl" for n in names}


def export_moving_shapes(
    out_dir: Path | str, clips: dict[str, int] | None = None, seed: int = 0, progress: bool = True
) -> dict[str, Path]:
    """Write the clips and ``train.jsonl``, ``test.jsonl``, ``test-single.jsonl``, ``test-noaudio.jsonl``,
    ``train-captions.jsonl``, ``test-captions.jsonl`` under ``out_dir`` (each clip gives two questions and
    a caption). Returns at once when a matching export exists."""
    out_dir = Path(out_dir)
    clips = {**DEFAULT_CLIPS, **(clips or {})}
    for split, n in clips.items():
        if split not in DEFAULT_CLIPS or n < len(SCENES):
            raise OmnifuseError(
                f"moving-shapes needs at least {len(SCENES)} {split} clips (one per scene), got {n}"
            )
    files = _files(out_dir)
    manifest = {"format": FORMAT_VERSION, "seed": seed, "clips": clips, "fps": FPS, "size": SIZE}
    if is_complete(out_dir, manifest, files.values()):
        return files
    if not espeak_available():
        raise OmnifuseError(
            f"moving-shapes speaks its narration with espeak-ng, which is not installed; {INSTALL_HINT}"
        )
    write_export(
        out_dir, manifest, files.values(), lambda tmp: _build(tmp, clips, seed, progress), "moving-shapes"
    )
    return files


def ensure_moving_shapes(cache_root: Path | str, progress: bool = True) -> dict[str, Path]:
    """The default moving-shapes export in the asset cache (``cache_root/data/moving-shapes``): the
    built-in data set ``moving-shapes:train|test|test-single|test-noaudio|train-captions|test-captions``."""
    return export_moving_shapes(Path(cache_root) / "data" / "moving-shapes", progress=progress)
