"""The native sample format: typed samples, strict JSONL loading and atomic writing.

One sample per JSONL line::

    {"id": "s1",
     "messages": [{"role": "user", "content": [{"type": "image", "image": "img/a.png"},
                                               {"type": "text", "text": "what color is it?"}]},
                  {"role": "assistant", "content": [{"type": "text", "text": "red"}]}],
     "meta": {"question_type": "color"}}

A spoken question is an audio part, ``{"type": "audio", "audio": "audio/q1.wav"}``, in place of (or
beside) the text. A video is ``{"type": "video", "video": "clips/a.mp4"}`` with optional ``"start"`` and
``"end"`` (seconds: the part of the file to sample frames from; docs/video.md). Relative media paths resolve against the JSONL file's folder, so a data folder can
be moved as a whole. Loading is strict and reports *every* bad line at once: a data set with a problem on line
30,000 should fail in a second with the full list, not after an hour of training.
"""

from __future__ import annotations

import codecs
import json
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from omnifuse.atomic import atomic_write
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import MAX_DATA_BYTES, decode_text, read_bytes

ROLES = ("system", "user", "assistant")
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


@dataclass(frozen=True)
class TextPart:
    """A piece of text inside a message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image inside a message: a file path (data sets) or a decoded image (the server's requests).

    The processor opens paths; loading a data file only checks that they exist.
    """

    path: Path | None = None
    image: Image.Image | None = field(default=None, hash=False, repr=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.image is None):
            raise ValueError("an ImagePart holds exactly one of a path or an image")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    @property
    def source(self) -> Path | Image.Image:
        return self.image if self.image is not None else self.path


@dataclass(frozen=True)
class AudioPart:
    """A clip inside a message: a file path (data sets) or a decoded mono waveform at 16 kHz (requests,
    the chat's microphone file already read). The processor loads and resamples paths."""

    path: Path | None = None
    waveform: np.ndarray | None = field(default=None, hash=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.waveform is None):
            raise ValueError("an AudioPart holds exactly one of a path or a waveform")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    @property
    def source(self) -> Path | np.ndarray:
        return self.waveform if self.waveform is not None else self.path


@dataclass(frozen=True)
class VideoPart:
    """A video inside a message: a file path (data sets, the chat) or the bytes of a file (requests), and
    the part of it to sample frames from (``start``/``end`` in seconds; None: from the start / to the end).
    The processor decodes and samples it (omnifuse.video)."""

    path: Path | None = None
    data: bytes | None = field(default=None, hash=False, repr=False, compare=False)
    start: float | None = None
    end: float | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("a VideoPart holds exactly one of a path or the bytes of a file")
        if self.path is not None and not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))
        if self.start is not None and self.end is not None and not self.start < self.end:
            raise ValueError(f"a video part's start ({self.start}) must come before its end ({self.end})")

    @property
    def source(self) -> Path | bytes:
        return self.data if self.data is not None else self.path


Part = TextPart | ImagePart | AudioPart | VideoPart

# The media part classes by modality name: the processor inserts them in this order of kinds.
MEDIA_PARTS: dict[str, type] = {"image": ImagePart, "audio": AudioPart, "video": VideoPart}


@dataclass(frozen=True)
class Message:
    """One conversation turn: a role and its ordered text and image parts."""

    role: str
    parts: tuple[Part, ...]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        object.__setattr__(self, "parts", tuple(self.parts))

    def text(self) -> str:
        """The text parts joined as written (a turn's parts are consecutive pieces of one text)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    def images(self) -> list[Path | Image.Image]:
        return [p.source for p in self.parts if isinstance(p, ImagePart)]

    def audios(self) -> list[Path | np.ndarray]:
        return [p.source for p in self.parts if isinstance(p, AudioPart)]

    def videos(self) -> list[VideoPart]:
        return [p for p in self.parts if isinstance(p, VideoPart)]


@dataclass(frozen=True)
class Sample:
    """One training/eval example: a conversation whose last assistant turn is the expected answer.

    ``meta`` is a read-only view of free-form JSON data (it does not take part in hashing).
    """

    id: str
    messages: tuple[Message, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    def images(self) -> list[Path | Image.Image]:
        """All images (paths or decoded images) in conversation order (the order the processor inserts them)."""
        return [path for m in self.messages for path in m.images()]

    def audios(self) -> list[Path | np.ndarray]:
        """All audio clips (paths or waveforms) in conversation order."""
        return [a for m in self.messages for a in m.audios()]

    def videos(self) -> list[VideoPart]:
        """All video parts in conversation order."""
        return [v for m in self.messages for v in m.videos()]

    def _last_assistant(self) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "assistant":
                return i
        return None

    def answer(self) -> str:
        """Text of the last assistant turn: the target for training and the reference for eval."""
        i = self._last_assistant()
        if i is None:
            raise OmnifuseError(
                f"sample {self.id!r} has no assistant turn, so it has no expected answer; "
                "add an assistant message with the answer as the last turn."
            )
        return self.messages[i].text()

    def prompt(self) -> tuple[Message, ...]:
        """The messages before the last assistant turn (all of them if there is none): the model input."""
        i = self._last_assistant()
        return self.messages if i is None else self.messages[:i]

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The native JSON object; image paths inside ``relative_to`` are written relative to it.

        Paths outside ``relative_to`` (or all paths when it is None) are written absolute, so the
        result never depends on the current folder.
        """
        base = _normabs(relative_to) if relative_to is not None else None
        messages = []
        for m in self.messages:
            content: list[dict[str, str]] = []
            for p in m.parts:
                if isinstance(p, TextPart):
                    content.append({"type": "text", "text": p.text})
                elif isinstance(p, VideoPart) and p.path is not None:
                    content.append(_video_json(p, base))
                elif p.path is None:
                    kind = {ImagePart: "image", AudioPart: "audio"}.get(type(p), "video")
                    raise ValueError(f"sample {self.id!r} holds a decoded {kind}, which has no JSON form")
                elif isinstance(p, AudioPart):
                    content.append({"type": "audio", "audio": _portable_path(p.path, base)})
                else:
                    content.append({"type": "image", "image": _portable_path(p.path, base)})
            messages.append({"role": m.role, "content": content})
        obj: dict[str, Any] = {"id": self.id, "messages": messages}
        if self.meta:
            obj["meta"] = dict(self.meta)
        return obj


def _video_json(part: VideoPart, base: Path | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": "video", "video": _portable_path(part.path, base)}
    obj.update({k: v for k, v in (("start", part.start), ("end", part.end)) if v is not None})
    return obj


def _normabs(path: Path) -> Path:
    """Absolute and lexically normalised (no symlink resolution, which would surprise users)."""
    return Path(os.path.normpath(Path(path).absolute()))


def _portable_path(path: Path, base: Path | None) -> str:
    absolute = _normabs(path)
    if base is not None and absolute.is_relative_to(base):
        return absolute.relative_to(base).as_posix()
    return absolute.as_posix()


def with_transcript(sample: Sample) -> Sample:
    """The sample with its spoken parts replaced by the transcript in ``meta.transcript``: the typed
    question (what a distillation teacher reads, and the text reference of a spoken data set)."""
    transcript = sample.meta.get("transcript")
    if not isinstance(transcript, str) or not transcript:
        raise OmnifuseError(
            f"sample {sample.id}: the spoken question's text is not in meta.transcript; add it to the data "
            "(omnifuse data spoken-easy-vqa writes it)"
        )
    messages = tuple(
        Message(m.role, tuple(TextPart(transcript) if isinstance(p, AudioPart) else p for p in m.parts))
        for m in sample.messages
    )
    return Sample(sample.id, messages, sample.meta)


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


class _Invalid(Exception):
    """Internal: a field-level problem, turned into an OmnifuseError that names the location."""

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}" if field_path else problem)


def _check_keys(obj: dict[str, Any], at: str, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    if len(obj) == len(required) and all(key in obj for key in required):
        return  # the common case, checked cheaply: loading runs this for every part of every sample
    for key in required:
        if key not in obj:
            raise _Invalid(at, f"missing key {key!r}")
    unknown = [k for k in obj if k not in required and k not in optional]
    if unknown:
        allowed = ", ".join(repr(k) for k in (*required, *optional))
        raise _Invalid(at, f"unknown key {unknown[0]!r} (allowed: {allowed}; put extra data in 'meta')")


def _parse_part(obj: Any, at: str, base_dir: Path, images: dict[str, Part]) -> Part:
    if not isinstance(obj, dict):
        raise _Invalid(at, f"a content part must be an object, got {_type_name(obj)}")
    kind = obj.get("type")
    if kind == "text":
        _check_keys(obj, at, ("type", "text"))
        if not isinstance(obj["text"], str):
            raise _Invalid(f"{at}.text", f"must be a string, got {_type_name(obj['text'])}")
        return TextPart(obj["text"])
    if kind == "video":
        return _parse_video(obj, at, base_dir)
    if kind in MEDIA_PARTS:
        _check_keys(obj, at, ("type", kind))
        raw = obj[kind]
        if not isinstance(raw, str) or not raw:
            raise _Invalid(f"{at}.{kind}", f"must be a non-empty path string, got {raw!r}")
        key = f"{kind}:{raw}"
        if key not in images:  # many samples share an image or a clip: build each path once
            path = Path(raw)
            images[key] = MEDIA_PARTS[kind](path if path.is_absolute() else base_dir / path)
        return images[key]
    if "type" not in obj:
        raise _Invalid(at, "missing key 'type' (expected 'text', 'image', 'audio' or 'video')")
    raise _Invalid(f"{at}.type", f"unknown part type {kind!r} (expected 'text', 'image', 'audio' or 'video')")


def _parse_video(obj: dict[str, Any], at: str, base_dir: Path) -> VideoPart:
    _check_keys(obj, at, ("type", "video"), ("start", "end"))
    raw = obj["video"]
    if not isinstance(raw, str) or not raw:
        raise _Invalid(f"{at}.video", f"must be a non-empty path string, got {raw!r}")
    bounds = {}
    for key in ("start", "end"):
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise _Invalid(f"{at}.{key}", f"must be a number of seconds ≥ 0, got {value!r}")
        bounds[key] = None if value is None else float(value)
    if bounds["start"] is not None and bounds["end"] is not None and bounds["start"] >= bounds["end"]:
        raise _Invalid(at, f"start ({bounds['start']:g} s) must come before end ({bounds['end']:g} s)")
    path = Path(raw)
    return VideoPart(
        path if path.is_absolute() else base_dir / path, start=bounds["start"], end=bounds["end"]
    )


def _parse_message(obj: Any, at: str, base_dir: Path, images: dict[str, Part]) -> Message:
    if not isinstance(obj, dict):
        raise _Invalid(at, f"a message must be an object, got {_type_name(obj)}")
    _check_keys(obj, at, ("role", "content"))
    role = obj["role"]
    if role not in ROLES:
        raise _Invalid(f"{at}.role", f"{role!r} is not a role; use one of {', '.join(ROLES)}")
    content = obj["content"]
    if isinstance(content, str):
        return Message(role, (TextPart(content),))
    if not isinstance(content, list):
        raise _Invalid(f"{at}.content", f"must be a string or a list of parts, got {_type_name(content)}")
    if not content:
        raise _Invalid(f"{at}.content", "is empty; give at least one text, image or audio part")
    return Message(
        role, tuple(_parse_part(p, f"{at}.content[{j}]", base_dir, images) for j, p in enumerate(content))
    )


def _parse(obj: Any, base_dir: Path, images: dict[str, Part] | None = None) -> Sample:
    if not isinstance(obj, dict):
        raise _Invalid("", f"expected a JSON object, got {_type_name(obj)}")
    _check_keys(obj, "", ("id", "messages"), ("meta",))
    sample_id = obj["id"]
    if isinstance(sample_id, bool) or not isinstance(sample_id, str | int):
        raise _Invalid("id", f"must be a string or an integer, got {_type_name(sample_id)}")
    if sample_id == "":
        raise _Invalid("id", "is empty")
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list):
        raise _Invalid("messages", f"must be a list of messages, got {_type_name(raw_messages)}")
    if not raw_messages:
        raise _Invalid("messages", "is empty; a sample needs at least a user turn and an assistant turn")
    images = {} if images is None else images
    messages = tuple(
        _parse_message(m, f"messages[{i}]", base_dir, images) for i, m in enumerate(raw_messages)
    )
    roles = [m.role for m in messages]
    if "assistant" not in roles:
        raise _Invalid(
            "messages", "has no assistant turn; the last assistant turn is the expected answer, so add one"
        )
    last = len(roles) - 1 - roles[::-1].index("assistant")
    if last == 0:
        raise _Invalid("messages", "has nothing before the assistant turn; add the user turn it answers")
    meta = obj.get("meta")
    if meta is None:
        meta = {}
    elif not isinstance(meta, dict):
        raise _Invalid("meta", f"must be an object, got {_type_name(meta)}")
    return Sample(str(sample_id), messages, meta)


def parse_sample(obj: Any, base_dir: Path, where: str) -> Sample:
    """Validate one decoded JSON sample and build it; relative image paths resolve against ``base_dir``.

    Raises :class:`OmnifuseError` naming ``where`` (e.g. ``"train.jsonl line 17"``) and the field.
    """
    try:
        return _parse(obj, Path(base_dir))
    except _Invalid as exc:
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
    base_dir = _normabs(path.parent)
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
            sample = _parse(json_line(line, where), base_dir, media_parts)
        except OmnifuseError as exc:
            malformed.append(str(exc))
            continue
        except _Invalid as exc:
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
    base = _normabs(path.parent)
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


def select_subset(samples: Sequence[Sample], n: int | None, seed: int) -> list[Sample]:
    """A fixed, seeded subset in original order, so eval numbers are comparable across runs."""
    if n is None or n >= len(samples):
        return list(samples)
    if n < 0:
        raise OmnifuseError(
            f"the subset size (--limit, or data.eval_limit in the recipe) must be at least 0, or unset for all "
            f"samples; got {n}."
        )
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]
