"""OpenAI messages ↔ native samples: ``omnifuse data convert openai SRC --out FILE.jsonl`` and back.

The source holds one conversation per JSONL line (or one JSON list of them), in the message JSON the
server takes (``text``, ``image_url``, ``input_audio`` and ``video_url`` parts) — OpenAI's fine-tuning format ``{"messages": [...]}``, with an optional ``"id"`` and ``"meta"``
(other top-level keys, such as a request's ``"model"``, are ignored as the server ignores them). The
messages are parsed by the server's own parser (:mod:`omnifuse.data.openai_messages`); here the media
become files:

* a ``data:`` URL (``image_url``, ``video_url``) or an ``input_audio`` payload is decoded and checked
  (size, pixel count, a readable image, a clip of at most 30 s, a video with a frame to decode) and written to ``media/`` beside the output, named by
  its content hash, so a picture used by many samples is stored once;
* an ``image_url`` or ``video_url`` that is a file path (relative to ``--images``, default the source's
  folder) or a ``file://`` URL is referenced where it is; http(s) URLs are refused (nothing is downloaded).

:func:`to_openai` goes back: every part kept in order, files embedded as data URLs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mimetypes
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from omnifuse.atomic import atomic_write_bytes, atomic_write_text
from omnifuse.data.entries import json_entries
from omnifuse.data.inline_media import (
    MediaError,
    MediaLimits,
    b64decode,
    check_video,
    decode_audio,
    image_data_url,
    is_data_url,
    video_data_url,
)
from omnifuse.data.jsonl import problem_list
from omnifuse.data.openai_messages import (
    AudioContent,
    ChatMessage,
    ImageContent,
    PartError,
    VideoContent,
    native_messages,
    validation_problem,
)
from omnifuse.data.sample import AudioPart, ImagePart, Sample, TextPart, VideoPart
from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import MAX_DATA_BYTES, parse_json, read_bytes, read_text

MEDIA_FOLDER = "media"  # beside the output JSONL
MAX_CLIP_SECONDS = 30.0  # the processor's limit on one clip (processing.processor.load_clip)
AUDIO_FORMATS = ("wav", "mp3")  # what OpenAI's input_audio takes
_HINT = (
    'Each entry is {"messages": [{"role": "system"|"user"|"assistant", "content": TEXT or [parts]}, ...], '
    '"id"?: ..., "meta"?: {...}} with parts {"type": "text", "text": ...}, {"type": "image_url", "image_url": '
    '{"url": DATA_URL or PATH}}, {"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"|"mp3"}}'
    ' or {"type": "video_url", "video_url": {"url": DATA_URL or PATH}}.'
)


class Conversation(BaseModel):
    """One entry of an OpenAI messages file."""

    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(min_length=1)
    id: StrictStr | StrictInt | None = None
    meta: dict[str, Any] | None = None


class _FileMedia:
    """Media of OpenAI messages as files (omnifuse.data.openai_messages.MediaReader): inline media decoded,
    checked and written once to ``media_dir``; paths resolved against ``root`` and checked to exist."""

    def __init__(self, root: Path, media_dir: Path, limits: MediaLimits) -> None:
        self.root, self.media_dir, self.limits = root, media_dir, limits

    def image(self, part: ImageContent, where: str) -> ImagePart:
        url, what = part.image_url.url, f"the image at {where}"
        if is_data_url(url):
            # decoded now, so that a broken image fails here rather than in training
            raw, _ = image_data_url(url, self.limits, what)
            with Image.open(io.BytesIO(raw)) as img:
                fmt = (img.format or "png").lower()
            return ImagePart(self._store(raw, "jpg" if fmt in ("jpeg", "mpo") else fmt))
        return ImagePart(self._local(url, what))

    def audio(self, part: AudioContent, where: str) -> AudioPart:
        what = f"the audio at {where}"
        raw = b64decode(part.input_audio.data, what, self.limits.max_bytes)
        decode_audio(raw, MAX_CLIP_SECONDS, what)  # checked now: a broken clip fails here, not in training
        return AudioPart(self._store(raw, part.input_audio.format))

    def video(self, part: VideoContent, where: str) -> VideoPart:
        url, what = part.video_url.url, f"the video at {where}"
        if not is_data_url(url):
            path = self._local(url, what)
            check_video(str(path), what)
            return VideoPart(path)
        mime, raw = video_data_url(url, self.limits, what)
        check_video(raw, what)  # one frame decoded: a broken clip fails here, not in training
        return VideoPart(self._store(raw, (mimetypes.guess_extension(mime) or ".mp4").lstrip(".")))

    def _store(self, raw: bytes, ext: str) -> Path:
        path = self.media_dir / f"{hashlib.sha256(raw).hexdigest()[:24]}.{ext}"
        if not (path.is_file() and path.stat().st_size == len(raw)):
            self.media_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, raw)
        return path

    def _local(self, url: str, what: str) -> Path:
        scheme = urlsplit(url).scheme.lower()
        if scheme in ("http", "https"):
            raise MediaError(
                f"{what} is a remote URL ({url[:80]}); the converter downloads nothing: download the file "
                "and give its path, or embed it as a data URL"
            )
        if scheme == "file":
            path = Path(unquote(urlsplit(url).path))
        elif scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive
            raise MediaError(f"{what} must be a data: URL, a file:// URL or a file path, got {url[:40]!r}")
        else:
            path = Path(url)
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise MediaError(f"{what}: the file {path} does not exist; fix the path or pass --images")
        return path


def _entries(src: Path) -> list[tuple[str, Any]]:
    text = read_text(src, "OpenAI messages file", MAX_DATA_BYTES)
    return json_entries(src, text, lambda t: parse_json(t, f"OpenAI messages file {src}"))


def _sample(entry: Any, fallback_id: str, reader: _FileMedia) -> Sample:
    if not isinstance(entry, dict):
        raise PartError("an entry must be a JSON object", "")
    try:
        conv = Conversation.model_validate(entry)
    except ValidationError as exc:
        raise PartError(validation_problem(exc)[1], "") from None
    messages = native_messages(conv.messages, reader)
    return Sample(fallback_id if conv.id is None else str(conv.id), messages, conv.meta or {})


def from_openai(
    path: Path | str, image_folder: Path | str | None = None, media_dir: Path | str | None = None
) -> list[Sample]:
    """Native samples of an OpenAI messages file; inline media are written to ``media_dir`` (default
    ``media/`` beside the source). Every problem in the file is reported at once, each naming its entry."""
    src = Path(path)
    entries = _entries(src)
    root = Path(image_folder) if image_folder is not None else src.parent
    if not root.is_dir():
        raise OmnifuseError(
            f"image folder {root} does not exist or is not a folder; pass the folder holding the images."
        )
    reader = _FileMedia(root.absolute(), Path(media_dir or src.parent / MEDIA_FOLDER), MediaLimits())
    samples, problems, first = [], [], {}
    for index, (where, entry) in enumerate(entries):
        try:
            sample = _sample(entry, f"{src.stem}-{index}", reader)
        except PartError as exc:
            problems.append(f"{where}: {exc.message}")
            continue
        if sample.id in first:
            problems.append(f"{where}: duplicate id {sample.id!r} (first used by {first[sample.id]})")
            continue
        first[sample.id] = where
        samples.append(sample)
    if problems:
        noun = "entry" if len(problems) == 1 else "entries"
        raise OmnifuseError(
            f"cannot convert {src} from OpenAI messages: it has {len(problems)} invalid {noun}:\n"
            f"{problem_list(problems)}\n{_HINT}"
        )
    if not samples:
        raise OmnifuseError(f"{src} has no entries; there is nothing to convert.")
    return samples


# --------------------------------------------------------------------------- native → OpenAI


def _image_url(part: ImagePart, limits: MediaLimits) -> str:
    if part.path is None:
        buf = io.BytesIO()
        part.image.save(buf, format="PNG")
        raw, mime = buf.getvalue(), "image/png"
    else:
        raw = read_bytes(part.path, "image file", limits.max_bytes)
        mime = mimetypes.guess_type(part.path.name)[0] or ""
        if not mime.startswith("image/"):  # no telling suffix: the type the file's header says
            try:
                with Image.open(io.BytesIO(raw)) as img:
                    mime = Image.MIME.get(img.format or "", "application/octet-stream")
            except Exception:  # noqa: BLE001 - PIL raises many types on a broken file
                raise OmnifuseError(
                    f"image file {part.path} is not a readable image; replace the file"
                ) from None
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def _input_audio(part: AudioPart, limits: MediaLimits) -> dict[str, str]:
    fmt = part.path.suffix.lower().lstrip(".") if part.path is not None else ""
    if fmt not in AUDIO_FORMATS:
        raise OmnifuseError(
            f"clip {part.path or '(decoded waveform)'}: OpenAI's input_audio takes {' or '.join(AUDIO_FORMATS)} "
            "files; convert the clip to wav first"
        )
    raw = read_bytes(part.path, "clip", limits.max_bytes)
    return {"data": base64.b64encode(raw).decode("ascii"), "format": fmt}


def _video_url(part: VideoPart, sample_id: str, limits: MediaLimits) -> str:
    if part.start is not None or part.end is not None:
        raise OmnifuseError(
            f"sample {sample_id}: its video {part.path or ''} has a start or an end, which OpenAI's video_url "
            "cannot say; cut the clip to that part first"
        )
    raw = part.data if part.data is not None else read_bytes(part.path, "video file", limits.max_video_bytes)
    mime = mimetypes.guess_type(part.path.name)[0] if part.path is not None else "video/mp4"
    if not (mime or "").startswith("video/"):
        raise OmnifuseError(
            f"video file {part.path}: its type is not known from its name; give it a video suffix (.mp4, .webm)"
        )
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def to_openai(sample: Sample, limits: MediaLimits | None = None) -> dict[str, Any]:
    """A sample as one OpenAI messages entry (``id``, ``messages``, ``meta``): each part in order, image
    files as data URLs of their own bytes, clips as ``input_audio``."""
    limits = limits or MediaLimits()
    messages = []
    for m in sample.messages:
        content: list[dict[str, Any]] = []
        for p in m.parts:
            if isinstance(p, TextPart):
                content.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart):
                content.append({"type": "image_url", "image_url": {"url": _image_url(p, limits)}})
            elif isinstance(p, AudioPart):
                content.append({"type": "input_audio", "input_audio": _input_audio(p, limits)})
            elif isinstance(p, VideoPart):
                content.append({"type": "video_url", "video_url": {"url": _video_url(p, sample.id, limits)}})
            else:
                raise OmnifuseError(
                    f"sample {sample.id}: a {type(p).__name__} has no OpenAI message form (text, image_url and "
                    "input_audio parts only)"
                )
        messages.append({"role": m.role, "content": content})
    entry: dict[str, Any] = {"id": sample.id, "messages": messages}
    if sample.meta:
        entry["meta"] = dict(sample.meta)
    return entry


def write_openai(samples: list[Sample], path: Path | str) -> Path:
    """Samples as an OpenAI messages JSONL file (atomically)."""
    path = Path(path)
    lines = [json.dumps(to_openai(s), ensure_ascii=False) for s in samples]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path
