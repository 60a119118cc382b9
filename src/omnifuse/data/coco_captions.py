"""Convert COCO-captions annotation files (``captions_train2017.json``, Karpathy-split files in the same
shape) into native caption samples.

The source is one JSON object::

    {"images": [{"id": 397133, "file_name": "000000397133.jpg", ...}, ...],
     "annotations": [{"image_id": 397133, "id": 370509, "caption": "A man is in a kitchen ..."}, ...]}

Each image becomes one sample: a user turn with the image, an assistant turn with its first caption
(what a stage trains on), and ``meta`` = ``{"task": "caption", "image_id", "captions": [all of them]}``:
``meta.task`` makes ``omnifuse eval`` score it with the caption metrics (:mod:`omnifuse.eval.captioning`:
BLEU-4, CIDEr-D, ROUGE-L against every caption). ``each_caption=True`` writes one sample per caption
instead (to train on all five), each still carrying all of its image's captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnifuse.data.jsonl import problem_list
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart, normabs
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import MAX_DATA_BYTES, parse_json, read_text

FORMAT = 'COCO captions ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]})'


def _is_id(value: Any) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool) and value != ""


def _images(data: dict, src: Path, root: Path, problems: list[str]) -> dict[Any, Path]:
    images: dict[Any, Path] = {}
    for i, entry in enumerate(data["images"]):
        at = f"{src.name} images[{i}]"
        if not isinstance(entry, dict) or not _is_id(entry.get("id")):
            problems.append(f"{at}: needs an id (an integer or a string)")
        elif not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            problems.append(f"{at}: needs a file_name")
        elif entry["id"] in images:
            problems.append(f"{at}: image id {entry['id']!r} appears twice")
        else:
            images[entry["id"]] = normabs(root / entry["file_name"])
    return images


def _captions(data: dict, src: Path, images: dict, problems: list[str]) -> dict[Any, list[tuple[Any, str]]]:
    captions: dict[Any, list[tuple[Any, str]]] = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        at = f"{src.name} annotations[{i}]"
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or not ann["caption"].strip():
            problems.append(f"{at}: needs a non-empty caption string")
        elif ann.get("image_id") not in captions:
            problems.append(f"{at}: image_id {ann.get('image_id')!r} is not in images")
        else:
            captions[ann["image_id"]].append((ann.get("id", i), " ".join(ann["caption"].split())))
    return captions


def _sample(sample_id: str, image: Path, first: str, image_id: Any, all_captions: list[str]) -> Sample:
    messages = (Message("user", (ImagePart(image),)), Message("assistant", (TextPart(first),)))
    meta = {"task": "caption", "image_id": image_id, "captions": all_captions}
    return Sample(sample_id, messages, meta)


def from_coco_captions(
    path: Path | str, image_folder: Path | str | None = None, each_caption: bool = False
) -> list[Sample]:
    """Caption samples from a COCO-captions file; ``file_name`` is relative to ``image_folder`` (default:
    the JSON file's folder). Every problem (bad entries, unknown image ids, images without a caption,
    missing image files) is reported at once."""
    src = Path(path)
    data = parse_json(read_text(src, "COCO captions file", MAX_DATA_BYTES), f"COCO captions file {src}")
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations")
    ):
        raise OmnifuseError(f"{src} is not {FORMAT}: it needs the lists 'images' and 'annotations'.")
    root = normabs(src.parent if image_folder is None else Path(image_folder))
    if not root.is_dir():
        raise OmnifuseError(
            f"image folder {root} does not exist or is not a folder; pass the folder holding the images."
        )
    problems: list[str] = []
    images = _images(data, src, root, problems)
    captions = _captions(data, src, images, problems)
    problems += [f"{src.name}: image {k!r} has no caption" for k, caps in captions.items() if not caps]
    problems += [f"{src.name}: image {k!r}: no file {p}" for k, p in images.items() if not p.is_file()]
    if problems:
        raise OmnifuseError(
            f"cannot convert {src} from COCO captions: {len(problems)} problem(s):\n{problem_list(problems)}\n"
            "Fix those entries, or pass the image folder the file names are relative to (--images)."
        )
    if not images:
        raise OmnifuseError(f"{src} has no images; there is nothing to convert.")
    samples = []
    for image_id, image in images.items():
        texts = [c for _, c in captions[image_id]]
        if each_caption:
            samples += [
                _sample(f"coco-{image_id}-{ann_id}", image, text, image_id, texts)
                for ann_id, text in captions[image_id]
            ]
        else:
            samples.append(_sample(f"coco-{image_id}", image, texts[0], image_id, texts))
    return samples
