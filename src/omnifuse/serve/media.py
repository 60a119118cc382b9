"""Media from API requests: data URLs always, http(s) URLs only when the server allows remote media.

Everything here treats its input as hostile. Sizes are checked before decoding (bytes of the payload)
and before pixels are decoded (the image header's width × height against a pixel budget), so a
decompression bomb is refused before it costs memory. Remote fetches refuse hosts that resolve to
loopback, private, link-local, multicast or reserved addresses (server-side request forgery), connect
to the checked address itself (no second DNS lookup to rebind), do not follow redirects (each hop
would need the same check), and stop reading past the byte limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnifuse.errors import OmnifuseError


class MediaError(ValueError):
    """A media item a client sent cannot be used; the message says why (it becomes a 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 10 * 1024**2  # per media item, after base64 decoding
    max_pixels: int = 40_000_000  # width × height
    allow_remote: bool = False
    remote_timeout_s: float = 10.0


def _b64decode(data: str, what: str, limit: int) -> bytes:
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


def load_audio_data(
    data: str, limits: MediaLimits, max_seconds: float, what: str = "the audio"
) -> np.ndarray:
    """Base64 wav/mp3 bytes → 16 kHz mono waveform, refusing oversized, unreadable, silent and too long clips."""
    from omnifuse.audio.io import load_audio

    raw = _b64decode(data, what, limits.max_bytes)
    try:
        return load_audio(raw, max_seconds=max_seconds)
    except OmnifuseError as exc:
        raise MediaError(f"{what}: {str(exc).replace('the data', 'the clip', 1)}") from None


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
    return params[0].lower(), _b64decode(payload, what, limit)


def check_public_host(host: str, port: int) -> str:
    """Refuse hosts that resolve to any non-public address (loopback, private, link-local, ...);
    returns the address to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise MediaError(f"the image host {host!r} could not be resolved") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if not addr.is_global or addr.is_multicast:
            raise MediaError(
                f"image URLs may not point at non-public addresses ({host} resolves to {addr}); "
                "send the image as a data URL instead",
                status=403,
            )
    return infos[0][4][0]


def fetch_remote(url: str, limits: MediaLimits, what: str) -> bytes:
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MediaError(f"{what} must be a data: URL or an http(s) URL, got {url[:80]!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    # Connect to the address that was checked, not to a second lookup of the name (which a hostile
    # DNS server could answer differently); the Host header and TLS server name stay the original
    # host. trust_env=False: no proxy from the environment, which would look the name up again.
    addr = check_public_host(parts.hostname, port)
    netloc = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = parts.netloc.rpartition("@")[2]
    chunks, size = [], 0
    try:
        with (
            httpx.Client(trust_env=False, timeout=limits.remote_timeout_s, follow_redirects=False) as http,
            http.stream(
                "GET", pinned, headers={"Host": host_header}, extensions={"sni_hostname": parts.hostname}
            ) as resp,
        ):
            if resp.status_code != 200:
                raise MediaError(f"fetching {what} returned HTTP {resp.status_code}")
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise MediaError(
                        f"{what} is larger than the limit of {limits.max_bytes} bytes", status=413
                    )
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise MediaError(f"fetching {what} failed ({type(exc).__name__})") from None
    return b"".join(chunks)


def load_image_url(url: str, limits: MediaLimits, what: str = "the image") -> Image.Image:
    """An OpenAI ``image_url.url`` → RGB image."""
    if not isinstance(url, str) or not url:
        raise MediaError(f"{what} has an empty URL")
    if url[:5].lower() == "data:":
        mime, raw = parse_data_url(url, what, limits.max_bytes)
        if mime and not mime.startswith("image/"):
            raise MediaError(f"{what} is a data URL of type {mime!r}, not an image")
        return decode_image(raw, limits, what)
    if url[:7].lower() == "http://" or url[:8].lower() == "https://":
        if not limits.allow_remote:
            raise MediaError(
                f"{what} is a remote URL, which this server does not fetch; send it as a base64 data URL "
                "(data:image/png;base64,...) or start the server with --allow-remote-media"
            )
        return decode_image(fetch_remote(url, limits, what), limits, what)
    raise MediaError(f"{what} must be a data: URL (or an http(s) URL where allowed), got {url[:40]!r}")
