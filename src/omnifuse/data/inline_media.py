"""Media carried inside JSON (OpenAI messages): base64 data URLs and ``input_audio`` payloads, decoded
as hostile input. The server decodes requests with it, ``omnifuse data convert openai`` data files.

Sizes are checked before decoding (bytes of the payload) and before pixels are decoded (the image
header's width × height against a pixel budget), so a decompression bomb is refused before it costs
memory. Fetching remote URLs is the server's alone (omnifuse.serve.media): nothing here opens a socket.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import MAX_PIXELS


class MediaError(ValueError):
    """A media item a client sent cannot be used; the message says why (it becomes a 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 10 * 1024**2  # per media item, after base64 decoding
    max_pixels: int = MAX_PIXELS  # width × height
    max_video_bytes: int = 64 * 1024**2  # per video, after base64 decoding
    allow_remote: bool = False
    remote_timeout_s: float = 10.0
    # file:// URLs of videos inside this folder are read from the server's disk (vLLM's
    # --allowed-local-media-path); None: refused.
    local_media_path: Path | None = None


def b64decode(data: str, what: str, limit: int) -> bytes:
    """Base64 text → bytes; payloads over ``limit`` bytes are refused before they are decoded."""
    # base64 carries 3 bytes per 4 characters: refuse oversized payloads before decoding them.
    if len(data) * 3 // 4 > limit + 3:
        raise MediaError(f"{what} is larger than the limit of {limit} bytes", status=413)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{what} is not valid base64") from None
    if not raw:
        raise MediaError(f"{what} is empty")
    return raw


def decode_audio(raw: bytes, max_seconds: float, what: str = "the audio") -> np.ndarray:
    """Clip bytes (wav, mp3, ...) → 16 kHz mono waveform, refusing unreadable, silent and too long clips."""
    from omnifuse.audio.io import load_audio

    try:
        return load_audio(raw, max_seconds=max_seconds)
    except OmnifuseError as exc:
        raise MediaError(f"{what}: {str(exc).replace('the data', 'the clip', 1)}") from None


def load_audio_data(
    data: str, limits: MediaLimits, max_seconds: float, what: str = "the audio"
) -> np.ndarray:
    """Base64 wav/mp3 bytes → 16 kHz mono waveform, refusing oversized, unreadable, silent and too long clips."""
    return decode_audio(b64decode(data, what, limits.max_bytes), max_seconds, what)


def decode_image(raw: bytes, limits: MediaLimits, what: str = "the image") -> Image.Image:
    """Bytes → RGB image, refusing unreadable, truncated and oversized (in pixels) images."""
    if not raw:
        raise MediaError(f"{what} is empty")
    if len(raw) > limits.max_bytes:
        raise MediaError(f"{what} is larger than the limit of {limits.max_bytes} bytes", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            w, h = img.size  # read from the header; no pixels are decoded yet
            if w <= 0 or h <= 0 or w * h > limits.max_pixels:
                raise MediaError(
                    f"{what} is {w}×{h} pixels, over the limit of {limits.max_pixels} pixels; send a smaller image",
                    status=413,
                )
            img.load()
            return img.convert("RGB")
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MediaError(f"{what} decompresses to too many pixels", status=413) from None
    except UnidentifiedImageError:
        raise MediaError(f"{what} could not be decoded as an image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaError(f"{what} could not be decoded as an image ({exc})") from None
    except Exception as exc:  # a codec bug on hostile input must still be the client's 400
        raise MediaError(f"{what} could not be decoded as an image ({type(exc).__name__})") from None


def parse_data_url(url: str, what: str, limit: int) -> tuple[str, bytes]:
    """``data:[<mime>][;base64],<payload>`` → (mime type, bytes). Only base64 payloads are accepted."""
    head, sep, payload = url.partition(",")
    if not sep:
        raise MediaError(f"{what} is a data URL without a ',' before its payload")
    params = head[len("data:") :].split(";")
    if "base64" not in params[1:]:
        raise MediaError(f"{what} must be a base64 data URL (data:image/png;base64,...)")
    return params[0].lower(), b64decode(payload, what, limit)


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def image_data_url(url: str, limits: MediaLimits, what: str = "the image") -> tuple[bytes, Image.Image]:
    """A ``data:image/...;base64,`` URL → (the file's bytes, the decoded RGB image)."""
    mime, raw = parse_data_url(url, what, limits.max_bytes)
    if mime and not mime.startswith("image/"):
        raise MediaError(f"{what} is a data URL of type {mime!r}, not an image")
    return raw, decode_image(raw, limits, what)


def video_data_url(url: str, limits: MediaLimits, what: str = "the video") -> tuple[str, bytes]:
    """A ``data:video/...;base64,`` URL → (its MIME type, the file's bytes); the bytes are not decoded here."""
    mime, raw = parse_data_url(url, what, limits.max_video_bytes)
    if not mime.startswith("video/"):
        shown = f"of type {mime!r}" if mime else "without a type"
        raise MediaError(
            f"{what} is a data URL {shown}; send data:video/mp4;base64,... (or another video type)"
        )
    return mime, raw


def local_file_url(url: str, limits: MediaLimits, what: str = "the video") -> Path:
    """A ``file://`` URL → the file it names, only inside ``limits.local_media_path`` (after resolving
    symlinks and ``..``), else a 400 naming the server option."""
    if limits.local_media_path is None:
        raise MediaError(
            f"{what} is a file:// URL, which this server does not read; send a base64 data URL, or start the "
            "server with --allowed-local-media-path FOLDER"
        )
    root = Path(limits.local_media_path).resolve()
    path = Path(unquote(url[len("file://") :])).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise MediaError(f"{what}: {url} is not a file inside the server's local media folder")
    return path


def check_video(source: bytes | str, what: str = "the video") -> None:
    """Refuse a video that cannot be read (one frame is decoded; duration and size within omnifuse.video's
    bounds)."""
    from omnifuse.video.io import Sampling, load_video

    try:
        load_video(source, Sampling(uniform=1), name=what)
    except OmnifuseError as exc:
        raise MediaError(str(exc)) from None
