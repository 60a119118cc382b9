"""Convert LLaVA and ShareGPT conversation data into native samples.

Both formats write images as ``<image>`` markers inside turn text. The marker becomes an image part
at that position, so a model sees the image where the author placed it. Converted image paths are
absolute; :func:`~omnifuse.data.jsonl.write_jsonl` makes those inside the output folder relative.
Every problem in a file is reported at once, each naming its entry (list index or JSONL line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omnifuse.data.coco_captions import from_coco_captions
from omnifuse.data.entries import json_entries
from omnifuse.data.jsonl import InvalidField, problem_list, sample_from_json, write_jsonl
from omnifuse.data.openai_convert import MEDIA_FOLDER, from_openai
from omnifuse.data.refcoco import from_refcoco
from omnifuse.data.sample import Sample, normabs
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import MAX_DATA_BYTES, check_out_file, parse_json, read_text

IMAGE_MARKER = "<image>"
ROLE_NAMES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
LLAVA_ROLES = ("human", "gpt")


def _read_json(path: Path, what: str, text: str | None = None) -> Any:
    """The file as strict JSON: size, encoding (UTF-8, or UTF-16/32 with a byte-order mark), nesting and
    syntax problems become an OmnifuseError naming the file."""
    if text is None:
        text = read_text(path, f"{what} file", MAX_DATA_BYTES)
    try:
        return parse_json(text, f"{what} file {path}")
    except OmnifuseError as exc:
        raise OmnifuseError(f"{exc}; {what} data is one JSON list of conversation entries.") from None


def _image_root(src: Path, image_folder: Path | str | None) -> Path:
    if image_folder is None:
        return normabs(src.parent)
    root = Path(image_folder)
    if not root.is_dir():
        raise OmnifuseError(
            f"image folder {root} does not exist or is not a folder; pass the folder holding the images."
        )
    return normabs(root)


def _split_markers(text: str) -> list[str | None]:
    """Text pieces and image markers (``None``) in order; whitespace around markers is dropped."""
    pieces: list[str | None] = []
    for i, chunk in enumerate(text.split(IMAGE_MARKER)):
        if i:
            pieces.append(None)
        chunk = chunk.strip()
        if chunk:
            pieces.append(chunk)
    return pieces


def _messages(
    turns: Any,
    images: Sequence[Path],
    allowed_roles: Sequence[str],
    prepend_unmarked: bool,
) -> list[dict[str, Any]]:
    """Native message dicts from ``[{"from", "value"}]`` turns, with markers matched to ``images``."""
    if not isinstance(turns, list) or not turns:
        raise InvalidField("conversations", "must be a non-empty list of turns")
    roles: list[str] = []
    texts: list[str] = []
    for j, turn in enumerate(turns):
        at = f"conversations[{j}]"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise InvalidField(at, 'must be an object with "from" and "value"')
        if turn["from"] not in allowed_roles:
            raise InvalidField(f"{at}.from", f"{turn['from']!r} is not one of {', '.join(allowed_roles)}")
        if not isinstance(turn["value"], str):
            raise InvalidField(f"{at}.value", "must be a string")
        roles.append(ROLE_NAMES[turn["from"]])
        texts.append(turn["value"])

    markers = sum(t.count(IMAGE_MARKER) for t in texts)
    if prepend_unmarked and images and markers == 0:
        # LLaVA's own preprocessing puts an unmarked image before the first human turn's text.
        if "user" not in roles:
            raise InvalidField("conversations", "has an image but no human turn to attach it to")
        first_user = roles.index("user")
        texts[first_user] = f"{IMAGE_MARKER}\n{texts[first_user]}"
        markers = 1
    if markers != len(images):
        raise InvalidField(
            "conversations",
            f"has {markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s); they must match one to one",
        )

    remaining = iter(images)
    messages = []
    for role, text in zip(roles, texts, strict=True):
        content = [
            {"type": "text", "text": piece}
            if piece is not None
            else {"type": "image", "image": str(next(remaining))}
            for piece in _split_markers(text)
        ]
        messages.append({"role": role, "content": content or [{"type": "text", "text": ""}]})
    return messages


def _entry_images(value: Any, key: str, root: Path) -> list[Path]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise InvalidField(key, "must be an image path or a list of image paths")
    return [normabs(root / n) for n in names]


def _unique_id(raw: Any, fallback: str, taken: set[str]) -> str:
    """The entry's id, or ``fallback``; repeats get ``#2``, ``#3``... (public LLaVA mixes repeat ids)."""
    base = fallback if raw is None or raw == "" else str(raw)
    sample_id, k = base, 1
    while sample_id in taken:
        k += 1
        sample_id = f"{base}#{k}"
    taken.add(sample_id)
    return sample_id


def _convert_entries(
    src: Path,
    entries: list[tuple[str, Any]],
    build: Callable[[dict[str, Any]], tuple[list[Path], list[dict[str, Any]]]],
    fallback_id: Callable[[int], str],
    what: str,
) -> list[Sample]:
    samples: list[Sample] = []
    malformed: list[str] = []
    missing: list[str] = []
    taken: set[str] = set()
    exists: dict[Path, bool] = {}
    for index, (where, entry) in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise InvalidField("", "an entry must be a JSON object")
            images, messages = build(entry)
            raw_id = entry.get("id")
            if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
                raise InvalidField("id", "must be a string or an integer")
            obj = {"id": _unique_id(raw_id, fallback_id(index), taken), "messages": messages}
            sample = sample_from_json(obj, src.parent)
        except InvalidField as exc:
            malformed.append(f"{where}: {exc}")
            continue
        for image in images:
            if image not in exists:
                exists[image] = image.is_file()
            if not exists[image]:
                missing.append(f"{where}: {image}")
        samples.append(sample)

    sections = []
    if malformed:
        noun = "entry" if len(malformed) == 1 else "entries"
        sections.append(f"{len(malformed)} invalid {noun}:\n{problem_list(malformed)}")
    if missing:
        sections.append(f"{len(missing)} missing image(s):\n{problem_list(missing)}")
    if sections:
        raise OmnifuseError(
            f"cannot convert {src} from {what}: it has "
            + "\nand ".join(sections)
            + "\nFix those entries, or pass the image folder the image paths are relative to."
        )
    if not samples:
        raise OmnifuseError(f"{src} has no entries; there is nothing to convert.")
    return samples


def from_llava_json(path: Path | str, image_folder: Path | str | None = None) -> list[Sample]:
    """Convert LLaVA instruction data (one JSON list of ``{"id", "image"?, "conversations"}``).

    ``image`` is relative to ``image_folder`` (default: the JSON file's folder). An entry with an
    image but no ``<image>`` marker gets it prepended to the first human turn, as LLaVA does.
    """
    src = Path(path)
    data = _read_json(src, "LLaVA")
    if not isinstance(data, list):
        raise OmnifuseError(
            f"{src} holds a JSON {type(data).__name__}, but LLaVA data is one JSON list of entries."
        )
    root = _image_root(src, image_folder)

    def build(entry: dict[str, Any]) -> tuple[list[Path], list[dict[str, Any]]]:
        if "conversations" not in entry:
            raise InvalidField("", "missing key 'conversations'")
        images = _entry_images(entry["image"], "image", root) if entry.get("image") is not None else []
        return images, _messages(entry["conversations"], images, LLAVA_ROLES, prepend_unmarked=True)

    entries = [(f"{src.name} entry {i}", e) for i, e in enumerate(data)]
    return _convert_entries(src, entries, build, lambda i: f"{src.stem}-{i}", "LLaVA format")


def from_sharegpt(path: Path | str, image_folder: Path | str | None = None) -> list[Sample]:
    """Convert ShareGPT data (a JSON list, or JSONL) of ``{"id"?, "conversations", "images"?, "system"?}``.

    ``<image>`` markers are matched to ``images`` in order (relative to ``image_folder``, default
    the file's folder); a count mismatch is an error. A top-level ``system`` string becomes the
    first turn.
    """
    src = Path(path)
    text = read_text(src, "ShareGPT file", MAX_DATA_BYTES)
    root = _image_root(src, image_folder)
    entries = json_entries(src, text, lambda t: _read_json(src, "ShareGPT", t))
    roles = tuple(ROLE_NAMES)

    def build(entry: dict[str, Any]) -> tuple[list[Path], list[dict[str, Any]]]:
        if "conversations" not in entry:
            raise InvalidField("", "missing key 'conversations'")
        images = _entry_images(entry["images"], "images", root) if entry.get("images") is not None else []
        messages = _messages(entry["conversations"], images, roles, prepend_unmarked=False)
        system = entry.get("system")
        if system is not None:
            if not isinstance(system, str):
                raise InvalidField("system", "must be a string")
            if system and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
        return images, messages

    return _convert_entries(src, entries, build, lambda i: f"{src.stem}-{i}", "ShareGPT format")


CONVERTERS: dict[str, Callable[..., list[Sample]]] = {
    "llava": from_llava_json,
    "sharegpt": from_sharegpt,
    "coco-captions": from_coco_captions,  # omnifuse.data.coco_captions
    "refcoco": from_refcoco,  # referring expressions → Qwen-VL box answers (data/refcoco.py)
}
# Formats that carry media inside the data: the decoded media are written to MEDIA_FOLDER beside the output.
MEDIA_CONVERTERS: dict[str, Callable[..., list[Sample]]] = {"openai": from_openai}


def convert(kind: str, src: Path | str, out: Path | str, image_folder: Path | str | None = None) -> int:
    """Convert ``src`` of format ``kind`` ('llava', 'sharegpt' or 'openai'), write native JSONL to ``out``.

    Returns the number of samples written (what the ``data convert`` CLI verb reports).
    """
    if kind not in CONVERTERS and kind not in MEDIA_CONVERTERS:
        known = ", ".join([*CONVERTERS, *MEDIA_CONVERTERS])
        raise OmnifuseError(f"unknown data format {kind!r}; use one of {known}.")
    check_out_file(out)  # before the conversion: a bad --out fails at once
    if kind in MEDIA_CONVERTERS:
        samples = MEDIA_CONVERTERS[kind](src, image_folder, Path(out).parent / MEDIA_FOLDER)
    else:
        samples = CONVERTERS[kind](src, image_folder)
    write_jsonl(samples, out)
    return len(samples)
