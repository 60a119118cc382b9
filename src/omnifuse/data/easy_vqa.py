"""Export the easy-vqa data set (packaged with pip) into the native format.

easy-vqa is small (5,000 images of coloured shapes, 48,248 questions) and ships inside the
``easy-vqa`` wheel, so the demo and tests need no download. The export is done once: a
``.complete`` marker records what was written, and a rebuild happens only when it does not match.
It is built in a temporary sibling folder and renamed into place, so an interrupted export never
leaves a half-written data set that looks complete.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from easy_vqa import (
    get_answers,
    get_test_image_paths,
    get_test_questions,
    get_train_image_paths,
    get_train_questions,
)
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from omnifuse.data.export import is_complete, write_export
from omnifuse.data.jsonl import write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError

SPLITS = ("train", "test")
FORMAT_VERSION = 1  # bump when the exported layout or sample shape changes, to force a rebuild
YES_NO = frozenset({"yes", "no"})
SHAPES = frozenset({"circle", "rectangle", "triangle"})

_SOURCES = {
    "train": (get_train_questions, get_train_image_paths),
    "test": (get_test_questions, get_test_image_paths),
}


@dataclass(frozen=True)
class _Split:
    name: str
    images: dict[int, Path]  # image id -> packaged PNG
    questions: list[tuple[int, str, str, int]]  # (question index, text, answer, image id)


def _question_types() -> dict[str, str]:
    """Answer -> question type, from easy-vqa's own answer list (every other answer is a colour)."""
    answers = set(get_answers())
    if not (YES_NO <= answers and SHAPES <= answers):
        raise OmnifuseError(
            "the installed easy-vqa package has an unexpected answer list; reinstall it with "
            "`pip install --force-reinstall easy-vqa==1.0`."
        )
    types = {a: "color" for a in answers - YES_NO - SHAPES}
    types.update({a: "yes/no" for a in YES_NO})
    types.update({a: "shape" for a in SHAPES})
    return types


def _plan(name: str, limit_images: int | None) -> _Split:
    get_questions, get_image_paths = _SOURCES[name]
    paths = get_image_paths()
    keep = sorted(paths)[:limit_images] if limit_images is not None else sorted(paths)
    images = {i: Path(paths[i]) for i in keep}
    texts, answers, image_ids = get_questions()
    questions = [
        (index, text, answer, image_id)
        for index, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids, strict=True))
        if image_id in images
    ]
    return _Split(name, images, questions)


def _manifest(splits: dict[str, _Split], limit_images: int | None) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "limit_images": limit_images,
        "counts": {s.name: {"images": len(s.images), "questions": len(s.questions)} for s in splits.values()},
    }


def _build(root: Path, splits: dict[str, _Split], progress: bool) -> None:
    types = _question_types()
    total = sum(len(s.images) for s in splits.values())
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("easy-vqa: copying images", total=total)
        for split in splits.values():
            image_dir = root / "images" / split.name
            image_dir.mkdir(parents=True)
            copied: dict[int, Path] = {}
            for image_id, source in split.images.items():
                copied[image_id] = shutil.copyfile(source, image_dir / f"{image_id}.png")
                bar.advance(task)
            samples = []
            for index, text, answer, image_id in split.questions:
                if answer not in types:
                    raise OmnifuseError(
                        f"easy-vqa {split.name} question {index} has answer {answer!r}, which is not in the "
                        "package's answer list; reinstall it with `pip install --force-reinstall easy-vqa==1.0`."
                    )
                messages = (
                    Message("user", (ImagePart(copied[image_id]), TextPart(text))),
                    Message("assistant", (TextPart(answer),)),
                )
                meta = {"question_type": types[answer], "image_id": image_id}
                samples.append(Sample(f"{split.name}-{index}", messages, meta))
            write_jsonl(samples, root / f"{split.name}.jsonl")


def export_easy_vqa(
    out_dir: Path | str, progress: bool = True, limit_images: int | None = None
) -> dict[str, Path]:
    """Write ``train.jsonl``/``test.jsonl`` and ``images/{train,test}/*.png`` under ``out_dir``.

    Returns ``{"train": path, "test": path}``. Returns at once when a matching export exists.
    ``limit_images`` keeps only the first N images of each split and their questions (for tests);
    sample ids keep the question's index in the full split, so they are stable across limits.
    """
    out_dir = Path(out_dir)
    if limit_images is not None and limit_images < 1:
        raise OmnifuseError(f"limit_images must be at least 1 (or None for all images), got {limit_images}.")
    files = {s: out_dir / f"{s}.jsonl" for s in SPLITS}
    splits = {s: _plan(s, limit_images) for s in SPLITS}
    manifest = _manifest(splits, limit_images)
    if not is_complete(out_dir, manifest, files.values()):
        write_export(out_dir, manifest, files.values(), lambda tmp: _build(tmp, splits, progress), "easy-vqa")
    return files


def ensure_easy_vqa(cache_root: Path | str, progress: bool = True) -> dict[str, Path]:
    """The easy-vqa export in the asset cache (``cache_root/data/easy-vqa``), made on first use."""
    return export_easy_vqa(Path(cache_root) / "data" / "easy-vqa", progress=progress)
