"""Convert RefCOCO / RefCOCO+ / RefCOCOg-style referring-expression data into native grounding samples.

Two shapes of JSON are read (``omnifuse data convert refcoco FILE --out OUT.jsonl [--images DIR]``):

* **refer's layout** — one object with ``images`` (``id``, ``file_name``, ``width``, ``height``),
  ``annotations`` (``id``, ``image_id``, ``bbox`` as COCO's ``[x, y, width, height]``) and ``refs``
  (``ref_id``, ``ann_id``, ``image_id``, ``sentences: [{"sent": ...}]``, ``split``), i.e. refer's
  ``refs(unc).p`` joined with ``instances.json`` and saved as JSON;
* **flat entries** — a JSON list (or JSONL) of ``{"image" or "file_name", "bbox": [x, y, w, h]`` (or
  ``"bbox_xyxy": [x1, y1, x2, y2]``), ``"sent"`` / ``"sentence"`` / ``"expression"`` or ``"sentences"``,
  optional ``"width"``, ``"height"``, ``"id"`` / ``"ref_id"``, ``"split"}`` — the form of most exported
  copies and of Qwen-VL's own evaluation files.

Each expression becomes one sample (RefCOCO scores every expression on its own): the user turn is the
image and "Give the box of <expression>.", the answer ``<ref>expression</ref><box>(x1,y1),(x2,y2)</box>``
with the box normalised to [0, 1000) of the image (Qwen-VL's form), and ``meta`` holds ``task:
grounding`` (so ``omnifuse eval`` scores Acc@0.5 and mean IoU), ``question_type: grounding``, the
``split`` and ``ref_id``. Image sizes come from the entry or the images table, else from the image file's
header. Every problem in a file is reported at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from omnifuse.data.boxes import PixelBox, format_box, normalise, xywh_to_pixels
from omnifuse.data.jsonl import InvalidField, json_line, problem_list, sample_from_json
from omnifuse.data.sample import Sample, normabs
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import MAX_DATA_BYTES, parse_json, read_text

PROMPT = "Give the box of {}."
_SENTENCE_KEYS = ("sent", "sentence", "expression", "sentences")


def _number_list(value: Any, key: str) -> list[float]:
    ok = isinstance(value, list) and len(value) == 4
    ok = ok and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok:
        raise InvalidField(key, f"must be a list of 4 numbers, got {value!r}")
    return [float(v) for v in value]


def _pixel_box(entry: dict[str, Any]) -> PixelBox:
    if "bbox_xyxy" in entry:
        box = tuple(_number_list(entry["bbox_xyxy"], "bbox_xyxy"))
    elif "bbox" in entry:
        box = xywh_to_pixels(_number_list(entry["bbox"], "bbox"))
    else:
        raise InvalidField("", "missing key 'bbox' ([x, y, width, height]) or 'bbox_xyxy'")
    if not (box[2] > box[0] and box[3] > box[1]):
        raise InvalidField("bbox", f"has no area: {list(box)}")
    return box  # type: ignore[return-value]


def _sentences(entry: dict[str, Any]) -> list[str]:
    for key in _SENTENCE_KEYS:
        if key in entry:
            value = entry[key]
            items = value if isinstance(value, list) else [value]
            out = [s.get("sent") if isinstance(s, dict) else s for s in items]
            if not out or not all(isinstance(s, str) and s.strip() for s in out):
                raise InvalidField(key, 'must be a non-empty string or a list of them (or of {"sent": ...})')
            return [s.strip() for s in out]
    raise InvalidField("", f"missing the expression: one of {', '.join(_SENTENCE_KEYS)}")


def _size(entry: dict[str, Any], image: Path) -> tuple[int, int]:
    w, h = entry.get("width"), entry.get("height")
    if isinstance(w, int) and isinstance(h, int) and not isinstance(w, bool) and w > 0 and h > 0:
        return w, h
    try:
        with Image.open(image) as im:  # the header only: no pixels are decoded
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidField(
            "image", f"{image} cannot be read for its size ({exc}); add width and height"
        ) from None


def _refer_entries(data: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """refer's images / annotations / refs joined into flat entries."""
    for key in ("images", "annotations", "refs"):
        if not isinstance(data.get(key), list):
            raise OmnifuseError(f"refer-style RefCOCO data needs a list under {key!r}")
    images = {im.get("id"): im for im in data["images"] if isinstance(im, dict)}
    anns = {a.get("id"): a for a in data["annotations"] if isinstance(a, dict)}
    for i, ref in enumerate(data["refs"]):
        where = f"refs[{i}]"
        if not isinstance(ref, dict):
            yield where, ref
            continue
        ann, image = anns.get(ref.get("ann_id")), images.get(ref.get("image_id"))
        if ann is None or image is None:
            yield (
                where,
                {"_missing": f"ann_id {ref.get('ann_id')!r} or image_id {ref.get('image_id')!r} not found"},
            )
            continue
        yield where, {
            "file_name": image.get("file_name"), "width": image.get("width"), "height": image.get("height"),
            "bbox": ann.get("bbox"), "sentences": ref.get("sentences"), "ref_id": ref.get("ref_id"),
            "split": ref.get("split"),
        }  # fmt: skip


def _entries(src: Path) -> list[tuple[str, Any]]:
    text = read_text(src, "RefCOCO file", MAX_DATA_BYTES)
    if src.suffix == ".jsonl" or not text.lstrip().startswith(("[", "{")):
        entries, bad = [], []
        for lineno, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    entries.append(
                        (f"{src.name} line {lineno}", json_line(line, f"{src.name} line {lineno}"))
                    )
                except OmnifuseError as exc:
                    bad.append(str(exc))
        if bad:
            raise OmnifuseError(f"cannot convert {src}: {len(bad)} bad line(s):\n{problem_list(bad)}")
        return entries
    data = parse_json(text, f"RefCOCO file {src}")
    if isinstance(data, dict):
        return [(f"{src.name} {w}", e) for w, e in _refer_entries(data)]
    if isinstance(data, list):
        return [(f"{src.name} entry {i}", e) for i, e in enumerate(data)]
    raise OmnifuseError(
        f"{src} holds a JSON {type(data).__name__}; RefCOCO data is a list of entries or refer's object"
    )


def _entry_samples(entry: Any, index: int, root: Path, stem: str) -> tuple[Path, list[Sample]]:
    if not isinstance(entry, dict):
        raise InvalidField("", "an entry must be a JSON object")
    if "_missing" in entry:
        raise InvalidField("", entry["_missing"])
    name = entry.get("image", entry.get("file_name"))
    if not isinstance(name, str) or not name:
        raise InvalidField(
            "image", "missing: give 'image' or 'file_name' (a path relative to the image folder)"
        )
    image = normabs(root / name)
    box, sentences = _pixel_box(entry), _sentences(entry)
    if not image.is_file():
        return image, []
    width, height = _size(entry, image)
    answer_box = normalise(box, width, height)
    ref_id = entry.get("ref_id", entry.get("id", index))
    meta = {"task": "grounding", "question_type": "grounding", "ref_id": ref_id}
    if isinstance(entry.get("split"), str):
        meta["split"] = entry["split"]
    samples = []
    for k, sent in enumerate(sentences):
        obj = {
            "id": f"{stem}-{ref_id}-{k}",
            "messages": [
                {"role": "user", "content": [{"type": "image", "image": str(image)},
                                             {"type": "text", "text": PROMPT.format(sent)}]},
                {"role": "assistant", "content": [{"type": "text", "text": format_box(answer_box, sent)}]},
            ],
            "meta": {**meta, "phrase": sent},
        }  # fmt: skip
        samples.append(sample_from_json(obj, root))
    return image, samples


def from_refcoco(path: Path | str, image_folder: Path | str | None = None) -> list[Sample]:
    """RefCOCO-style JSON → native grounding samples, one per expression (see the module's docstring)."""
    src = Path(path)
    root = normabs(Path(image_folder) if image_folder is not None else src.parent)
    if image_folder is not None and not root.is_dir():
        raise OmnifuseError(
            f"image folder {root} does not exist or is not a folder; pass the folder holding the images."
        )
    samples: list[Sample] = []
    malformed: list[str] = []
    missing: list[str] = []
    seen: set[str] = set()
    for index, (where, entry) in enumerate(_entries(src)):
        try:
            image, found = _entry_samples(entry, index, root, src.stem)
        except InvalidField as exc:
            malformed.append(f"{where}: {exc}")
            continue
        if not found:
            missing.append(f"{where}: {image}")
        for s in found:
            if s.id in seen:
                malformed.append(f"{where}: duplicate id {s.id!r} (give each entry its own ref_id)")
                continue
            seen.add(s.id)
            samples.append(s)
    sections = []
    if malformed:
        sections.append(
            f"{len(malformed)} invalid entr{'y' if len(malformed) == 1 else 'ies'}:\n{problem_list(malformed)}"
        )
    if missing:
        sections.append(f"{len(missing)} missing image(s):\n{problem_list(missing)}")
    if sections:
        raise OmnifuseError(
            f"cannot convert {src} from RefCOCO format: it has "
            + "\nand ".join(sections)
            + "\nFix those entries, or pass the image folder the image paths are relative to (--images)."
        )
    if not samples:
        raise OmnifuseError(f"{src} has no entries; there is nothing to convert.")
    return samples
