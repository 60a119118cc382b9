"""Bounds on the work one request can cost: over-long text is refused before it is tokenized, a long
prompt is prefilled in chunks (with the same answer) and runs in its own lane, beside the short ones."""

from __future__ import annotations

import asyncio
import time

import httpx

from omnifuse.generation.engine import GenerationConfig
from omnifuse.serve.scheduler import Done, Job, Scheduler
from omnifuse.serve.server import ServerSettings
from serve.conftest import running_server, tiny_engine
from serve.test_scheduler import collect, prompt


def test_a_20_mb_text_body_is_refused_before_tokenizing(monkeypatch):
    with running_server(ServerSettings(model_name="tiny")) as s:  # the default 25 MiB body limit
        encodes = []
        real = s.service.engine.processor.encode
        monkeypatch.setattr(
            s.service.engine.processor, "encode", lambda *a, **k: encodes.append(1) or real(*a, **k)
        )
        text = "word " * (4 * 1024**2)  # 20 MiB
        t0 = time.perf_counter()
        res = httpx.post(
            f"{s.url}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": text}]},
            timeout=60,
        )
        elapsed = time.perf_counter() - t0
        assert res.status_code == 400, res.text
        err = res.json()["error"]
        assert err["code"] == "context_length_exceeded" and "characters" in err["message"]
        assert encodes == []  # refused on the character count, with no tokenizer pass
        assert elapsed < 1.0, elapsed  # order of work, not speed: tokenizing it takes tens of seconds
        # The same text split over several messages and content parts counts as a whole.
        parts = [{"type": "text", "text": "word " * 1000}] * 3
        many = [{"role": "user", "content": parts}, {"role": "assistant", "content": "x" * 5000}]
        res = httpx.post(
            f"{s.url}/v1/chat/completions",
            json={"model": "tiny", "messages": [*many, {"role": "user", "content": "ok?"}]},
            timeout=60,
        )
        assert res.json()["error"]["code"] == "context_length_exceeded" and encodes == []
        assert s.alive()


def test_text_under_the_character_bound_is_still_checked_in_tokens():
    engine = tiny_engine()
    chars = engine.context_length * engine.max_token_chars
    with running_server(ServerSettings(model_name="tiny"), engine) as s:
        text = "hi " * (engine.context_length // 2)  # few characters, too many tokens
        assert len(text) < chars
        res = httpx.post(
            f"{s.url}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": text}]},
            timeout=60,
        )
        assert res.status_code == 400 and "tokens" in res.json()["error"]["message"]


# ------------------------------------------------------------------ lanes
def fake_job(n_tokens: int, loop) -> Job:
    from omnifuse.processing import Encoded

    return Job(Encoded("x", [5] * n_tokens, [-100] * n_tokens), GenerationConfig(1), [], loop)


def test_batches_keep_to_the_prefill_budget_and_never_mix_long_with_short():
    loop = asyncio.new_event_loop()
    scheduler = Scheduler(tiny_engine(), max_batch_size=4, prefill_chunk=10, prefill_budget=40)
    lengths = [5, 200, 9, 5, 30, 6, 8, 25, 7]
    for n in lengths:
        scheduler._pending.append(fake_job(n, loop))
    short = scheduler._form(long=False)
    assert [j.prompt_tokens for j in short.jobs] == [5, 9, 5, 6]  # four rows × 9 columns ≤ 40
    long = scheduler._form(long=True)
    assert [j.prompt_tokens for j in long.jobs] == [200]  # over the budget: alone
    assert [j.prompt_tokens for j in scheduler._form(long=True).jobs] == [30]  # 2 × 30 > 40
    assert [j.prompt_tokens for j in scheduler._form(long=False).jobs] == [8, 7]
    assert [j.prompt_tokens for j in scheduler._form(long=True).jobs] == [25]
    assert not scheduler._pending
    loop.close()


def test_a_short_request_does_not_wait_for_a_long_prompt(monkeypatch):
    """A long prompt is being prefilled (slowly: each step is made to take 20 ms) when a short request
    arrives. With one batch at a time the short one would wait for the whole long answer; in its own
    lane it finishes first, and both answers are their own."""
    engine = tiny_engine()
    scheduler = Scheduler(engine, prefill_chunk=20)
    real = engine.stream

    def slow(*args, **kwargs):
        for step in real(*args, **kwargs):
            time.sleep(0.02)
            yield step

    monkeypatch.setattr(engine, "stream", slow)
    long_text, short_text = "the quick brown fox " * 10, "hi"
    cfg_long, cfg_short = GenerationConfig(12, 1.0, seed=1), GenerationConfig(3, 1.0, seed=2)
    order: list[str] = []

    async def main():
        loop = asyncio.get_running_loop()
        long_job = Job(engine.processor.encode(prompt(long_text), True), cfg_long, [], loop)
        assert long_job.prompt_tokens > 3 * 20  # at least four chunks
        scheduler.start()
        scheduler.submit(long_job)
        await asyncio.sleep(0.1)  # the long one is well into its prefill
        short_job = Job(engine.processor.encode(prompt(short_text), True), cfg_short, [], loop)
        assert short_job.prompt_tokens <= 20  # one chunk: a short request
        scheduler.submit(short_job)

        async def run(job, name):
            result = await collect(job)
            order.append(name)
            return result

        return await asyncio.gather(run(long_job, "long"), run(short_job, "short"))

    try:
        (_, long_done), (_, short_done) = asyncio.run(main())
    finally:
        scheduler.shutdown()
    assert order == ["short", "long"]
    assert isinstance(long_done, Done) and isinstance(short_done, Done)
    assert long_done.text == engine.generate([prompt(long_text)], cfg_long)[0]
    assert short_done.text == engine.generate([prompt(short_text)], cfg_short)[0]
