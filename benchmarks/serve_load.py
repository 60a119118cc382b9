"""Load test of `omnifuse serve`: many concurrent requests, a share of them malformed.

Starts the server on a trained run (default: the quickstart's), then

1. sends ``--sequential`` valid requests one at a time (the reference throughput), and
2. sends ``--requests`` requests from ``--concurrency`` concurrent clients, ``--malformed`` of them
   broken in assorted ways (bad JSON, wrong types, undecodable or oversized images, unknown model),

and prints the status counts (there must be no 5xx), p50/p99 latency of the valid requests, the
accuracy of their answers on the easy-vqa questions, and the throughput ratio concurrent/sequential
(dynamic batching must make it > 1).

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
import subprocess
import sys
import time
from collections import Counter
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


def malformed_request(rng: random.Random, model: str) -> bytes:
    ok = {"role": "user", "content": "what shape is in the image?"}
    kind = rng.randrange(6)
    if kind == 0:
        return b'{"model": "' + model.encode() + b'", "messages": ['  # truncated JSON
    if kind == 1:
        return json.dumps({"model": model, "messages": "hi"}).encode()
    if kind == 2:
        url = "data:image/png;base64," + base64.b64encode(os.urandom(rng.randrange(10, 500))).decode()
        part = {"type": "image_url", "image_url": {"url": url}}
        return json.dumps({"model": model, "messages": [{"role": "user", "content": [part]}]}).encode()
    if kind == 3:
        return json.dumps({"model": "no-such-model", "messages": [ok]}).encode()
    if kind == 4:
        return json.dumps({"model": model, "messages": [ok], "max_tokens": -3}).encode()
    return os.urandom(rng.randrange(1, 400))


async def send(client: httpx.AsyncClient, body: bytes) -> tuple[int, float, dict | None]:
    t0 = time.perf_counter()
    res = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    dt = time.perf_counter() - t0
    try:
        payload = res.json()
    except ValueError:
        payload = None
    return res.status_code, dt, payload


async def run_load(url: str, jobs: list[tuple[bytes, str | None]], concurrency: int):
    results: list[tuple[int, float, dict | None, str | None]] = [None] * len(jobs)  # type: ignore[list-item]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(jobs)):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                status, dt, payload = await send(client, jobs[i][0])
                results[i] = (status, dt, payload, jobs[i][1])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return results, wall


def summarize(name: str, results, wall: float) -> dict:
    statuses = Counter(r[0] for r in results)
    valid = [r for r in results if r[3] is not None]
    lat = sorted(r[1] for r in valid)
    correct = sum(r[0] == 200 and exact_match(r[2]["choices"][0]["message"]["content"], r[3]) for r in valid)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    row = {
        "name": name,
        "requests": len(results),
        "valid": len(valid),
        "statuses": dict(sorted(statuses.items())),
        "5xx": sum(n for s, n in statuses.items() if s >= 500),
        "p50_s": round(statistics.median(lat), 3),
        "p99_s": round(p99, 3),
        "valid_per_s": round(len(valid) / wall, 2),
        "accuracy": round(correct / len(valid), 3),
        "wall_s": round(wall, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--malformed", type=float, default=0.2)
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
    exe = Path(sys.executable).with_name("omnifuse")
    server = subprocess.Popen(
        [str(exe), "serve", str(args.run), "--port", str(port), "--model-name", model, "--log-level", "warning",
         "--max-batch-size", str(args.max_batch_size), "--max-queue", str(4 * args.concurrency)],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("the server did not start", file=sys.stderr)
                return 1
            time.sleep(0.5)

        rng = random.Random(args.seed)
        n_bad = int(round(args.requests * args.malformed))
        valid = valid_requests(args.requests - n_bad + args.sequential, model, args.seed)
        seq_jobs = [(json.dumps(b).encode(), a) for b, a in valid[: args.sequential]]
        load_jobs: list[tuple[bytes, str | None]] = [
            (json.dumps(b).encode(), a) for b, a in valid[args.sequential :]
        ]
        load_jobs += [(malformed_request(rng, model), None) for _ in range(n_bad)]
        rng.shuffle(load_jobs)

        asyncio.run(run_load(url, seq_jobs[:4], 1))  # warm-up
        seq = summarize("sequential", *asyncio.run(run_load(url, seq_jobs, 1)))
        load = summarize(
            f"concurrency {args.concurrency}", *asyncio.run(run_load(url, load_jobs, args.concurrency))
        )
        alive = httpx.get(f"{url}/health", timeout=10).json()
        ratio = load["valid_per_s"] / seq["valid_per_s"]
        print(
            f"\n5xx: {load['5xx']} of {load['requests']} ({n_bad} malformed; statuses {load['statuses']}); "
            f"server alive after the load: {alive['status'] == 'ok'} ({alive['batches']} batches)\n"
            f"latency of valid requests under load: p50 {load['p50_s']} s, p99 {load['p99_s']} s "
            f"(sequential p50 {seq['p50_s']} s)\n"
            f"throughput of valid requests: {load['valid_per_s']}/s under load vs {seq['valid_per_s']}/s "
            f"sequential: ratio {ratio:.2f}\n"
            f"answer accuracy: {load['accuracy']:.1%} under load, {seq['accuracy']:.1%} sequential"
        )
        return 0 if load["5xx"] == 0 and seq["5xx"] == 0 else 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main())
