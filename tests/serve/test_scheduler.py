"""Dynamic batching: requests decoded together get exactly their own answers."""

from __future__ import annotations

import asyncio

import pytest

from omnifuse.data.sample import Message, Sample, TextPart
from omnifuse.generation.engine import GenerationConfig
from omnifuse.serve.scheduler import Delta, Done, Failed, Job, QueueFull, Scheduler, _held_back
from serve.conftest import tiny_engine


def prompt(text: str) -> Sample:
    return Sample(text, (Message("user", (TextPart(text),)),), {})


async def collect(job: Job) -> tuple[str, Done | Failed]:
    text = ""
    while True:
        event = await job.events.get()
        if isinstance(event, Delta):
            text += event.text
        else:
            return text, event


def run_jobs(scheduler: Scheduler, specs, start_after_submit: bool = True):
    async def main():
        loop = asyncio.get_running_loop()
        engine = scheduler.engine
        jobs = [
            Job(engine.processor.encode(prompt(t), for_generation=True), cfg, stops, loop)
            for t, cfg, stops in specs
        ]
        for job in jobs:
            scheduler.submit(job)
        if start_after_submit:
            scheduler.start()
        return await asyncio.gather(*(collect(j) for j in jobs))

    try:
        return asyncio.run(main())
    finally:
        scheduler.shutdown()


def test_one_batch_gives_each_request_its_single_answer():
    engine = tiny_engine()
    specs = [
        ("hello", GenerationConfig(5, 1.0, seed=1), []),
        ("the quick brown fox", GenerationConfig(9, 1.0, seed=2), []),
        ("red", GenerationConfig(3, 0.0), []),
        ("what shape", GenerationConfig(7, 0.8, 0.9, seed=3), []),
    ]
    scheduler = Scheduler(engine, max_batch_size=8)
    results = run_jobs(scheduler, specs)
    assert scheduler.batches == 1  # all four were queued before the worker started
    for (text, cfg, _), (streamed, done) in zip(specs, results, strict=True):
        single = engine.generate([prompt(text)], cfg)[0]
        assert isinstance(done, Done)
        assert done.text == single and streamed.strip() == single
        assert (
            done.completion_tokens == len(engine.generate_ids([prompt(text)], cfg)[0]) <= cfg.max_new_tokens
        )


def test_batches_are_capped_at_max_batch_size():
    scheduler = Scheduler(tiny_engine(), max_batch_size=2)
    run_jobs(scheduler, [(f"q{i}", GenerationConfig(2), []) for i in range(5)])
    assert scheduler.batches == 3


def test_a_full_queue_refuses_at_once():
    scheduler = Scheduler(tiny_engine(), max_queue=2)
    loop = asyncio.new_event_loop()
    enc = scheduler.engine.processor.encode(prompt("hi"), for_generation=True)
    scheduler.submit(Job(enc, GenerationConfig(1), [], loop))
    scheduler.submit(Job(enc, GenerationConfig(1), [], loop))
    with pytest.raises(QueueFull):
        scheduler.submit(Job(enc, GenerationConfig(1), [], loop))
    loop.close()


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on(monkeypatch):
    engine = tiny_engine()
    scheduler = Scheduler(engine)
    real_stream = engine.stream
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(engine, "stream", flaky)

    async def main():
        loop = asyncio.get_running_loop()
        enc = engine.processor.encode(prompt("hi"), for_generation=True)
        scheduler.start()
        first = Job(enc, GenerationConfig(2), [], loop)
        scheduler.submit(first)
        r1 = await collect(first)
        second = Job(enc, GenerationConfig(2), [], loop)
        scheduler.submit(second)
        return r1, await collect(second)

    try:
        (_, e1), (_, e2) = asyncio.run(main())
    finally:
        scheduler.shutdown()
    assert isinstance(e1, Failed) and "boom" in e1.message
    assert isinstance(e2, Done)


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [("hello wor", ["world"], 3), ("hello", ["xyz"], 0), ("ab\ufffd", [], 1), ("a</", ["</s>", "/"], 2)],
)
def test_text_that_may_start_a_stop_string_is_held_back(text, stops, held):
    assert _held_back(text, stops) == held
