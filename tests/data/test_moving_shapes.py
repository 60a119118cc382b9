"""moving-shapes: clips whose answers need several frames, the held-out split, the two ablations."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from omnifuse.audio.tts import espeak_available
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.moving_shapes import SPLIT_RANGES, make_scene, render
from omnifuse.video import Sampling, load_audio_track, load_video

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


def _centre(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero((np.abs(frame.astype(int) - 235).sum(-1)) > 60)
    return float(xs.mean()), float(ys.mean())


def test_a_moving_shape_moves_the_way_the_answer_says():
    import random

    rng = random.Random(0)
    for split in ("train", "test"):
        for _ in range(8):
            scene = make_scene("move", split, rng)
            frames = render(scene)
            (x0, y0), (x1, y1) = _centre(frames[0]), _centre(frames[-1])
            way = next(a for t, _, a in scene.questions if t == "direction")
            moved = {"right": x1 - x0, "left": x0 - x1, "down": y1 - y0, "up": y0 - y1}[way]
            assert moved > 10, (split, way, moved)
            assert frames.min() >= 0 and frames.shape[1:] == (64, 64, 3)
    train_speeds, test_speeds = SPLIT_RANGES["train"]["speed"], SPLIT_RANGES["test"]["speed"]
    assert not any(lo <= a <= hi for a, _ in test_speeds for lo, hi in train_speeds)


def test_a_caption_states_every_answer_of_its_clip_in_the_right_place():
    rng = random.Random(1)
    for kind in ("move", "recolour", "sequence", "narrated") * 6:
        scene = make_scene(kind, "train", rng)
        answers = {t: a for t, _, a in scene.questions}
        assert all(f" {a}" in f" {scene.caption}" for a in answers.values()), (scene.caption, answers)
        if kind == "sequence":  # the word order of the caption is the order of appearance
            assert (
                scene.caption
                == f"the {answers['order_first']} appears first and the {answers['order_last']} appears last"
            )
        if kind == "recolour":
            assert scene.caption.endswith(
                f"{answers['colour_start']} at the start and {answers['colour_end']} at the end"
            )
        if kind == "narrated":  # the named colour's shape moves the way the audio_direction answer says
            named = next(s for s in scene.sprites if s.colour == answers["audio_colour"])
            assert f"the {named.colour} {named.shape} moves {answers['audio_direction']}" in scene.caption


@needs_espeak
def test_export_writes_questions_clips_and_ablations(tmp_path):
    from omnifuse.data.moving_shapes import export_moving_shapes

    files = export_moving_shapes(tmp_path / "ms", {"train": 4, "test": 4}, progress=False)
    train, test = load_jsonl(files["train"]), load_jsonl(files["test"])
    single, noaudio = load_jsonl(files["test-single"]), load_jsonl(files["test-noaudio"])
    assert len(train) == len(test) == len(single) == len(noaudio) == 8  # two questions per clip
    assert [s.id for s in test] == [s.id for s in single] == [s.id for s in noaudio]
    assert Counter(s.meta["scene"] for s in test) == {"move": 2, "recolour": 2, "sequence": 2, "narrated": 2}
    by_id = {s.id: s for s in test}
    narrated = next(s for s in test if s.meta["scene"] == "narrated")
    assert load_audio_track(narrated.videos()[0].path) is not None
    assert load_audio_track({s.id: s for s in noaudio}[narrated.id].videos()[0].path) is None
    mover = next(s for s in single if s.meta["question_type"] == "direction")
    held = load_video(mover.videos()[0].path, Sampling(uniform=None, fps=6))
    assert all(np.abs(f.astype(int) - held.frames[0]).max() <= 8 for f in held.frames)  # one frame, held
    moving = load_video(by_id[mover.id].videos()[0].path, Sampling(uniform=None, fps=6))
    assert np.abs(moving.frames[0].astype(int) - moving.frames[-1]).max() > 100
    captions = load_jsonl(files["test-captions"])  # one per clip, the clip of its questions
    assert [c.id.removesuffix("-caption") for c in captions] == sorted({s.id.rsplit("-", 1)[0] for s in test})
    assert captions[0].videos()[0].path == test[0].videos()[0].path
    assert len(load_jsonl(files["train-captions"])) == 4
    again = export_moving_shapes(tmp_path / "ms", {"train": 4, "test": 4}, progress=False)
    assert again == files  # a finished export is kept
