"""Fuzzing the server with generated malformed requests: only 4xx answers, and it stays up."""

from __future__ import annotations

import base64
import io
import json
import random
import string
from collections import Counter

import httpx
from PIL import Image

from serve.test_media import png_bytes, png_claiming

N_REQUESTS = 240


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def bad_media(rng: random.Random) -> str:
    png = png_bytes((16, 16))
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16)).save(jpeg, format="JPEG")
    choices = [
        "data:image/png;base64," + b64(png[: rng.randrange(1, len(png) - 1)]),  # truncated
        "data:image/png;base64,",  # zero bytes
        "data:image/png;base64,"
        + b64(png_claiming(rng.randrange(30_000, 200_000), rng.randrange(30_000, 200_000))),
        "data:image/jpeg;base64," + b64(jpeg.getvalue()[: rng.randrange(10, 200)]),
        "data:image/png;base64," + b64(png)[:-3] + "!!!",  # wrong base64
        "data:image/png;base64," + b64(png)[1:],  # bad padding
        "data:image/png;base64," + b64(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))),
        "data:application/pdf;base64," + b64(png),
        "data:;base64," + b64(b"\x89PNG\r\n\x1a\n" + bytes(40)),
        "http://127.0.0.1:9/secret.png",
        "https://169.254.169.254/latest/meta-data",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "".join(rng.choice(string.printable) for _ in range(rng.randrange(0, 60))),
    ]
    return rng.choice(choices)


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["null", "bool", "int", "float", "str", "list", "dict"] if depth < 3 else ["int", "str", "null"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**63, -(2**40), rng.randrange(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.5, -3.2, 1e308, 1e-300])
    if kind == "str":
        return "".join(rng.choice(string.printable + "é中\u2028\x00") for _ in range(rng.randrange(0, 20)))
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["model", "messages", "role", "content", "type", "x"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}  # fmt: skip


def malformed(rng: random.Random) -> tuple[bytes, dict]:
    """One malformed request body (and extra headers): every one of them is the client's mistake."""
    ok_msg = {"role": "user", "content": "hi"}
    image_msg = lambda url: {  # noqa: E731
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what?"}],
    }
    kind = rng.randrange(14)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200))), {}
    if kind == 1:
        return json.dumps(random_json(rng)).encode(), {}
    if kind == 2:
        full = json.dumps({"model": "tiny", "messages": [ok_msg]}).encode()
        return full[: rng.randrange(0, len(full))], {}
    if kind == 3:
        return json.dumps({"model": "tiny", "messages": [image_msg(bad_media(rng))]}).encode(), {}
    if kind == 4:
        msg = {"role": rng.choice(["tool", "function", "", None, 5, "USER"]), "content": "hi"}
        return json.dumps({"model": "tiny", "messages": [msg]}).encode(), {}
    if kind == 5:
        part = rng.choice([
            {"type": "video_url", "video_url": {"url": "x"}},
            {"type": "text"},
            {"type": "text", "text": 5},
            {"type": "image_url", "image_url": "not-an-object"},
            {"type": "image_url"},
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}},
            {"type": "input_audio", "input_audio": {"data": b64(b"RIFF"), "format": "wav"}},
            "just a string",
            None,
        ])  # fmt: skip
        return json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [part]}]}).encode(), {}
    if kind == 6:
        field, value = rng.choice([
            ("max_tokens", rng.choice([0, -5, "ten", 10**9, 1.5])),
            ("temperature", rng.choice([-1, 2.5, "hot", None])),
            ("top_p", rng.choice([0, 1.5, -0.1])),
            ("stop", rng.choice([["a"] * 5, [""], 7, [None]])),
            ("n", rng.choice([0, 2, 10])),
            ("stream", rng.choice(["yes", 3, {}])),
            ("seed", rng.choice(["x", 1.5, []])),
            ("modalities", rng.choice([["video"], "audio", [1]])),
            ("messages", rng.choice([[], {}, "hi", None, [None], [ok_msg, 3]])),
            ("model", rng.choice(["other", None, 3, ""])),
        ])  # fmt: skip
        return json.dumps({"model": "tiny", "messages": [ok_msg], field: value}).encode(), {}
    if kind == 7:
        return json.dumps(
            {"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]}
        ).encode(), {}
    if kind == 8:
        return json.dumps(
            {"model": "tiny", "messages": [{"role": "user", "content": "word " * 500}]}
        ).encode(), {}
    if kind == 9:
        return json.dumps(
            {"model": "tiny", "messages": [image_msg("data:image/png;base64," + b64(png_bytes()))] * 6}
        ).encode(), {}
    if kind == 10:
        return b"x" * (2 * 1024**2 + rng.randrange(1, 1000)), {}  # over the body limit
    if kind == 11:
        return b'{"model": "tiny", "messages": [' * rng.randrange(1, 2000), {}  # deep nesting, unterminated
    if kind == 12:
        return json.dumps(
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "system",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64," + b64(png_bytes())},
                            }
                        ],
                    },
                    ok_msg,
                ],
            }
        ).encode(), {}
    return b'{"model": "tiny", "messages": [{"role": "user", "content": "\xff\xfe"}]}', {}  # not UTF-8


def test_malformed_requests_get_4xx_and_the_server_stays_up(server):
    rng = random.Random(1234)
    statuses = Counter()
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for _ in range(N_REQUESTS):
            body, headers = malformed(rng)
            res = http.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json", **headers}
            )
            statuses[res.status_code] += 1
            assert 400 <= res.status_code < 500, (res.status_code, res.text[:300], body[:200])
            err = res.json()["error"]
            assert err["message"] and err["type"]
        assert server.alive()
        ok = http.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert ok.status_code == 200
    assert sum(statuses.values()) == N_REQUESTS and {400, 413} <= set(statuses)
