"""Media from API requests: data URLs always, http(s) URLs only when the server allows remote media.

Everything here treats its input as hostile. Data URLs and base64 payloads are decoded by
omnifuse.data.inline_media (shared with ``omnifuse data convert openai``): sizes are checked before
decoding and pixel counts before pixels are decoded. Remote fetches refuse hosts that resolve to
loopback, private, link-local, multicast or reserved addresses (server-side request forgery), connect
to the checked address itself (no second DNS lookup to rebind), do not follow redirects (each hop
would need the same check), and stop reading past the byte limit.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from PIL import Image

from omnifuse.data.inline_media import (  # noqa: F401 (the server's media API, shared with the data converter)
    MediaError,
    MediaLimits,
    decode_image,
    image_data_url,
    is_data_url,
    load_audio_data,
    parse_data_url,
)


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
    if is_data_url(url):
        return image_data_url(url, limits, what)[1]
    if url[:7].lower() == "http://" or url[:8].lower() == "https://":
        if not limits.allow_remote:
            raise MediaError(
                f"{what} is a remote URL, which this server does not fetch; send it as a base64 data URL "
                "(data:image/png;base64,...) or start the server with --allow-remote-media"
            )
        return decode_image(fetch_remote(url, limits, what), limits, what)
    raise MediaError(f"{what} must be a data: URL (or an http(s) URL where allowed), got {url[:40]!r}")
