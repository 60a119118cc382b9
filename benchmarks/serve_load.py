"""Load test of `omnifuse serve`: many concurrent requests, a share of them malformed.

Starts the server on a trained run (default: the quickstart's), then

1. sends ``--sequential`` valid requests one at a time (the reference throughput), and
2. sends ``--requests`` requests from ``--concurrency`` concurrent clients, ``--malformed`` of them
   hostile, of the 31 kinds in ``HOSTILE`` taken in turn: bad JSON, wrong types and ranges, NaN and
   out-of-range seeds, undecodable or oversized images, a 20 MB text, a 26 MiB body, a prompt over the
   context, and a valid 7k-token prompt that must not stall the others,

and prints the status counts (there must be no 5xx, every valid request must get 200 and every hostile
kind its expected status), p50/p99 latency of the valid requests, the accuracy of their answers on the
easy-vqa questions, the throughput ratio concurrent/sequential (dynamic batching must make it > 1),
and the server's RSS before and after the concurrent load (read from /proc).

    .venv/bin/python benchmarks/serve_load.py --run runs/quickstart
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from omnifuse.data.sample import TextPart
from omnifuse.data.sources import load_data
from omnifuse.eval.vqa import exact_match


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def valid_requests(n: int, model: str, seed: int) -> list[tuple[dict, str]]:
    samples = load_data("easy-vqa:test")
    rng = random.Random(seed)
    out = []
    cache: dict[Path, str] = {}
    for s in rng.sample(samples, n):
        image = s.images()[0]
        if image not in cache:
            cache[image] = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        question = next(p.text for m in s.prompt() for p in m.parts if isinstance(p, TextPart))
        body = {
            "model": model,
            "max_tokens": 6,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": cache[image]}},
                        {"type": "text", "text": question},
                    ],
                }
            ],
        }
        out.append((body, s.answer()))
    return out


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _chat(model: str, content, **extra) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], **extra}).encode()


def _image(url: str) -> list[dict]:
    return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what shape?"}]


_Q = "what shape is in the image?"
_BIG: dict[str, bytes] = {}  # the multi-megabyte bodies are built once and sent many times


def _big(key: str, make) -> bytes:
    if key not in _BIG:
        _BIG[key] = make()
    return _BIG[key]


# (name, body) for the hostile kinds: each is the client's mistake (a 4xx is the right answer), except
# "long prompt", a valid 7k-token prompt that must not stall the others (200, scored apart).
HOSTILE: list[tuple[str, Callable[[random.Random, str], bytes]]] = [
    ("truncated JSON", lambda r, m: b'{"model": "' + m.encode() + b'", "messages": ['),
    ("random bytes", lambda r, m: os.urandom(r.randrange(1, 400))),
    ("not an object", lambda r, m: b"[1, 2, 3]"),
    ("deep nesting", lambda r, m: b"[" * 100_000 + b"]" * 100_000),
    ("messages a string", lambda r, m: json.dumps({"model": m, "messages": "hi"}).encode()),
    ("no messages", lambda r, m: json.dumps({"model": m, "messages": []}).encode()),
    ("unknown model", lambda r, m: _chat("no-such-model", _Q)),
    ("unknown role", lambda r, m: json.dumps({"model": m, "messages": [{"role": "robot", "content": "hi"}]}).encode()),
    ("last message from the assistant", lambda r, m: json.dumps({"model": m, "messages": [{"role": "assistant", "content": "hi"}]}).encode()),
    ("unknown content part", lambda r, m: _chat(m, [{"type": "video", "video": "x"}])),
    ("max_tokens -3", lambda r, m: _chat(m, _Q, max_tokens=-3)),
    ("max_tokens 1.5", lambda r, m: _chat(m, _Q, max_tokens=1.5)),
    ("max_tokens over the limit", lambda r, m: _chat(m, _Q, max_tokens=10**6)),
    ("n = 2", lambda r, m: _chat(m, _Q, n=2)),
    ("five stop strings", lambda r, m: _chat(m, _Q, stop=list("abcde"))),
    ("temperature 3", lambda r, m: _chat(m, _Q, temperature=3)),
    ("top_p 0", lambda r, m: _chat(m, _Q, top_p=0)),
    ("seed 2**64, sampled", lambda r, m: _chat(m, _Q, temperature=1.0, seed=2**64)),
    ("seed -2**63 - 1", lambda r, m: _chat(m, _Q, temperature=0.7, seed=-(2**63) - 1)),
    ("temperature NaN", lambda r, m: _chat(m, _Q)[:-1] + b', "temperature": NaN}'),
    ("top_p Infinity", lambda r, m: _chat(m, _Q)[:-1] + b', "top_p": Infinity}'),
    ("undecodable image", lambda r, m: _chat(m, _image("data:image/png;base64," + base64.b64encode(os.urandom(r.randrange(10, 500))).decode()))),
    ("invalid base64", lambda r, m: _chat(m, _image("data:image/png;base64,!!!!"))),
    ("decompression bomb", lambda r, m: _chat(m, _image("data:image/png;base64," + base64.b64encode(_png_claiming(100_000, 100_000)).decode()))),
    ("file URL", lambda r, m: _chat(m, _image("file:///etc/passwd"))),
    ("remote URL (not allowed)", lambda r, m: _chat(m, _image("https://169.254.169.254/latest/meta-data"))),
    ("audio for a model without audio", lambda r, m: _chat(m, [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}])),
    ("over the context in tokens", lambda r, m: _chat(m, "word " * 9000)),
    ("20 MB of text", lambda r, m: _big("20mb", lambda: _chat(m, "word " * (4 * 1024**2)))),
    ("26 MiB body", lambda r, m: _big("26mib", lambda: _chat(m, "x" * (26 * 1024**2)))),
    ("long prompt (7k tokens, valid)", lambda r, m: _chat(m, "word " * 7000, max_tokens=4)),
]  # fmt: skip
LONG = "long prompt (7k tokens, valid)"


def hostile_requests(n: int, model: str, seed: int) -> list[tuple[bytes, str]]:
    """``n`` hostile bodies, the kinds taken in turn (each about n / 31 times)."""
    rng = random.Random(seed)
    return [(HOSTILE[i % len(HOSTILE)][1](rng, model), HOSTILE[i % len(HOSTILE)][0]) for i in range(n)]


def server_rss_mb(pid: int) -> tuple[float, float]:
    """The server's resident memory now and at its peak (VmRSS, VmHWM), in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def send(client: httpx.AsyncClient, body: bytes) -> tuple[int, float, dict | None]:
    t0 = time.perf_counter()
    try:
        res = await client.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    except httpx.TransportError:  # e.g. the server answered 413 and closed before the body was sent
        return 0, time.perf_counter() - t0, None
    dt = time.perf_counter() - t0
    try:
        payload = res.json()
    except ValueError:
        payload = None
    return res.status_code, dt, payload


# A job: (body, the expected answer for a valid easy-vqa question or None, its kind).
Jobs = list[tuple[bytes, str | None, str]]


async def run_load(url: str, jobs: Jobs, concurrency: int):
    results: list[tuple[int, float, dict | None, str | None, str]] = [None] * len(jobs)  # type: ignore[list-item]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(jobs)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                status, dt, payload = await send(client, jobs[i][0])
                results[i] = (status, dt, payload, jobs[i][1], jobs[i][2])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return results, wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summarize(name: str, results, wall: float) -> dict:
    statuses = Counter(r[0] for r in results)
    valid = [r for r in results if r[3] is not None]
    lat = [r[1] for r in valid]
    correct = sum(r[0] == 200 and exact_match(r[2]["choices"][0]["message"]["content"], r[3]) for r in valid)
    row = {
        "name": name,
        "requests": len(results),
        "valid": len(valid),
        "statuses": dict(sorted(statuses.items())),
        "5xx": sum(n for s, n in statuses.items() if s >= 500),
        "valid_not_200": sum(r[0] != 200 for r in valid),
        "p50_s": round(statistics.median(lat), 3),
        "p99_s": round(percentile(lat, 0.99), 3),
        "valid_per_s": round(len(valid) / wall, 2),
        "accuracy": round(correct / len(valid), 3),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def hostile_report(results) -> tuple[dict[str, dict[int, int]], list[str]]:
    """Statuses per hostile kind, and the kinds answered other than expected (4xx; 200 for the long
    prompt; a refused oversized body may also end as a closed connection, 0)."""
    by_kind: dict[str, Counter] = {}
    for status, _, _, answer, kind in results:
        if answer is None:
            by_kind.setdefault(kind, Counter())[status] += 1
    wrong = []
    for kind, counts in by_kind.items():
        ok = {200} if kind == LONG else ({413, 0} if "MiB" in kind else set(range(400, 500)))
        if any(s not in ok for s in counts):
            wrong.append(f"{kind}: {dict(counts)}")
    return {k: dict(sorted(c.items())) for k, c in sorted(by_kind.items())}, wrong


def start_server(args, port: int, model: str) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("omnifuse")
    return subprocess.Popen(
        [str(exe), "serve", str(args.run), "--port", str(port), "--model-name", model, "--log-level", "warning",
         "--max-batch-size", str(args.max_batch_size), "--max-queue", str(4 * args.concurrency)],
    )  # fmt: skip


def wait_healthy(server: subprocess.Popen, url: str) -> bool:
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def build_jobs(args, model: str) -> tuple[Jobs, Jobs, int]:
    n_bad = int(round(args.requests * args.malformed))
    valid = valid_requests(args.requests - n_bad + args.sequential, model, args.seed)
    seq_jobs: Jobs = [(json.dumps(b).encode(), a, "valid") for b, a in valid[: args.sequential]]
    load_jobs: Jobs = [(json.dumps(b).encode(), a, "valid") for b, a in valid[args.sequential :]]
    load_jobs += [(body, None, kind) for body, kind in hostile_requests(n_bad, model, args.seed)]
    random.Random(args.seed).shuffle(load_jobs)
    return seq_jobs, load_jobs, n_bad


def report(args, seq: dict, load: dict, n_bad: int, rss: dict, alive: dict, load_results) -> bool:
    ratio = load["valid_per_s"] / seq["valid_per_s"]
    kinds, wrong = hostile_report(load_results)
    long_lat = [r[1] for r in load_results if r[4] == LONG]
    print(json.dumps({"hostile_statuses": kinds, "server_rss_mb": rss}, indent=1))
    print(
        f"\n5xx: {load['5xx']} of {load['requests']} ({n_bad} hostile of {len(HOSTILE)} kinds; statuses "
        f"{load['statuses']}); valid requests not answered 200: {load['valid_not_200']}; "
        f"kinds answered otherwise than expected: {wrong or 'none'}\n"
        f"server alive after the load: {alive['status'] == 'ok'} ({alive['batches']} batches)\n"
        f"latency of valid requests under load: p50 {load['p50_s']} s, p99 {load['p99_s']} s "
        f"(sequential p50 {seq['p50_s']} s); the {len(long_lat)} long prompts: "
        f"p50 {statistics.median(long_lat) if long_lat else float('nan'):.2f} s\n"
        f"throughput of valid requests: {load['valid_per_s']}/s under load vs {seq['valid_per_s']}/s "
        f"sequential: ratio {ratio:.2f}\n"
        f"answer accuracy: {load['accuracy']:.1%} under load, {seq['accuracy']:.1%} sequential\n"
        f"server RSS: {rss['before']:.0f} MB before the load, {rss['after']:.0f} MB after "
        f"(peak {rss['peak']:.0f} MB)"
    )
    return load["5xx"] == 0 and seq["5xx"] == 0 and load["valid_not_200"] == 0 and not wrong


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--malformed", type=float, default=0.2, help="share of hostile requests")
    ap.add_argument("--sequential", type=int, default=100)
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.run / "model.safetensors").is_file():
        print(
            f"{args.run} holds no trained model; run `make demo` (or omnifuse quickstart) first",
            file=sys.stderr,
        )
        return 2

    port, model = free_port(), "bench"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the server
    server = start_server(args, port, model)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(server, url):
            print("the server did not start", file=sys.stderr)
            return 1
        seq_jobs, load_jobs, n_bad = build_jobs(args, model)
        asyncio.run(run_load(url, seq_jobs[:4], 1))  # warm-up
        seq = summarize("sequential", *asyncio.run(run_load(url, seq_jobs, 1)))
        rss = {"before": server_rss_mb(server.pid)[0]}
        load_results, wall = asyncio.run(run_load(url, load_jobs, args.concurrency))
        load = summarize(f"concurrency {args.concurrency}", load_results, wall)
        time.sleep(2)  # the last responses' buffers are let go
        rss["after"], rss["peak"] = server_rss_mb(server.pid)
        alive = httpx.get(f"{url}/health", timeout=10).json()
        return 0 if report(args, seq, load, n_bad, rss, alive, load_results) else 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
