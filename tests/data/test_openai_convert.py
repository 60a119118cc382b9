"""`omnifuse data convert openai`: OpenAI messages → native samples (media written beside the output) → OpenAI
messages again, every part kept; the server's parser is the converter's; bad input is one clear paragraph."""

from __future__ import annotations

import base64
import io
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnifuse.cli import main
from omnifuse.data.converters import convert
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.openai_convert import from_openai, to_openai, write_openai
from omnifuse.data.sample import AudioPart, ImagePart, TextPart
from omnifuse.errors import OmnifuseError


def image_bytes(color, fmt="PNG", size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def wav_b64(seconds: float = 0.3) -> str:
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(pcm.tobytes())
    return base64.b64encode(buf.getvalue()).decode()


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


RED, BLUE = data_url(image_bytes((220, 30, 30))), data_url(image_bytes((30, 30, 220), "JPEG"), "image/jpeg")


def entries() -> list[dict]:
    clip = {"type": "input_audio", "input_audio": {"data": wav_b64(), "format": "wav"}}
    return [
        {
            "id": "two-images",
            "messages": [
                {"role": "system", "content": [text("Answer in one word.")]},
                {"role": "user", "content": [text("first:"), image(RED), text("second:"), image(BLUE), text("same?")]},
                {"role": "assistant", "content": [text("no")]},
                {"role": "user", "content": [clip, text("and this one?"), image(RED)]},
                {"role": "assistant", "content": [text("red")]},
            ],
            "meta": {"question_type": "compare"},
        },
        {"id": "text-only", "messages": [{"role": "user", "content": [text("hi")]}, {"role": "assistant", "content": [text("hello")]}]},
    ]  # fmt: skip


def write_lines(path: Path, items) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items), encoding="utf-8"
    )
    return path


def test_openai_to_native_to_openai_keeps_every_part(tmp_path):
    (tmp_path / "src").mkdir()
    src = write_lines(tmp_path / "src" / "chat.jsonl", entries())
    out = tmp_path / "out" / "train.jsonl"
    assert convert("openai", src, out) == 2
    samples = load_jsonl(out)  # the native file loads: the media it names exist
    user = samples[0].messages[1]
    kinds = ["image" if isinstance(p, ImagePart) else p.text for p in user.parts]
    assert kinds == ["first:", "image", "second:", "image", "same?"]  # interleaved, in order
    assert isinstance(samples[0].messages[3].parts[0], AudioPart)
    # Decoded media are files beside the output, named by content: the red image is stored once.
    files = sorted(p.name for p in (out.parent / "media").iterdir())
    assert len(files) == 3 and {Path(f).suffix for f in files} == {".png", ".jpg", ".wav"}
    assert samples[0].messages[3].parts[2] == user.parts[1]
    native = json.loads(out.read_text().splitlines()[0])
    assert native["messages"][1]["content"][1]["image"].startswith("media/")  # relative: the folder moves
    # And back: the same messages, part for part, media byte for byte.
    assert [to_openai(s) for s in samples] == entries()
    back = write_openai(samples, tmp_path / "back.jsonl")
    assert [json.loads(x) for x in back.read_text().splitlines()] == entries()


def test_the_converter_reads_messages_as_the_server_does(tmp_path):
    from omnifuse.serve import protocol as P
    from omnifuse.serve.server import ChatService, ServerSettings
    from serve.conftest import tiny_engine

    messages = entries()[0]["messages"][:2]
    src = write_lines(tmp_path / "c.jsonl", [{"messages": messages, "model": "ignored"}])
    (converted,) = from_openai(src, media_dir=tmp_path / "media")
    service = ChatService(tiny_engine(), ServerSettings(model_name="t"))  # its worker is never started
    served = service.to_sample(P.ChatRequest.model_validate({"model": "t", "messages": messages}))
    assert [m.role for m in converted.messages] == [m.role for m in served.messages]
    for a, b in zip(converted.messages, served.messages, strict=True):
        assert len(a.parts) == len(b.parts)
        for pa, pb in zip(a.parts, b.parts, strict=True):
            if isinstance(pa, TextPart):
                assert pa == pb
            else:  # the file the converter wrote decodes to the pixels the server decoded
                assert np.array_equal(np.asarray(Image.open(pa.path).convert("RGB")), np.asarray(pb.image))


def test_file_paths_and_string_content(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(image_bytes((0, 200, 0)))
    absolute = (tmp_path / "img" / "a.png").as_uri()
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [image("img/a.png"), text("and"), image(absolute)]},
        {"role": "assistant", "content": "green"},
    ]
    src = tmp_path / "c.json"  # a JSON list, as well as JSONL
    src.write_text(json.dumps([{"messages": messages}]), encoding="utf-8")
    (sample,) = from_openai(src)
    assert sample.id == "c-0" and sample.messages[0].role == "system"
    assert sample.messages[0].parts == (TextPart("be brief"),) and sample.answer() == "green"
    assert sample.images() == [tmp_path / "img" / "a.png"] * 2
    assert not (tmp_path / "media").exists()  # nothing inline, nothing written


BAD_LINES = [
    ({"messages": [{"role": "user", "content": [image("https://example.com/a.png")]}]}, "downloads nothing"),
    ({"messages": [{"role": "user", "content": [image("data:image/png;base64,!!")]}]}, "not valid base64"),
    ({"messages": [{"role": "user", "content": [image(data_url(b"not an image"))]}]}, "could not be decoded"),
    ({"messages": [{"role": "user", "content": [image("img/missing.png")]}]}, "does not exist"),
    ({"messages": [{"role": "assistant", "content": [image(RED)]}]}, "only allowed in user messages"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "x"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "only come first"),
    ({"messages": []}, "messages"),
    ({"id": True, "messages": [{"role": "user", "content": "a"}]}, "line 9: id: Input should be"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": base64.b64encode(b"RIFFjunk").decode(), "format": "wav"},
                        }
                    ],
                }
            ]
        },
        "audio at messages.0.content.0",
    ),  # noqa: E501
]


def test_every_bad_entry_is_reported_at_once(tmp_path):
    src = write_lines(tmp_path / "bad.jsonl", [line for line, _ in BAD_LINES])
    with pytest.raises(OmnifuseError) as exc:
        from_openai(src, media_dir=tmp_path / "media")
    message = str(exc.value)
    assert f"{len(BAD_LINES)} invalid entries" in message
    for lineno, (_, needle) in enumerate(BAD_LINES, start=1):
        row = next(r for r in message.splitlines() if r.startswith(f"  bad.jsonl line {lineno}:"))
        assert needle in row, (needle, row)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ('{"messages": [{"role": "user", "content": "a"}]}\n{oops\n', "invalid JSON"),
        ('{"id": "x", "messages": [{"role": "user", "content": "a"}]}\n' * 2, "duplicate id 'x'"),
        ("", "no entries"),
        ("[1, 2]\n", "JSON object"),
        (
            '{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://h/a.png"}}]}]}\n',
            "data: URL",
        ),  # noqa: E501
    ],
)
def test_bad_input_through_the_command_line_is_one_paragraph(tmp_path, capsys, content, needle):
    src = tmp_path / "src.jsonl"
    src.write_text(content, encoding="utf-8")
    code = main(["data", "convert", "openai", str(src), "--out", str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "internal error" not in err
    paragraph = err[[m.start() for m in re.finditer(r"^error:", err, re.M)][-1] :].strip()
    assert needle in paragraph and "\n\n" not in paragraph, err
    assert not (tmp_path / "out.jsonl").exists()


def test_convert_through_the_command_line(tmp_path, capsys):
    src = write_lines(tmp_path / "chat.jsonl", entries())
    assert main(["data", "convert", "openai", str(src), "--out", str(tmp_path / "out" / "d.jsonl")]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    assert len(load_jsonl(tmp_path / "out" / "d.jsonl")) == 2


def test_native_parts_without_an_openai_form_are_refused(tmp_path):
    (tmp_path / "q.flac").write_bytes(b"fLaC")
    from omnifuse.data.sample import Message, Sample

    sample = Sample("s", (Message("user", (AudioPart(tmp_path / "q.flac"),)),))
    with pytest.raises(OmnifuseError, match="wav or mp3"):
        to_openai(sample)


# --------------------------------------------------------------------------- video_url


def mp4_bytes(tmp_path: Path) -> bytes:
    from omnifuse.video.write import write_video

    frames = np.zeros((4, 32, 32, 3), np.uint8)
    frames[:, :, :16] = 200
    return write_video(tmp_path / "clip.mp4", frames, fps=4).read_bytes()


def test_video_url_round_trip_and_refusals(tmp_path):
    clip = mp4_bytes(tmp_path)
    video = {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}}
    entry = {"id": "v", "messages": [{"role": "user", "content": [text("watch"), video, text("and"), image(RED)]},
                                     {"role": "assistant", "content": [text("a square")]}]}  # fmt: skip
    src = write_lines(tmp_path / "v.jsonl", [entry])
    out = tmp_path / "out" / "v.jsonl"
    convert("openai", src, out)
    (sample,) = load_jsonl(out)
    (part,) = sample.videos()
    assert part.path.parent == out.parent / "media" and part.path.suffix == ".mp4"
    assert part.path.read_bytes() == clip
    assert to_openai(sample) == entry
    # A file path is referenced where it is; a broken video, a non-video data URL and one in an assistant
    # message are refused, each named.
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 100)
    bad = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "broken.mp4"}}]}
            ]
        },
        {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": RED}}]}]},
        {"messages": [{"role": "assistant", "content": [video]}]},
    ]
    with pytest.raises(OmnifuseError) as exc:
        from_openai(write_lines(tmp_path / "bad.jsonl", bad), media_dir=tmp_path / "m")
    rows = str(exc.value).splitlines()
    assert "not a readable video" in rows[1] or "corrupt" in rows[1], rows[1]
    assert "of type 'image/png'" in rows[2] and "videos are only allowed in user messages" in rows[3]
    path_entry = {
        "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "clip.mp4"}}]}]
    }
    (by_path,) = from_openai(write_lines(tmp_path / "p.jsonl", [path_entry]))
    assert by_path.videos()[0].path == tmp_path / "clip.mp4"
