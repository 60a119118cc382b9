"""OpenAI chat messages → native messages: the one parser behind the server's requests and
``omnifuse data convert openai``.

The wire schema (pydantic: ``text``, ``image_url``, ``input_audio`` and ``video_url`` parts — the last as vLLM
takes it, ``{"type": "video_url", "video_url": {"url": ...}}``), the walk from content parts to
native parts and the rules of the roles (media in user messages only, a system message first and text
only) live here. What a media part becomes is the caller's, through a :class:`MediaReader`: the server
decodes it in memory and checks it against the model's inputs, the converter writes it to a file beside
its output. Every problem is a :class:`PartError` that names the field (``messages.0.content.1``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from omnifuse.data.inline_media import MediaError
from omnifuse.data.sample import AudioPart, ImagePart, Message, Part, TextPart, VideoPart

T = TypeVar("T")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextContent(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImageContent(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Strict):
    data: str
    format: Literal["wav", "mp3"]


class AudioContent(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class VideoURL(_Strict):
    url: str


class VideoContent(_Strict):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextContent | ImageContent | AudioContent | VideoContent, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # e.g. "name", "refusal" from clients echoing history

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class PartError(ValueError):
    """A message or content part that cannot be used: ``message`` names the field, ``param`` is its path,
    ``status`` the HTTP status the server answers with (413 for media over a size limit)."""

    def __init__(self, message: str, param: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


class MediaReader(Protocol):
    """Turns a media part into a native part (or raises MediaError / PartError); ``where`` names the part."""

    def image(self, part: ImageContent, where: str) -> ImagePart: ...

    def audio(self, part: AudioContent, where: str) -> AudioPart: ...

    def video(self, part: VideoContent, where: str) -> VideoPart: ...


_BRANCHES = {"str", "int", "float", "bool", "none"}  # the names pydantic gives a union's plain branches


def validation_problem(exc: ValidationError) -> tuple[str, str]:
    """(field path, message) of the first problem pydantic found, with how many more there were."""
    errs = exc.errors(include_url=False)
    # The deepest location is the most specific: for content that is neither a string nor a list of
    # known parts, the part that is wrong rather than "not a string".
    first = max(errs, key=lambda e: len(e["loc"]))
    # Drop pydantic's union-branch names (e.g. "list[...]", "image_url", a trailing "str") that are not JSON keys.
    loc = [str(p) for p in first["loc"] if isinstance(p, int) or not any(c in str(p) for c in "[]()")]
    where = ".".join(loc[:-1] if len(loc) > 1 and loc[-1] in _BRANCHES else loc)
    more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")  # our own validators' messages stand alone
    return where, f"{where}: {msg}{more}"


def _read(read: Callable[[], T], param: str) -> T:
    try:
        return read()
    except MediaError as exc:
        raise PartError(str(exc), param, exc.status) from None


def _part(part: Any, where: str, role: str, reader: MediaReader) -> Part:
    if isinstance(part, TextContent):
        return TextPart(part.text)
    if role != "user":
        what = {AudioContent: "audio is", VideoContent: "videos are"}.get(type(part), "images are")
        raise PartError(f"{where}: {what} only allowed in user messages", where)
    if isinstance(part, AudioContent):
        return _read(lambda: reader.audio(part, where), f"{where}.input_audio.data")
    if isinstance(part, VideoContent):
        return _read(lambda: reader.video(part, where), f"{where}.video_url.url")
    return _read(lambda: reader.image(part, where), f"{where}.image_url.url")


def native_messages(messages: Sequence[ChatMessage], reader: MediaReader) -> tuple[Message, ...]:
    """Native messages of validated OpenAI messages (``developer`` is read as ``system``), media through
    ``reader`` in conversation order."""
    out = []
    for i, m in enumerate(messages):
        role = "system" if m.role == "developer" else m.role
        if m.content is None:
            parts: tuple[Part, ...] = ()
        elif isinstance(m.content, str):
            parts = (TextPart(m.content),)
        else:
            parts = tuple(
                _part(p, f"messages.{i}.content.{k}", role, reader) for k, p in enumerate(m.content)
            )
        if role == "system" and i > 0:
            raise PartError("a system message may only come first", "messages")
        out.append(Message(role, parts))
    return tuple(out)
