"""LLaVA and ShareGPT conversion: marker positions, image resolution, errors and the convert entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omnifuse.data.converters import convert, from_llava_json, from_sharegpt
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import ImagePart, TextPart
from omnifuse.errors import OmnifuseError


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    (folder / "coco").mkdir(parents=True)
    for name in ("coco/1.jpg", "coco/2.jpg", "a.png", "b.png"):
        (folder / name).write_bytes(b"")
    return folder


def _dump(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _kinds(message) -> list[str]:
    return ["image" if isinstance(p, ImagePart) else p.text for p in message.parts]


# --------------------------------------------------------------------------- LLaVA


def test_llava_marker_position_and_roles(tmp_path: Path, images: Path) -> None:
    src = _dump(
        tmp_path / "llava.json",
        [
            {
                "id": "000000033471",
                "image": "coco/1.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
                    {"from": "gpt", "value": "White and red."},
                    {"from": "human", "value": "Where is it?"},
                    {"from": "gpt", "value": "On a street."},
                ],
            },
            {
                "id": 2,
                "image": "coco/2.jpg",
                "conversations": [
                    {"from": "human", "value": "Look at this <image> and describe it."},
                    {"from": "gpt", "value": "A dog."},
                ],
            },
        ],
    )
    first, second = from_llava_json(src, images)
    assert first.id == "000000033471"
    assert [m.role for m in first.messages] == ["user", "assistant", "user", "assistant"]
    assert _kinds(first.messages[0]) == ["image", "What are the colors of the bus?"]
    assert first.images() == [images / "coco" / "1.jpg"]
    assert first.answer() == "On a street."
    assert second.id == "2"
    assert _kinds(second.messages[0]) == ["Look at this", "image", "and describe it."]


def test_llava_unmarked_image_is_prepended_to_first_human_turn(tmp_path: Path, images: Path) -> None:
    src = _dump(
        tmp_path / "llava.json",
        [
            {
                "id": "x",
                "image": "a.png",
                "conversations": [
                    {"from": "gpt", "value": "Hello."},
                    {"from": "human", "value": "What is this?"},
                    {"from": "gpt", "value": "A circle."},
                ],
            }
        ],
    )
    (sample,) = from_llava_json(src, images)
    assert _kinds(sample.messages[0]) == ["Hello."]
    assert _kinds(sample.messages[1]) == ["image", "What is this?"]


def test_llava_text_only_and_default_image_folder(tmp_path: Path) -> None:
    (tmp_path / "p.png").write_bytes(b"")
    src = _dump(
        tmp_path / "llava.json",
        [
            {
                "id": "t",
                "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
            },
            {
                "id": "i",
                "image": "p.png",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "ok"}],
            },
        ],
    )
    text_only, with_image = from_llava_json(src)
    assert text_only.images() == [] and text_only.messages[0].parts == (TextPart("hi"),)
    assert with_image.images() == [tmp_path / "p.png"]
    assert _kinds(with_image.messages[0]) == ["image"]


def test_llava_duplicate_ids_are_made_unique(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    src = _dump(tmp_path / "l.json", [{"id": "d", "conversations": turns}] * 3 + [{"conversations": turns}])
    assert [s.id for s in from_llava_json(src)] == ["d", "d#2", "d#3", "l-3"]


def test_llava_errors_name_each_entry(tmp_path: Path, images: Path) -> None:
    good = [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]
    src = _dump(
        tmp_path / "llava.json",
        [
            {"id": "ok", "image": "a.png", "conversations": good},
            {
                "id": "two-markers",
                "image": "a.png",
                "conversations": [{"from": "human", "value": "<image><image>"}, good[1]],
            },
            {"id": "no-image", "conversations": good},
            {"id": "bad-role", "conversations": [{"from": "user", "value": "q"}, good[1]]},
            {"id": "no-convs", "image": "a.png"},
            {"id": "no-answer", "conversations": [{"from": "human", "value": "q"}]},
            "not an object",
            {"id": "gone", "image": "nope.png", "conversations": good},
        ],
    )
    message = str(pytest.raises(OmnifuseError, from_llava_json, src, images).value)
    assert "6 invalid entries" in message
    assert "llava.json entry 1: conversations: has 2 <image> marker(s) but 1 image(s)" in message
    assert "llava.json entry 2: conversations: has 1 <image> marker(s) but 0 image(s)" in message
    assert "llava.json entry 3: conversations[0].from: 'user' is not one of human, gpt" in message
    assert "llava.json entry 4: missing key 'conversations'" in message
    assert "llava.json entry 5: messages: has no assistant turn" in message
    assert "llava.json entry 6: an entry must be a JSON object" in message
    assert f"1 missing image(s):\n  llava.json entry 7: {images / 'nope.png'}" in message
    assert "entry 0" not in message


def test_llava_file_level_errors(tmp_path: Path, images: Path) -> None:
    with pytest.raises(OmnifuseError, match="does not exist"):
        from_llava_json(tmp_path / "nope.json", images)
    (tmp_path / "bad.json").write_text("[{", encoding="utf-8")
    with pytest.raises(OmnifuseError, match=r"not valid JSON .* line 1 column 3"):
        from_llava_json(tmp_path / "bad.json", images)
    with pytest.raises(OmnifuseError, match="one JSON list"):
        from_llava_json(_dump(tmp_path / "obj.json", {"id": 1}), images)
    with pytest.raises(OmnifuseError, match="has no entries"):
        from_llava_json(_dump(tmp_path / "empty.json", []), images)
    with pytest.raises(OmnifuseError, match="image folder .* does not exist"):
        from_llava_json(_dump(tmp_path / "x.json", []), tmp_path / "no-such-folder")


# --------------------------------------------------------------------------- ShareGPT


def test_sharegpt_markers_matched_in_order(tmp_path: Path, images: Path) -> None:
    src = _dump(
        tmp_path / "sg.json",
        [
            {
                "id": "m",
                "system": "You are helpful.",
                "images": ["a.png", "b.png", str(images / "coco" / "1.jpg")],
                "conversations": [
                    {"from": "user", "value": "Compare <image> with <image>."},
                    {"from": "assistant", "value": "Same."},
                    {"from": "human", "value": "And <image>?"},
                    {"from": "gpt", "value": "Different."},
                ],
            },
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ]
            },
        ],
    )
    first, second = from_sharegpt(src, images)
    assert [m.role for m in first.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert _kinds(first.messages[1]) == ["Compare", "image", "with", "image", "."]
    assert _kinds(first.messages[3]) == ["And", "image", "?"]
    assert first.images() == [images / "a.png", images / "b.png", images / "coco" / "1.jpg"]
    assert second.id == "sg-1"
    assert [m.role for m in second.messages] == ["system", "user", "assistant"]


def test_sharegpt_jsonl_input(tmp_path: Path) -> None:
    (tmp_path / "i.png").write_bytes(b"")
    entry = {
        "images": ["i.png"],
        "conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}],
    }
    src = tmp_path / "sg.jsonl"
    src.write_text(
        json.dumps(entry | {"id": "one"}) + "\n\n" + json.dumps(entry | {"id": "two"}) + "\n",
        encoding="utf-8",
    )
    samples = from_sharegpt(src)
    assert [s.id for s in samples] == ["one", "two"]
    assert samples[0].images() == [tmp_path / "i.png"]


def test_sharegpt_errors(tmp_path: Path, images: Path) -> None:
    turns = [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]
    src = _dump(
        tmp_path / "sg.json",
        [
            {"images": ["a.png", "b.png"], "conversations": turns},
            {"conversations": turns},
            {"images": ["a.png"], "conversations": [{"from": "human", "value": "no marker"}, turns[1]]},
            {"images": "a.png", "conversations": turns},
            {"images": [3], "conversations": turns},
            {"conversations": [{"from": "robot", "value": "x"}]},
            {"conversations": [{"from": "human"}]},
            {"conversations": []},
        ],
    )
    message = str(pytest.raises(OmnifuseError, from_sharegpt, src, images).value)
    assert "sg.json entry 0: conversations: has 1 <image> marker(s) but 2 image(s)" in message
    assert "sg.json entry 1: conversations: has 1 <image> marker(s) but 0 image(s)" in message
    assert "sg.json entry 2: conversations: has 0 <image> marker(s) but 1 image(s)" in message
    assert "entry 3" not in message  # a single path string is accepted
    assert "sg.json entry 4: images: must be an image path or a list" in message
    assert "sg.json entry 5: conversations[0].from: 'robot' is not one of" in message
    assert 'sg.json entry 6: conversations[0]: must be an object with "from" and "value"' in message
    assert "sg.json entry 7: conversations: must be a non-empty list" in message

    bad_lines = tmp_path / "bad.jsonl"
    bad_lines.write_text('{"conversations": []}\n{oops\n', encoding="utf-8")
    with pytest.raises(OmnifuseError, match=r"bad\.jsonl line 2: invalid JSON"):
        from_sharegpt(bad_lines)


# --------------------------------------------------------------------------- convert


def test_convert_writes_loadable_jsonl_with_relative_images(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    (out_dir / "images").mkdir(parents=True)
    (out_dir / "images" / "x.png").write_bytes(b"")
    src = _dump(
        out_dir / "llava.json",
        [
            {
                "id": "a",
                "image": "x.png",
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            }
        ],
    )
    assert convert("llava", src, out_dir / "train.jsonl", out_dir / "images") == 1
    samples = from_llava_json(src, out_dir / "images")
    line = json.loads((out_dir / "train.jsonl").read_text(encoding="utf-8"))
    assert line["messages"][0]["content"][0] == {"type": "image", "image": "images/x.png"}
    assert load_jsonl(out_dir / "train.jsonl") == samples

    with pytest.raises(OmnifuseError, match="unknown data format 'coco'; use one of llava, sharegpt"):
        convert("coco", src, out_dir / "x.jsonl")
