"""The native JSONL format: one :class:`~omnifuse.data.sample.Sample` per line, strict loading and atomic writing.

One sample per JSONL line::

    {"id": "s1",
     "messages": [{"role": "user", "content": [{"type": "image", "image": "img/a.png"},
                                               {"type": "text", "text": "what color is it?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
     "meta": {"question_type": "color"}}

A spoken question is an audio part, ``{"type": "audio", "audio": "audio/q1.wav"}``, in place of (or
beside) the text. A video is ``{"type": "video", "video": "clips/a.mp4"}`` with optional ``"start"`` and
``"end"`` (seconds: the part of the file to sample frames from; docs/video.md). Relative media paths
resolve against the JSONL file's folder, so a data folder can be moved as a whole. Loading is strict and reports *every* bad line at once: a data set with a problem on line
30,000 should fail in a second with the full list, not after an hour of training.
"""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omnifuse.atomic import atomic_write
from omnifuse.data.sample import (
    MEDIA_PARTS,
    ROLES,
    Message,
    Part,
    Sample,
    TextPart,
    VideoPart,
    normabs,
)
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import MAX_DATA_BYTES, decode_text, read_bytes

MAX_LISTED = 10  # problems listed in one error; the rest are counted

# Characters that str.splitlines() treats as line breaks but JSON leaves raw: escaping them keeps
# one sample per line for every reader, not only ones that split on "\n".
_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}

_FORMAT_HINT = (
    "Each line must be one JSON object of the form "
    '{"id": ..., "messages": [{"role": "user"|"assistant"|"system", "content": [{"type": "text", "text": ...} '
    'or {"type": "image", "image": PATH} or {"type": "audio", "audio": PATH} or {"type": "video", "video": PATH, '
    '"start": SECONDS, "end": SECONDS}]}, ...], "meta": {...}} '
    "with media paths relative to the file's folder."
)


# --------------------------------------------------------------------------- parsing


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class InvalidField(Exception):
    """A problem with one field of an entry (``field_path`` as ``messages[0].content``, or ``""`` for the
    entry as a whole). Readers of other formats (omnifuse.data.converters) raise it too, and turn it into an
    :class:`OmnifuseError` that names the file and line."""

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}" if field_path else problem)


def _check_keys(obj: dict[str, Any], at: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    if len(obj) == len(required) and all(key in obj for key in required):
        return  # the common case, checked cheaply: loading runs this for every part of every sample
    for key in required:
        if key not in obj:
            raise InvalidField(at, f"missing key {key!r}")
    unknown = [k for k in obj if k not in required and k not in optional]
    if unknown:
        allowed = ", ".join(repr(k) for k in (*required, *optional))
        raise InvalidField(at, f"unknown key {unknown[0]!r} (allowed: {allowed}; put extra data in 'meta')")


def _parse_part(obj: Any, at: str, base_dir: Path, images: dict[str, Part]) -> Part:
    if not isinstance(obj, dict):
        raise InvalidField(at, f"a content part must be an object, got {_type_name(obj)}")
    kind = obj.get("type")
    if kind == "text":
        _check_keys(obj, at, ("type", "text"))
        if not isinstance(obj["text"], str):
            raise InvalidField(f"{at}.text", f"must be a string, got {_type_name(obj['text'])}")
        return TextPart(obj["text"])
    if kind == "video":
        return _parse_video(obj, at, base_dir)
    if kind in MEDIA_PARTS:
        _check_keys(obj, at, ("type", kind))
        raw = obj[kind]
        if not isinstance(raw, str) or not raw:
            raise InvalidField(f"{at}.{kind}", f"must be a non-empty path string, got {raw!r}")
        key = f"{kind}:{raw}"
        if key not in images:  # many samples share an image or a clip: build each path once
            path = Path(raw)
            images[key] = MEDIA_PARTS[kind](path if path.is_absolute() else base_dir / path)
        return images[key]
    if "type" not in obj:
        raise InvalidField(at, "missing key 'type' (expected 'text', 'image', 'audio' or 'video')")
    raise InvalidField(
        f"{at}.type", f"unknown part type {kind!r} (expected 'text', 'image', 'audio' or 'video')"
    )


def _parse_video(obj: dict[str, Any], at: str, base_dir: Path) -> VideoPart:
    _check_keys(obj, at, ("type", "video"), ("start", "end"))
    raw = obj["video"]
    if not isinstance(raw, str) or not raw:
        raise InvalidField(f"{at}.video", f"must be a non-empty path string, got {raw!r}")
    bounds = {}
    for key in ("start", "end"):
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise InvalidField(f"{at}.{key}", f"must be a number of seconds ≥ 0, got {value!r}")
        bounds[key] = None if value is None else float(value)
    if bounds["start"] is not None and bounds["end"] is not None and bounds["start"] >= bounds["end"]:
        raise InvalidField(at, f"start ({bounds['start']:g} s) must come before end ({bounds['end']:g} s)")
    path = Path(raw)
    return VideoPart(
        path if path.is_absolute() else base_dir / path, start=bounds["start"], end=bounds["end"]
    )


def _parse_message(obj: Any, at: str, base_dir: Path, images: dict[str, Part]) -> Message:
    if not isinstance(obj, dict):
        raise InvalidField(at, f"a message must be an object, got {_type_name(obj)}")
    _check_keys(obj, at, ("role", "content"))
    role = obj["role"]
    if role not in ROLES:
        raise InvalidField(f"{at}.role", f"{role!r} is not a role; use one of {', '.join(ROLES)}")
    content = obj["content"]
    if isinstance(content, str):
        return Message(role, (TextPart(content),))
    if not isinstance(content, list):
        raise InvalidField(f"{at}.content", f"must be a string or a list of parts, got {_type_name(content)}")
    if not content:
        raise InvalidField(f"{at}.content", "is empty; give at least one text, image or audio part")
    return Message(
        role, tuple(_parse_part(p, f"{at}.content[{j}]", base_dir, images) for j, p in enumerate(content))
    )


def sample_from_json(obj: Any, base_dir: Path, images: dict[str, Part] | None = None) -> Sample:
    """Validate one decoded native JSON object and build its sample, raising :class:`InvalidField`.

    Relative media paths resolve against ``base_dir``; ``images`` (media key -> part) is shared across the
    entries of one file so that a path used by many samples is built once.
    """
    if not isinstance(obj, dict):
        raise InvalidField("", f"expected a JSON object, got {_type_name(obj)}")
    _check_keys(obj, "", ("id", "messages"), ("meta",))
    sample_id = obj["id"]
    if isinstance(sample_id, bool) or not isinstance(sample_id, str | int):
        raise InvalidField("id", f"must be a string or an integer, got {_type_name(sample_id)}")
    if sample_id == "":
        raise InvalidField("id", "is empty")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise InvalidField("messages", f"must be a list of messages, got {_type_name(raw_messages)}")
    if not raw_messages:
        raise InvalidField("messages", "is empty; a sample needs at least a user turn and an assistant turn")
    images = {} if images is None else images
    messages = tuple(
        _parse_message(m, f"messages[{i}]", base_dir, images) for i, m in enumerate(raw_messages)
    )
    roles = [m.role for m in messages]
    if "assistant" not in roles:
        raise InvalidField(
            "messages", "has no assistant turn; the last assistant turn is the expected answer, so add one"
        )
    last = len(roles) - 1 - roles[::-1].index("assistant")
    if last == 0:
        raise InvalidField("messages", "has nothing before the assistant turn; add the user turn it answers")
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise InvalidField("meta", f"must be an object, got {_type_name(meta)}")
    return Sample(str(sample_id), messages, meta)


def parse_sample(obj: Any, base_dir: Path, where: str) -> Sample:
    """Validate one decoded JSON sample and build it; relative image paths resolve against ``base_dir``.

    Raises :class:`OmnifuseError` naming ``where`` (e.g. ``"train.jsonl line 17"``) and the field.
    """
    try:
        return sample_from_json(obj, Path(base_dir))
    except InvalidField as exc:
        raise OmnifuseError(f"{where}: {exc}. {_FORMAT_HINT}") from None


# --------------------------------------------------------------------------- files


def problem_list(problems: Sequence[str]) -> str:
    """Up to ``MAX_LISTED`` problems, one per indented line, plus how many more were left out."""
    shown = [f"  {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        shown.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return "\n".join(shown)


def _decoded_lines(raw: bytes, name: str, source: str) -> Iterator[tuple[int, str | None, str]]:
    """(line number, text or None, where) per line. UTF-8 is decoded line by line, so that one bad
    line is reported with the others; a file with a UTF-16/32 byte-order mark is decoded as a whole."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)):  # UTF-32 LE too
        lines = decode_text(raw, source).split("\n")
        yield from ((n, line, f"{name} line {n}") for n, line in enumerate(lines, start=1))
        return
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        where = f"{name} line {lineno}"
        try:
            line = line_bytes.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            yield (
                lineno,
                None,
                f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8",
            )
            continue
        if "\x00" in line:
            yield lineno, None, f"{where}: holds NUL bytes (UTF-16 without a byte-order mark, or binary data)"
            continue
        yield lineno, line, where


def json_line(line: str, where: str) -> Any:
    """One line as strict JSON (no NaN / Infinity), or an OmnifuseError naming ``where``."""
    try:
        return json.loads(line, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise OmnifuseError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise OmnifuseError(f"{where}: nested too deeply to read (flatten it)") from None
    except ValueError as exc:  # NaN / Infinity, integer literals over Python's digit limit
        raise OmnifuseError(f"{where}: invalid JSON ({exc})") from None


def _not_json(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number; write a number or null")


def load_jsonl(path: Path | str) -> list[Sample]:
    """Load and validate a native JSONL data set, reporting all bad lines and missing media files at once.

    Media files are not opened (the processor does that) but their existence is checked, because a
    missing file found mid-training wastes the run.
    """
    path = Path(path)
    raw = read_bytes(path, "data file", MAX_DATA_BYTES)
    base_dir = normabs(path.parent)
    samples: list[Sample] = []
    malformed: list[str] = []
    missing: list[str] = []
    first_line: dict[str, int] = {}
    exists: dict[Path, bool] = {}
    media_parts: dict[str, Part] = {}
    for lineno, line, where in _decoded_lines(raw, path.name, f"data file {path}"):
        if line is None:
            malformed.append(where)  # the decoding problem, already naming the line
            continue
        if not line.strip():
            continue
        try:
            sample = sample_from_json(json_line(line, where), base_dir, media_parts)
        except OmnifuseError as exc:
            malformed.append(str(exc))
            continue
        except InvalidField as exc:
            malformed.append(f"{where}: {exc}")
            continue
        if sample.id in first_line:
            malformed.append(
                f"{where}: duplicate id {sample.id!r} (first used on line {first_line[sample.id]})"
            )
            continue
        first_line[sample.id] = lineno
        for media in (*sample.images(), *sample.audios(), *(v.path for v in sample.videos())):
            if media not in exists:
                exists[media] = media.is_file()
            if not exists[media]:
                missing.append(f"{where}: {media}")
        samples.append(sample)
    _raise_problems(path, base_dir, malformed, missing)
    if not samples:
        raise OmnifuseError(
            f"{path} contains no samples (it is empty or has only blank lines); "
            "point the recipe at a data file with at least one sample."
        )
    return samples


def _raise_problems(path: Path, base_dir: Path, malformed: list[str], missing: list[str]) -> None:
    sections = []
    if malformed:
        sections.append(f"{len(malformed)} malformed line(s):\n{problem_list(malformed)}")
    if missing:
        sections.append(f"{len(missing)} missing media file(s):\n{problem_list(missing)}")
    if not sections:
        return
    hints = []
    if malformed:
        hints.append(_FORMAT_HINT)
    if missing:
        hints.append(f"Relative media paths are resolved against {base_dir}; fix the paths or add the files.")
    raise OmnifuseError(f"{path} has " + "\nand ".join(sections) + "\n" + " ".join(hints))


def write_jsonl(samples: Iterable[Sample], path: Path | str) -> Path:
    """Write samples atomically (temp file + ``os.replace``): readers never see a half-written file.

    Image paths inside the file's folder are written relative to it, so the folder stays movable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = normabs(path.parent)
    lines = []
    seen: set[str] = set()
    for sample in samples:
        if sample.id in seen:
            raise OmnifuseError(
                f"cannot write {path}: sample id {sample.id!r} occurs twice; ids must be unique in a data file."
            )
        seen.add(sample.id)
        try:
            line = json.dumps(sample.to_json(base), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise OmnifuseError(
                f"cannot write {path}: the meta of sample {sample.id!r} is not plain JSON data ({exc}); "
                "keep meta to strings, finite numbers, booleans, null, lists and objects."
            ) from None
        lines.append(line.translate(_LINE_BREAK_ESCAPES))

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    return path
