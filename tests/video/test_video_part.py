"""The video part of the native sample format: parsed, checked, written back."""

from __future__ import annotations

import json

import pytest

from omnifuse.data.jsonl import load_jsonl, write_jsonl
from omnifuse.data.sample import VideoPart
from omnifuse.errors import OmnifuseError


def _line(part: dict) -> str:
    sample = {
        "id": "v1",
        "messages": [
            {"role": "user", "content": [part, {"type": "text", "text": "which way?"}]},
            {"role": "assistant", "content": "left"},
        ],
    }
    return json.dumps(sample) + "\n"


def test_video_parts_round_trip_with_start_and_end(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    data = tmp_path / "d.jsonl"
    data.write_text(_line({"type": "video", "video": "clips/a.mp4", "start": 1, "end": 2.5}))
    (sample,) = load_jsonl(data)
    (video,) = sample.videos()
    assert video == VideoPart(tmp_path / "clips" / "a.mp4", start=1.0, end=2.5)
    write_jsonl([sample], tmp_path / "out.jsonl")
    part = json.loads((tmp_path / "out.jsonl").read_text())["messages"][0]["content"][0]
    assert part == {"type": "video", "video": "clips/a.mp4", "start": 1.0, "end": 2.5}


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            {"type": "video", "video": "clips/a.mp4", "start": 2, "end": 1},
            r"start \(2 s\) must come before end",
        ),
        ({"type": "video", "video": "clips/a.mp4", "start": -1}, "start: must be a number of seconds"),
        ({"type": "video", "video": "clips/a.mp4", "end": "3"}, "end: must be a number of seconds"),
        ({"type": "video", "video": ""}, "video: must be a non-empty path"),
        ({"type": "video", "video": "a.mp4", "fps": 2}, "unknown key 'fps'"),
        ({"type": "video", "video": "missing.mp4"}, "missing.mp4"),
    ],
)
def test_bad_video_parts_name_the_field(tmp_path, part, message):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"x")
    data = tmp_path / "d.jsonl"
    data.write_text(_line(part))
    with pytest.raises(OmnifuseError, match=message):
        load_jsonl(data)
