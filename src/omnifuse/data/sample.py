"""The native sample types: a :class:`Sample` is an id, a conversation of :class:`Message` turns made of
text, image, audio and video parts, and free-form ``meta``.

Its JSONL form, strict loading and atomic writing are in :mod:`omnifuse.data.jsonl`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from omnifuse.errors import OmnifuseError

ROLES = ("system", "user", "assistant")


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
        base = normabs(relative_to) if relative_to is not None else None
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


def normabs(path: Path) -> Path:
    """Absolute and lexically normalised (no symlink resolution, which would surprise users): how every
    reader of a data file turns its folder and media paths into the paths samples hold."""
    return Path(os.path.normpath(Path(path).absolute()))


def _portable_path(path: Path, base: Path | None) -> str:
    absolute = normabs(path)
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
