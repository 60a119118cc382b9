"""One request never fails another: bad sampling parameters are refused before a request joins a
batch, a row whose own decoding fails fails alone, and a batch that fails is run again row by row."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from omnifuse.generation import engine as engine_module
from omnifuse.generation.engine import GenerationConfig
from omnifuse.serve.scheduler import Done, Failed, Job, Scheduler
from omnifuse.serve.server import ServerSettings
from serve.conftest import running_server, tiny_engine
from serve.test_scheduler import collect, prompt

INNOCENT = [f"question number {i}" for i in range(7)]


@pytest.fixture(scope="module")
def batching_server():
    # A long batch window: eight requests sent together are decoded as one batch.
    settings = ServerSettings(model_name="tiny", max_batch_size=8, batch_wait_ms=400, default_max_tokens=6)
    with running_server(settings) as s:
        yield s


def body(text: str, seed: int | float, **extra) -> dict:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": seed,
        **extra,
    }


def post_together(server, bodies: list[dict]) -> list[httpx.Response]:
    results: list[httpx.Response | None] = [None] * len(bodies)

    def post(i: int) -> None:
        results[i] = httpx.post(f"{server.url}/v1/chat/completions", json=bodies[i], timeout=60)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results  # type: ignore[return-value]


def solo_answer(server, text: str, seed: int) -> str:
    cfg = GenerationConfig(6, 1.0, seed=seed)
    return server.service.engine.generate([prompt(text)], cfg)[0]


def test_a_poisoned_seed_among_seven_innocent_requests(batching_server):
    """The load run's failure: `seed: 2**64` used to raise inside the batch and fail all eight."""
    bodies = [body(t, i) for i, t in enumerate(INNOCENT)]
    bodies.insert(3, body("the poisoned one", 2**64))
    before = batching_server.service.scheduler.batches
    res = post_together(batching_server, bodies)
    statuses = [r.status_code for r in res]
    assert statuses.count(200) == 7 and statuses[3] == 400, [r.text for r in res]
    err = res[3].json()["error"]
    assert err["param"] == "seed" and "64-bit" in err["message"]
    for i, text in enumerate(INNOCENT):
        r = res[i if i < 3 else i + 1]
        assert r.json()["choices"][0]["message"]["content"] == solo_answer(batching_server, text, i)
    assert batching_server.service.scheduler.batches - before == 1  # the seven did share one batch


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'"temperature": NaN', "temperature"),
        (b'"temperature": Infinity', "temperature"),
        (b'"top_p": NaN', "top_p"),
        (b'"top_p": -Infinity', "top_p"),
        (b'"seed": -9223372036854775809', "seed"),
        (b'"seed": 18446744073709551615', "seed"),
        (b'"temperature": 1e400', "temperature"),  # Python's json reads it as inf
    ],
)
def test_non_finite_or_out_of_range_sampling_parameters_are_refused(batching_server, raw, param):
    content = b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], ' + raw + b"}"
    res = httpx.post(
        f"{batching_server.url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == param


def test_extreme_but_valid_parameters_are_answered(batching_server):
    # The ends of the int64 seed range, and a temperature so small that 1/T overflows (decoded greedily).
    for extra in ({"seed": -(2**63)}, {"seed": 2**63 - 1}, {"temperature": 1e-300}, {"top_p": 1e-300}):
        res = httpx.post(
            f"{batching_server.url}/v1/chat/completions", json={**body("hi", 5), **extra}, timeout=30
        )
        assert res.status_code == 200, (extra, res.text)


def test_a_row_whose_sampling_fails_fails_alone(batching_server, monkeypatch):
    """A failure validation cannot see (here: the sampler raising for one row): that row's request
    gets 500, the seven sharing its batch get their own answers."""
    real = engine_module._sample_row

    def poisoned(logits, cfg, generator):
        if cfg.seed == 666:
            raise RuntimeError("a row-specific failure")
        return real(logits, cfg, generator)

    expected = [solo_answer(batching_server, t, i) for i, t in enumerate(INNOCENT)]
    monkeypatch.setattr(engine_module, "_sample_row", poisoned)
    res = post_together(batching_server, [body(t, i) for i, t in enumerate(INNOCENT)] + [body("bad", 666)])
    assert [r.status_code for r in res] == [200] * 7 + [500], [r.text for r in res]
    assert [r.json()["choices"][0]["message"]["content"] for r in res[:7]] == expected
    assert "row-specific" in res[7].json()["error"]["message"]
    assert batching_server.alive()


def test_a_failing_batch_is_run_again_row_by_row_and_streams_stay_whole(monkeypatch):
    """A batch that raises midway (whenever the poisoned prompt is in it) after its rows have streamed
    some text: each row runs again alone; the innocent ones resume where they were, so what they
    streamed adds up to their answer, and only the poisoned one fails."""
    engine = tiny_engine()
    scheduler = Scheduler(engine, max_batch_size=8)
    real = engine.stream
    poison = engine.processor.encode(prompt("poison"), for_generation=True).input_ids

    def stream(encoded, cfgs, **kwargs):
        for k, step in enumerate(real(encoded, cfgs, **kwargs)):
            if k == 3 and any(e.input_ids == poison for e in encoded):
                raise RuntimeError("this batch is poisoned")
            yield step

    monkeypatch.setattr(engine, "stream", stream)
    sent_at_failure: list[int] = []
    real_recover = scheduler._recover

    def recover(batch, exc):
        sent_at_failure.extend(j.sent for j in batch.jobs)
        real_recover(batch, exc)

    monkeypatch.setattr(scheduler, "_recover", recover)
    cfgs = [GenerationConfig(8, 1.0, seed=i) for i in range(len(INNOCENT))]

    async def main():
        loop = asyncio.get_running_loop()
        encode = engine.processor.encode
        jobs = [Job(encode(prompt(t), True), c, [], loop) for t, c in zip(INNOCENT, cfgs, strict=True)]
        jobs.insert(2, Job(encode(prompt("poison"), True), GenerationConfig(8, 1.0, seed=99), [], loop))
        for job in jobs:
            scheduler.submit(job)
        scheduler.start()
        return await asyncio.gather(*(collect(j) for j in jobs))

    try:
        results = asyncio.run(main())
    finally:
        scheduler.shutdown()
    bad = results.pop(2)
    assert isinstance(bad[1], Failed) and "poisoned" in bad[1].message and bad[1].status == 500
    assert scheduler.retried == 8  # all eight ran again alone …
    assert sent_at_failure[:1] and sum(n > 0 for n in sent_at_failure[:8]) >= 3  # … after streaming text
    for (text, cfg), (streamed, done) in zip(zip(INNOCENT, cfgs, strict=True), results, strict=True):
        assert isinstance(done, Done), done
        assert done.text == real_answer(engine, real, text, cfg)
        assert streamed.strip() == done.text


def real_answer(engine, real_stream, text: str, cfg: GenerationConfig) -> str:
    ids: list[int] = []
    for step in real_stream([engine.processor.encode(prompt(text), True)], [cfg]):
        ids += [t for _, t in step.tokens]
    return engine.decode(ids)
