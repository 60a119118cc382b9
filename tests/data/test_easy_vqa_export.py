"""easy-vqa export on a small slice: counts, sample shape, openable images, idempotence and atomicity."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from easy_vqa import get_answers, get_train_questions
from PIL import Image

from omnifuse.data import easy_vqa as evqa
from omnifuse.data.easy_vqa import ensure_easy_vqa, export_easy_vqa
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import ImagePart, TextPart
from omnifuse.errors import OmnifuseError

LIMIT = 4


def test_export_slice(tmp_path: Path) -> None:
    out = tmp_path / "easy-vqa"
    files = export_easy_vqa(out, progress=False, limit_images=LIMIT)
    assert files == {"train": out / "train.jsonl", "test": out / "test.jsonl"}

    texts, answers, image_ids = get_train_questions()
    expected = [i for i, image_id in enumerate(image_ids) if image_id < LIMIT]
    train = load_jsonl(files["train"])
    assert [s.id for s in train] == [f"train-{i}" for i in expected]
    test = load_jsonl(files["test"])
    assert test and all(s.id.startswith("test-") for s in test)

    shapes, yes_no = {"circle", "rectangle", "triangle"}, {"yes", "no"}
    for sample, index in zip(train, expected, strict=True):
        user, assistant = sample.messages
        assert user.role == "user" and assistant.role == "assistant"
        assert isinstance(user.parts[0], ImagePart) and user.parts[1] == TextPart(texts[index])
        assert sample.answer() == answers[index]
        assert sample.meta["image_id"] == image_ids[index]
        answer = answers[index]
        kind = "yes/no" if answer in yes_no else "shape" if answer in shapes else "color"
        assert sample.meta["question_type"] == kind
        assert answer in get_answers()
        assert texts[index].endswith("?") and texts[index] == texts[index].lower()
    assert set(Counter(s.meta["question_type"] for s in train + test)) == {"yes/no", "shape", "color"}

    for split in ("train", "test"):
        pngs = sorted((out / "images" / split).iterdir())
        assert [p.name for p in pngs] == [f"{i}.png" for i in range(LIMIT)]
        for png in pngs:
            with Image.open(png) as image:
                image.load()
                assert image.size == (64, 64)
    raw = json.loads(files["train"].read_text(encoding="utf-8").split("\n")[0])
    assert raw["messages"][0]["content"][0]["image"] == "images/train/0.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["easy-vqa"]  # no temp folders left


def test_export_is_idempotent_and_rebuilds_on_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "easy-vqa"
    export_easy_vqa(out, progress=False, limit_images=2)
    stamp = (out / ".complete").stat().st_mtime_ns

    def no_copy(*args, **kwargs):
        raise AssertionError("a complete export must not be rebuilt")

    monkeypatch.setattr(evqa.shutil, "copyfile", no_copy)
    export_easy_vqa(out, progress=False, limit_images=2)
    assert (out / ".complete").stat().st_mtime_ns == stamp
    monkeypatch.undo()

    export_easy_vqa(out, progress=False, limit_images=3)  # different counts: rebuilt in place
    assert len(list((out / "images" / "train").iterdir())) == 3
    assert json.loads((out / ".complete").read_text())["limit_images"] == 3

    (out / "train.jsonl").unlink()  # damaged export: rebuilt even though the marker matches
    export_easy_vqa(out, progress=False, limit_images=3)
    assert load_jsonl(out / "train.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["easy-vqa"]


def test_interrupted_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_copyfile = shutil.copyfile

    def failing_copy(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_copyfile(src, dst)

    monkeypatch.setattr(evqa.shutil, "copyfile", failing_copy)
    with pytest.raises(OmnifuseError, match="No space left on device"):
        export_easy_vqa(tmp_path / "easy-vqa", progress=False, limit_images=2)
    assert list(tmp_path.iterdir()) == []


def test_ensure_uses_the_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_export(out_dir, progress=True, limit_images=None):
        seen.update(out_dir=out_dir, progress=progress)
        return {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl"}

    monkeypatch.setattr(evqa, "export_easy_vqa", fake_export)
    files = ensure_easy_vqa(tmp_path, progress=False)
    assert seen == {"out_dir": tmp_path / "data" / "easy-vqa", "progress": False}
    assert files["train"] == tmp_path / "data" / "easy-vqa" / "train.jsonl"


def test_bad_limit(tmp_path: Path) -> None:
    with pytest.raises(OmnifuseError, match="limit_images must be at least 1"):
        export_easy_vqa(tmp_path, progress=False, limit_images=0)
