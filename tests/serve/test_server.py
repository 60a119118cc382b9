"""The OpenAI-compatible server against the official `openai` client, on a real socket."""

from __future__ import annotations

import base64
import io
import json
import threading
import wave

import httpx
import openai
import pytest
from PIL import Image

from omnifuse.audio.tts import espeak_available
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.generation.engine import GenerationConfig
from omnifuse.serve.server import ServerSettings
from serve.conftest import running_server


def png_data_url(color=(200, 30, 30), size=(32, 32)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def client(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


# The tiny random LLM answers greedily with one token repeated whatever the prompt, so the tests
# compare seeded samples: those depend on every logit, hence on the prompt and the image.
SAMPLED = {"temperature": 1.0, "seed": 11}


def engine_answer(server, parts, max_new_tokens: int) -> str:
    sample = Sample("x", (Message("user", tuple(parts)),), {})
    cfg = GenerationConfig(max_new_tokens, SAMPLED["temperature"], seed=SAMPLED["seed"])
    return server.service.engine.generate([sample], cfg)[0]


def image_question(url: str, text: str = "what color is the shape?") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
        }
    ]


def test_text_answer_is_the_engines_answer_with_usage(server):
    res = client(server).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello world"}], max_tokens=5, **SAMPLED
    )
    choice = res.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == engine_answer(server, [TextPart("hello world")], 5)
    assert choice.finish_reason in ("stop", "length")
    assert 0 < res.usage.completion_tokens <= 5 or choice.finish_reason == "stop"
    proc = server.service.engine.processor
    n_prompt = len(
        proc.encode(Sample("x", (Message("user", (TextPart("hello world"),)),), {}), True).input_ids
    )
    assert res.usage.prompt_tokens == n_prompt
    assert res.usage.total_tokens == n_prompt + res.usage.completion_tokens
    assert res.model == "tiny" and res.id.startswith("chatcmpl-")


def test_image_answer_depends_on_the_image(server):
    c = client(server)
    for color in [(220, 30, 30), (30, 30, 220)]:
        url = png_data_url(color)
        res = c.chat.completions.create(model="tiny", messages=image_question(url), max_tokens=6, **SAMPLED)
        expected = engine_answer(
            server,
            [ImagePart(image=Image.new("RGB", (32, 32), color)), TextPart("what color is the shape?")],
            6,
        )
        assert res.choices[0].message.content == expected
    # The image is expanded into the connector's tokens: the prompt grows by exactly that many.
    with_image = c.chat.completions.create(
        model="tiny", messages=image_question(png_data_url()), max_tokens=1
    )
    text_only = c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "what color is the shape?"}], max_tokens=1
    )
    per_image = server.service.engine.model.tokens_per_item("image")
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + per_image


def test_streaming_chunks_add_up_to_the_whole_answer(server):
    c = client(server)
    msgs = image_question(png_data_url())
    whole = (
        c.chat.completions.create(model="tiny", messages=msgs, max_tokens=7, **SAMPLED)
        .choices[0]
        .message.content
    )
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=7,
            stream=True,
            stream_options={"include_usage": True},
            **SAMPLED,
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 7


def test_stop_string_cuts_the_answer_and_is_never_streamed(server):
    c = client(server)
    msgs = [{"role": "user", "content": "the quick brown fox"}]
    full = (
        c.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, **SAMPLED)
        .choices[0]
        .message.content
    )
    assert len(full) >= 6, full
    stop = full[3:5]
    cut = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, stop=[stop], **SAMPLED)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == full[: full.index(stop)].strip()
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=12, stop=stop, stream=True, **SAMPLED
        )
        if ch.choices
    )
    assert stop not in streamed and streamed.strip() == cut.choices[0].message.content


def test_seeded_sampling_is_reproducible(server):
    c = client(server)
    msgs = [{"role": "user", "content": "hello"}]
    kw = dict(model="tiny", messages=msgs, max_tokens=8, temperature=1.0, seed=7)
    a = c.chat.completions.create(**kw).choices[0].message.content
    b = c.chat.completions.create(**kw).choices[0].message.content
    other = c.chat.completions.create(**{**kw, "seed": 8}).choices[0].message.content
    assert a == b and a != other


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny"]
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"


def test_api_key_is_required_when_set(keyed_server):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError) as exc:
        client(keyed_server, "wrong").chat.completions.create(model="tiny", messages=msgs)
    assert "API key" in exc.value.body["message"]
    assert httpx.get(f"{keyed_server.url}/v1/models").status_code == 401
    res = client(keyed_server, "sesame").chat.completions.create(model="tiny", messages=msgs, max_tokens=2)
    assert res.choices[0].message.content is not None
    assert httpx.get(f"{keyed_server.url}/health").status_code == 200  # health stays open for probes


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": "other", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
        ({"model": "tiny", "messages": []}, 400, "messages"),
        ({"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]}, 400, "last message"),
        (
            {"model": "tiny", "messages": image_question("data:image/png;base64,AAAA")},
            400,
            "could not be decoded",
        ),
        ({"model": "tiny", "messages": image_question("data:image/png;base64,!!")}, 400, "not valid base64"),
        (
            {"model": "tiny", "messages": image_question("https://example.com/a.png")},
            400,
            "--allow-remote-media",
        ),
        ({"model": "tiny", "messages": image_question("file:///etc/passwd")}, 400, "data: URL"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]},
            400,
            "messages.0.content",
        ),
        (
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
                    }
                ],
            },
            400,
            "no audio input",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
            400,
            "max_tokens",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
            400,
            "limit",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
            400,
            "temperature",
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "word " * 400}]},
            400,
            "context length",
        ),
        (
            {
                "model": "tiny",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": png_data_url()}}] * 5,
                    }
                ],
            },
            400,
            "too many images",
        ),
    ],
)
def test_client_mistakes_get_openai_error_bodies(server, body, status, needle):
    res = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert res.status_code == status, res.text
    err = res.json()["error"]
    assert needle in err["message"] or needle == err["param"]
    assert set(err) == {"message", "type", "param", "code"}


def test_bad_json_and_oversized_bodies(server):
    url = f"{server.url}/v1/chat/completions"
    res = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert res.status_code == 400 and "not valid JSON" in res.json()["error"]["message"]
    res = httpx.post(url, content=b"x" * (3 * 1024**2))
    assert res.status_code == 413 and "limit" in res.json()["error"]["message"]
    assert httpx.get(f"{server.url}/v1/nothing-here").status_code == 404
    assert httpx.get(f"{server.url}/v1/chat/completions").status_code == 405


def test_full_queue_answers_503_with_retry_after(server, monkeypatch):
    monkeypatch.setattr(server.service.scheduler, "max_queue", 0)
    res = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert res.status_code == 503 and res.headers["retry-after"] == "1"
    assert "busy" in res.json()["error"]["message"]


@pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (scripts/install.sh installs it)"
)
def test_spoken_answer_is_a_wav_of_the_text(server):
    res = client(server).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        modalities=["text", "audio"],
        audio={"voice": "en-us", "format": "wav"},
    )
    audio = res.choices[0].message.audio
    assert audio.transcript == res.choices[0].message.content
    with wave.open(io.BytesIO(base64.b64decode(audio.data))) as w:
        assert w.getnframes() > 0 and w.getnchannels() == 1


def test_concurrent_requests_get_their_own_answers(server):
    c = client(server)
    prompts = ["hello", "world", "the quick brown fox", "red circle", "what shape", "yes no"]

    def ask(p):  # each prompt has its own seed, so each has its own answer
        msgs = [{"role": "user", "content": p}]
        res = c.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=6, temperature=1.0, seed=prompts.index(p)
        )
        return res.choices[0].message.content

    expected = {p: ask(p) for p in prompts}
    assert len(set(expected.values())) > 1
    got: dict[str, str] = {}

    def ask_into(p):
        got[p] = ask(p)

    threads = [threading.Thread(target=ask_into, args=(p,)) for p in prompts * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == expected


def test_graceful_shutdown_finishes_the_stream_in_flight():
    with running_server(ServerSettings(model_name="tiny")) as s:
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 120,
            "stream": True,
        }
        lines = []
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, timeout=60) as res:
            for line in res.iter_lines():
                if line:
                    lines.append(line)
                if len(lines) == 2:
                    s.server.should_exit = True  # as on SIGTERM
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert not s.thread.is_alive()


def test_a_client_that_disconnects_stops_its_decoding(monkeypatch):
    import time

    with running_server(ServerSettings(model_name="tiny")) as s:
        engine = s.service.engine
        real = engine.stream
        steps = []

        def slow_stream(*args, **kwargs):
            for step in real(*args, **kwargs):
                steps.append(1)
                time.sleep(0.01)  # 200 steps: 2 s, far longer than the client waits
                yield step

        monkeypatch.setattr(engine, "stream", slow_stream)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200}
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{s.url}/v1/chat/completions", json=body, timeout=0.3)
        time.sleep(2.5)  # past the 2 s the whole answer would take: it would have completed by now
        assert s.service.scheduler.completed == 0
        assert 0 < len(steps) < 150  # stopped well before max_tokens
        stream_body = {**body, "stream": True}
        with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=stream_body, timeout=30) as res:
            next(res.iter_lines())  # read the first chunk, then hang up
        time.sleep(2.5)
        assert s.service.scheduler.completed == 0
