"""Several images in one request, interleaved with text: each decoded and placed where it stands."""

from __future__ import annotations

import base64

import httpx
import pytest
from PIL import Image

from omnifuse.data.sample import ImagePart, TextPart
from omnifuse.serve import protocol as P
from serve.test_server import SAMPLED, client, engine_answer, png_data_url

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def interleaved(first, second) -> list[dict]:
    content = [
        {"type": "text", "text": "first:"},
        {"type": "image_url", "image_url": {"url": png_data_url(first)}},
        {"type": "text", "text": "second:"},
        {"type": "image_url", "image_url": {"url": png_data_url(second)}},
        {"type": "text", "text": "what color is the second shape?"},
    ]
    return [{"role": "user", "content": content}]


def parts(first, second) -> list:
    image = lambda rgb: ImagePart(image=Image.new("RGB", (32, 32), rgb))  # noqa: E731
    return [TextPart("first:"), image(first), TextPart("second:"), image(second),
            TextPart("what color is the second shape?")]  # fmt: skip


def test_two_interleaved_images_are_answered_as_the_engine_answers(server):
    c = client(server)
    for second in (BLUE, GREEN):
        res = c.chat.completions.create(
            model="tiny", messages=interleaved(RED, second), max_tokens=6, **SAMPLED
        )
        assert res.choices[0].message.content == engine_answer(server, parts(RED, second), 6)
        # Both images count in the prompt: their placeholders are the prompt's tokens.
        proc = server.service.engine.processor
        request = P.ChatRequest.model_validate({"model": "tiny", "messages": interleaved(RED, second)})
        sample = server.service.to_sample(request)
        assert [type(p) for p in sample.messages[0].parts] == [type(p) for p in parts(RED, second)]
        assert [img.getpixel((0, 0)) for img in sample.images()] == [RED, second]  # decoded, in order
        ids = proc.encode(sample, for_generation=True).input_ids
        assert res.usage.prompt_tokens == len(ids)
        assert ids.count(proc.media["image"].placeholder_id) == 2 * proc.media["image"].tokens_per_item


def test_video_url_to_a_model_without_video_is_a_400(server):
    mp4 = "data:video/mp4;base64," + base64.b64encode(b"\x00" * 64).decode()
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": mp4}}]}],
    }
    res = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert res.status_code == 400 and "takes no video" in res.json()["error"]["message"]
    assert res.json()["error"]["param"] == "messages.0.content.0"


def test_video_url_of_a_video_model_becomes_the_clip_bytes(server, monkeypatch):
    monkeypatch.setattr(server.service, "modalities", {"image", "video"})  # as a model with a video encoder
    raw = b"\x00\x00\x00\x18ftypmp42 not decoded here"
    video = lambda url: {"type": "video_url", "video_url": {"url": url}}  # noqa: E731
    request = lambda *parts: P.ChatRequest.model_validate(  # noqa: E731
        {"model": "tiny", "messages": [{"role": "user", "content": list(parts)}]}
    )
    url = "data:video/mp4;base64," + base64.b64encode(raw).decode()
    sample = server.service.to_sample(request({"type": "text", "text": "what moves?"}, video(url)))
    assert [v.data for v in sample.videos()] == [raw]  # the processor decodes it, within its bounds
    for bad, needle in [("https://example.com/a.mp4", "base64 data URL"), (png_data_url(), "'image/png'")]:
        with pytest.raises(P.APIError) as exc:
            server.service.to_sample(request(video(bad)))
        assert exc.value.status == 400 and needle in exc.value.message
        assert exc.value.param == "messages.0.content.0.video_url.url"
