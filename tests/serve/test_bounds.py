"""Bounds on the work one request can cost: over-long text is refused before it is tokenized, a long
prompt is prefilled in chunks (with the same answer) and runs in its own lane, beside the short ones."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import torch

from omnifuse.data.sample import ImagePart, Message, Sample, TextPart, load_jsonl
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from omnifuse.serve.engine import Engine, GenerationConfig
from omnifuse.serve.scheduler import Done, Job, Scheduler
from omnifuse.serve.server import ServerSettings
from serve.conftest import running_server, tiny_engine
from serve.test_scheduler import collect, prompt
from tiny import tiny_recipe_dict


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


def test_no_token_is_longer_than_max_token_chars():
    engine = tiny_engine()
    tok = engine.processor.tokenizer
    longest = max(len(tok.decode([i])) for i in range(len(tok)))
    assert longest <= engine.max_token_chars


# ------------------------------------------------------------------ chunked prefill
def early_engine(tiny_parts, color_data):
    model, proc = build_model(parse_recipe(tiny_recipe_dict(color_data)).model, **tiny_parts)
    return Engine(model.eval(), proc)


def xattn_engine(tiny_parts, color_data):
    raw = tiny_recipe_dict(color_data)
    raw["model"]["connectors"]["image"] = {"type": "perceiver", "num_latents": 3, "heads": 4}
    raw["model"]["fusion"] = {"type": "cross_attention", "every_n": 1, "heads": 4}
    model, proc = build_model(parse_recipe(raw).model, **tiny_parts)
    with torch.no_grad():  # open the gates, or the blocks would be the identity and media invisible
        for block in model.fusion.blocks:
            block.attn_gate.fill_(1.0)
            block.ffn_gate.fill_(1.0)
    return Engine(model.eval(), proc)


def prompts_of_several_lengths(color_data) -> list[Sample]:
    samples = load_jsonl(color_data)
    longer = Sample(
        "long", (Message("user", (ImagePart(path=samples[2].images()[0]), TextPart("red " * 20))),)
    )
    text_only = Sample("text", (Message("user", (TextPart("the quick brown fox"),)),))
    return [samples[0], longer, text_only, samples[1]]


@pytest.mark.parametrize("build", [early_engine, xattn_engine], ids=["early", "cross-attention"])
@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_prefill_gives_the_same_tokens(build, chunk, tiny_parts, color_data):
    engine = build(tiny_parts, color_data)
    prompts = prompts_of_several_lengths(color_data)
    for cfg in (GenerationConfig(6), GenerationConfig(6, 1.0, 0.9, seed=4)):
        whole = engine.generate_ids(prompts, cfg)
        assert engine.generate_ids(prompts, cfg, prefill_chunk=chunk) == whole
        assert whole == engine.generate_ids(prompts, cfg, use_cache=False)
    # The prompt does go in chunks: a pause after every chunk but the last, then the first tokens.
    encoded = [engine.processor.encode(p, for_generation=True) for p in prompts]
    width = max(len(e.input_ids) for e in encoded)
    steps = engine.stream(encoded, [GenerationConfig(2)] * len(encoded), prefill_chunk=chunk)
    pauses = 0
    for step in steps:
        if step.tokens or step.finished:
            break
        pauses += 1
    assert pauses == -(-width // chunk) - 1


def test_interleaved_streams_keep_their_own_media(tiny_parts, color_data):
    """Cross-attention binds media per forward pass, so two streams advanced in turn (as the
    scheduler's lanes are) each see their own images."""
    engine = xattn_engine(tiny_parts, color_data)
    samples = load_jsonl(color_data)
    cfg = GenerationConfig(5, 1.0, seed=2)
    a, b = [samples[0], samples[2]], [samples[1], samples[3]]
    alone = engine.generate_ids(a, cfg), engine.generate_ids(b, cfg)
    enc = [[engine.processor.encode(s, True) for s in group] for group in (a, b)]
    streams = [engine.stream(e, [cfg] * 2, prefill_chunk=4) for e in enc]
    out: list[list[list[int]]] = [[[], []], [[], []]]
    live = [True, True]
    while any(live):
        for k in (0, 1):
            if live[k]:
                step = next(streams[k], None)
                live[k] = step is not None
                for i, tok in step.tokens if step else []:
                    out[k][i].append(tok)
    assert (out[0], out[1]) == alone
    assert engine.model.fusion.context.media is None


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
