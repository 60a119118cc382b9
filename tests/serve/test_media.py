"""Media decoding treats every byte from a client as hostile."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from omnifuse.serve.media import MediaError, MediaLimits, check_public_host, decode_image, load_image_url


def png_bytes(size=(8, 6), color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose header claims another size (CRC fixed): a decompression-bomb header."""
    raw = bytearray(png_bytes((1, 1)))
    ihdr = raw.index(b"IHDR")
    raw[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(raw[ihdr : ihdr + 17]))
    raw[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(raw)


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def test_a_valid_data_url_decodes_to_the_same_pixels():
    img = load_image_url(data_url(png_bytes()), MediaLimits())
    assert img.size == (8, 6) and img.mode == "RGB" and img.getpixel((3, 3)) == (10, 200, 30)


@pytest.mark.parametrize(
    ("raw", "status", "needle"),
    [
        (b"", 400, "empty"),
        (png_bytes()[:40], 400, "could not be decoded"),  # truncated
        (b"GIF89a" + b"\x00" * 10, 400, "could not be decoded"),
        (png_claiming(100_000, 100_000), 413, "pixels"),
        (png_claiming(0, 5), 400, "could not be decoded"),
    ],
)
def test_bad_image_bytes(raw, status, needle):
    with pytest.raises(MediaError) as exc:
        decode_image(raw, MediaLimits())
    assert exc.value.status == status and needle in str(exc.value)


def test_size_limits_apply_before_decoding():
    limits = MediaLimits(max_bytes=100)
    with pytest.raises(MediaError) as exc:
        load_image_url(data_url(b"x" * 1000), limits)
    assert exc.value.status == 413
    with pytest.raises(MediaError) as exc:
        decode_image(png_bytes((64, 64)), MediaLimits(max_pixels=1000))
    assert exc.value.status == 413 and "64×64" in str(exc.value)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("data:image/png;base64,***", "not valid base64"),
        ("data:image/png,rawtext", "base64 data URL"),
        ("data:image/png;base64", "without a ','"),
        (data_url(png_bytes(), "text/plain"), "not an image"),
        ("http://example.com/x.png", "--allow-remote-media"),
        ("ftp://example.com/x.png", "data: URL"),
        ("", "empty URL"),
    ],
)
def test_bad_urls(url, needle):
    with pytest.raises(MediaError) as exc:
        load_image_url(url, MediaLimits())
    assert needle in str(exc.value)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "10.1.2.3",
        "192.168.0.5",
        "169.254.169.254",
        "::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
    ],
)
def test_remote_media_refuses_non_public_addresses(host):
    with pytest.raises(MediaError) as exc:
        check_public_host(host, 80)
    assert exc.value.status == 403 and "non-public" in str(exc.value)


def test_remote_media_accepts_a_public_address_and_checks_before_connecting():
    check_public_host("8.8.8.8", 443)  # a literal public address resolves offline
    with pytest.raises(MediaError) as exc:  # the check runs before any connection is attempted
        load_image_url("http://127.0.0.1:1/x.png", MediaLimits(allow_remote=True))
    assert exc.value.status == 403


def test_remote_fetch_connects_to_the_checked_address_and_refuses_redirects_and_big_files(monkeypatch):
    import http.server
    import threading

    from omnifuse.serve import media

    seen_hosts = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen_hosts.append(self.headers["Host"])
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1/secret")
                self.end_headers()
                return
            body = png_bytes() if self.path == "/img.png" else b"\0" * 5000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    # Pretend "images.example" is a public host that resolves to this local test server.
    monkeypatch.setattr(media, "check_public_host", lambda host, p: "127.0.0.1")
    limits = MediaLimits(allow_remote=True, max_bytes=4000)
    try:
        img = load_image_url(f"http://images.example:{port}/img.png", limits)
        assert img.size == (8, 6)
        assert seen_hosts == [f"images.example:{port}"]
        with pytest.raises(MediaError, match="HTTP 302"):
            load_image_url(f"http://images.example:{port}/redirect", limits)
        with pytest.raises(MediaError, match="larger than the limit") as exc:
            load_image_url(f"http://images.example:{port}/big", limits)
        assert exc.value.status == 413
    finally:
        httpd.shutdown()
