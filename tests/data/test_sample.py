"""Native sample format: parsing, strict JSONL loading, atomic writing and seeded subsets."""

from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnifuse.data.jsonl import load_jsonl, parse_sample, write_jsonl
from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart, select_subset
from omnifuse.errors import OmnifuseError


def _line(sample_id: str = "s1", image: str | None = "img/a.png", answer: str = "red", **extra) -> dict:
    user: list[dict] = [{"type": "text", "text": "what color is it?"}]
    if image is not None:
        user.insert(0, {"type": "image", "image": image})
    obj = {
        "id": sample_id,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
    }
    obj.update(extra)
    return obj


def _write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8"
    )
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (root / "img" / name).write_bytes(b"not opened at load time")
    return root


def _sample(
    sample_id: str, image: Path | None = None, answer: str = "yes", meta: dict | None = None
) -> Sample:
    parts = (ImagePart(image), TextPart("q?")) if image is not None else (TextPart("q?"),)
    return Sample(sample_id, (Message("user", parts), Message("assistant", (TextPart(answer),))), meta or {})


# --------------------------------------------------------------------------- Sample helpers


def test_sample_helpers(tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    sample = Sample(
        "x",
        (
            Message("system", (TextPart("be brief"),)),
            Message("user", (ImagePart(a), TextPart("first"))),
            Message("assistant", (TextPart("one"),)),
            Message("user", (TextPart("and"), ImagePart(b))),
            Message("assistant", (TextPart("the "), TextPart("answer"))),
        ),
        {"k": 1},
    )
    assert sample.images() == [a, b]
    assert sample.answer() == "the answer"
    assert [m.role for m in sample.prompt()] == ["system", "user", "assistant", "user"]
    assert hash(sample) == hash(Sample("x", sample.messages, {}))
    with pytest.raises(TypeError):
        sample.meta["k"] = 2  # type: ignore[index]


def test_answer_without_assistant_turn_is_an_error() -> None:
    sample = Sample("q", (Message("user", (TextPart("hi"),)),))
    assert sample.prompt() == sample.messages
    with pytest.raises(OmnifuseError, match="no assistant turn"):
        sample.answer()


def test_bad_role_in_constructor() -> None:
    with pytest.raises(ValueError, match="role"):
        Message("bot", (TextPart("x"),))


def test_to_json_relative_only_inside_folder(tmp_path: Path) -> None:
    inside = tmp_path / "data" / "img" / "a.png"
    outside = tmp_path / "elsewhere" / "b.png"
    sample = Sample("x", (Message("user", (ImagePart(inside), ImagePart(outside))), Message("assistant", ())))
    parts = sample.to_json(tmp_path / "data")["messages"][0]["content"]
    assert parts[0]["image"] == "img/a.png"
    assert parts[1]["image"] == outside.as_posix()
    assert sample.to_json(None)["messages"][0]["content"][0]["image"] == inside.as_posix()
    assert "meta" not in sample.to_json(None)


# --------------------------------------------------------------------------- parse_sample


def test_parse_resolves_relative_and_keeps_absolute(tmp_path: Path) -> None:
    absolute = tmp_path / "abs.png"
    obj = _line()
    obj["messages"][0]["content"].append({"type": "image", "image": str(absolute)})
    sample = parse_sample(obj, tmp_path, "x.jsonl line 1")
    assert sample.images() == [tmp_path / "img" / "a.png", absolute]


def test_parse_plain_string_content_and_int_id(tmp_path: Path) -> None:
    obj = {"id": 7, "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    sample = parse_sample(obj, tmp_path, "here")
    assert sample.id == "7"
    assert sample.messages[0].parts == (TextPart("hi"),)
    assert sample.answer() == "yo"
    assert dict(sample.meta) == {}


def _with(obj: dict, path: tuple, value) -> dict:
    node = obj
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return obj


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("id",), _DELETE, "missing key 'id'"),
        (("id",), 1.5, "id: must be a string or an integer"),
        (("id",), "", "id: is empty"),
        (("messages",), "hi", "messages: must be a list"),
        (("messages",), _DELETE, "missing key 'messages'"),
        (("messages",), [], "messages: is empty"),
        (("messages", 0, "role"), "bot", "messages[0].role: 'bot' is not a role"),
        (("messages", 0, "content"), 5, "messages[0].content: must be a string or a list"),
        (("messages", 0, "content"), [], "messages[0].content: is empty"),
        (
            ("messages", 0, "content", 0, "type"),
            "hologram",
            "messages[0].content[0].type: unknown part type 'hologram'",
        ),
        (("messages", 0, "content", 0, "type"), _DELETE, "messages[0].content[0]: missing key 'type'"),
        (("messages", 0, "content", 1, "text"), 3, "messages[0].content[1].text: must be a string"),
        (("messages", 0, "content", 0, "image"), 3, "messages[0].content[0].image: must be a non-empty path"),
        (("messages", 0, "content", 0, "url"), "x", "messages[0].content[0]: unknown key 'url'"),
        (("messages", 1), "text", "messages[1]: a message must be an object"),
        (("messages", 1, "role"), "user", "messages: has no assistant turn"),
        (("meta",), [1], "meta: must be an object"),
        (("extra",), 1, "unknown key 'extra'"),
    ],
)
def test_parse_errors_name_field_and_where(tmp_path: Path, path: tuple, value, expected: str) -> None:
    obj = _with(_line(), path, value)
    with pytest.raises(OmnifuseError) as info:
        parse_sample(obj, tmp_path, "train.jsonl line 17")
    message = str(info.value)
    assert message.startswith("train.jsonl line 17: ")
    assert expected in message


def test_parse_requires_a_prompt_before_the_answer(tmp_path: Path) -> None:
    obj = {"id": "a", "messages": [{"role": "assistant", "content": "hello"}]}
    with pytest.raises(OmnifuseError, match="nothing before the assistant turn"):
        parse_sample(obj, tmp_path, "w")


def test_parse_rejects_non_object(tmp_path: Path) -> None:
    with pytest.raises(OmnifuseError, match="w: expected a JSON object, got a list"):
        parse_sample([1], tmp_path, "w")


# --------------------------------------------------------------------------- load_jsonl / write_jsonl


def test_round_trip_write_load(data_dir: Path) -> None:
    outside = data_dir.parent / "outside.png"
    outside.write_bytes(b"x")
    samples = [
        _sample("a", data_dir / "img" / "a.png", meta={"question_type": "color", "n": [1, 2.5, None]}),
        _sample("b", outside, answer="unicodé ✓\u2028line\x85\u2029"),
        _sample("c"),
    ]
    path = write_jsonl(samples, data_dir / "train.jsonl")
    raw = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines(keepends=False) if line]
    assert raw[0]["messages"][0]["content"][0]["image"] == "img/a.png"
    assert raw[1]["messages"][0]["content"][0]["image"] == outside.as_posix()
    assert load_jsonl(path) == samples
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in data_dir.iterdir() if p.name.endswith(".tmp")] == []


def test_audio_parts_round_trip_and_missing_clips_are_reported(data_dir: Path) -> None:
    (data_dir / "audio").mkdir()
    clip = data_dir / "audio" / "q.wav"
    clip.write_bytes(b"not opened at load time")
    spoken = Sample(
        "s",
        (
            Message("user", (ImagePart(data_dir / "img" / "a.png"), AudioPart(clip))),
            Message("assistant", (TextPart("red"),)),
        ),
        {"transcript": "what color is it?"},
    )
    path = write_jsonl([spoken], data_dir / "spoken.jsonl")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["messages"][0]["content"][1] == {"type": "audio", "audio": "audio/q.wav"}
    (loaded,) = load_jsonl(path)
    assert loaded == spoken and loaded.audios() == [clip] and loaded.images() == [data_dir / "img" / "a.png"]
    clip.unlink()
    with pytest.raises(OmnifuseError, match=r"1 missing media file\(s\):\n  spoken.jsonl line 1: .*q.wav"):
        load_jsonl(path)
    with pytest.raises(ValueError, match="exactly one of a path or a waveform"):
        AudioPart()
    decoded = Sample(
        "d", (Message("user", (AudioPart(waveform=np.zeros(16)),)), Message("assistant", (TextPart("x"),)))
    )
    with pytest.raises(ValueError, match="decoded audio, which has no JSON form"):
        decoded.to_json()


def test_relative_paths_resolve_against_the_file_folder(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_lines(data_dir / "d.jsonl", [_line("a"), _line("b", image="./img/../img/b.png")])
    monkeypatch.chdir(data_dir.parent)  # the current folder must not matter
    samples = load_jsonl(Path(data_dir.name) / "d.jsonl")
    assert samples[0].images() == [data_dir / "img" / "a.png"]
    assert samples[0].images()[0].is_absolute()
    assert samples[1].images()[0].is_file()


def test_blank_lines_bom_and_crlf_are_accepted(data_dir: Path) -> None:
    path = data_dir / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps(_line("a")).encode() + b"\r\n\r\n   \n" + json.dumps(_line("b")).encode()
    )
    assert [s.id for s in load_jsonl(path)] == ["a", "b"]


def test_all_malformed_lines_reported_together(data_dir: Path) -> None:
    path = _write_lines(
        data_dir / "train.jsonl",
        [
            _line("ok1"),
            "{not json",
            {"id": "bad-role", "messages": [{"role": "bot", "content": "x"}]},
            "",
            "[1, 2]",
            _with(_line("bad-part"), ("messages", 0, "content", 0, "type"), "hologram"),
            _line("ok2"),
            _with(_line(), ("id",), True),
        ],
    )
    with pytest.raises(OmnifuseError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert "5 malformed line(s)" in message
    assert "train.jsonl line 2: invalid JSON" in message
    assert "train.jsonl line 3: messages[0].role: 'bot' is not a role" in message
    assert "train.jsonl line 5: expected a JSON object, got a list" in message
    assert "train.jsonl line 6: messages[0].content[0].type: unknown part type 'hologram'" in message
    assert "train.jsonl line 8: id: must be a string or an integer" in message
    assert "line 1:" not in message and "line 7:" not in message


def test_at_most_ten_listed_with_count_of_the_rest(data_dir: Path) -> None:
    path = _write_lines(data_dir / "d.jsonl", [_line("ok")] + ["nope"] * 14)
    message = str(pytest.raises(OmnifuseError, load_jsonl, path).value)
    assert "14 malformed line(s)" in message
    assert len(re.findall(r"d\.jsonl line \d+: invalid JSON", message)) == 10
    assert "line 11:" in message and "line 12:" not in message
    assert "... and 4 more" in message


def test_invalid_utf8_line_is_reported(data_dir: Path) -> None:
    path = data_dir / "d.jsonl"
    path.write_bytes(json.dumps(_line("a")).encode() + b"\n\xff\xfe\n")
    with pytest.raises(OmnifuseError, match=r"d\.jsonl line 2: not valid UTF-8"):
        load_jsonl(path)


def test_missing_images_all_reported(data_dir: Path) -> None:
    lines = [_line("ok")] + [_line(f"m{i}", image=f"img/missing{i}.png") for i in range(12)]
    path = _write_lines(data_dir / "d.jsonl", lines)
    message = str(pytest.raises(OmnifuseError, load_jsonl, path).value)
    assert "12 missing media file(s)" in message
    assert f"d.jsonl line 2: {data_dir / 'img' / 'missing0.png'}" in message
    assert "d.jsonl line 11:" in message and "line 12:" not in message
    assert "... and 2 more" in message
    assert str(data_dir) in message  # says where relative paths were resolved
    assert "malformed" not in message


def test_malformed_and_missing_reported_in_one_error(data_dir: Path) -> None:
    path = _write_lines(data_dir / "d.jsonl", ["oops", _line("m", image="img/nope.png")])
    message = str(pytest.raises(OmnifuseError, load_jsonl, path).value)
    assert "1 malformed line(s)" in message and "1 missing media file(s)" in message
    assert "d.jsonl line 1: invalid JSON" in message and "d.jsonl line 2: " in message


def test_duplicate_ids_name_both_lines(data_dir: Path) -> None:
    path = _write_lines(data_dir / "d.jsonl", [_line("a"), _line("dup"), _line("b"), _line("dup")])
    message = str(pytest.raises(OmnifuseError, load_jsonl, path).value)
    assert "d.jsonl line 4: duplicate id 'dup' (first used on line 2)" in message


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_data_set(data_dir: Path, content: str) -> None:
    path = data_dir / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(OmnifuseError, match="contains no samples"):
        load_jsonl(path)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(OmnifuseError, match=re.escape(f"{tmp_path / 'nope.jsonl'} does not exist")):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(OmnifuseError, match="is a folder"):
        load_jsonl(tmp_path)


def test_write_rejects_duplicate_ids_and_non_json_meta(tmp_path: Path) -> None:
    with pytest.raises(OmnifuseError, match="'a' occurs twice"):
        write_jsonl([_sample("a"), _sample("a")], tmp_path / "d.jsonl")
    with pytest.raises(OmnifuseError, match="meta of sample 'b'"):
        write_jsonl([_sample("b", meta={"x": object()})], tmp_path / "d.jsonl")
    with pytest.raises(OmnifuseError, match="meta of sample 'c'"):
        write_jsonl([_sample("c", meta={"x": float("nan")})], tmp_path / "d.jsonl")
    assert not (tmp_path / "d.jsonl").exists()
    assert os.listdir(tmp_path) == []


def test_write_is_atomic_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jsonl([_sample("old")], tmp_path / "d.jsonl")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_jsonl([_sample("new")], path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["d.jsonl"]


def test_write_creates_parent_folders(tmp_path: Path) -> None:
    path = write_jsonl([_sample("a")], tmp_path / "x" / "y" / "d.jsonl")
    assert [s.id for s in load_jsonl(path)] == ["a"]


# --------------------------------------------------------------------------- property: write -> load


_json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _samples(draw, images: list[Path]) -> list[Sample]:
    ids = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=5, unique=True))
    part = st.builds(TextPart, st.text(max_size=20)) | st.sampled_from(images).map(ImagePart)
    result = []
    for sample_id in ids:
        prompt = draw(
            st.lists(
                st.builds(
                    Message,
                    st.sampled_from(["system", "user", "assistant"]),
                    st.lists(part, min_size=1, max_size=3),
                ),
                min_size=1,
                max_size=3,
            )
        )
        answer = Message("assistant", tuple(draw(st.lists(part, min_size=1, max_size=2))))
        meta = draw(st.dictionaries(st.text(max_size=6), _json, max_size=3))
        result.append(Sample(sample_id, (*prompt, answer), meta))
    return result


@pytest.fixture(scope="module")
def property_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("prop")
    (root / "img" / "sub dir").mkdir(parents=True)
    outside = tmp_path_factory.mktemp("outside") / "o.png"
    images = [root / "img" / "a.png", root / "img" / "sub dir" / "ü b.png", outside]
    for image in images:
        image.write_bytes(b"")
    return root, images


def test_write_load_round_trip_property(property_dir: tuple[Path, list[Path]]) -> None:
    root, images = property_dir

    @settings(max_examples=60, deadline=None)
    @given(_samples(images))
    def check(samples: list[Sample]) -> None:
        path = write_jsonl(samples, root / "prop.jsonl")
        assert load_jsonl(path) == samples

    check()


# --------------------------------------------------------------------------- select_subset


def test_select_subset_is_seeded_sized_and_ordered() -> None:
    samples = [_sample(f"s{i}") for i in range(50)]
    first = select_subset(samples, 10, seed=3)
    assert len(first) == 10
    assert first == select_subset(samples, 10, seed=3)
    assert first != select_subset(samples, 10, seed=4)
    positions = [samples.index(s) for s in first]
    assert positions == sorted(positions)
    assert select_subset(samples, None, seed=0) == samples
    assert select_subset(samples, 50, seed=0) == samples
    assert select_subset(samples, 500, seed=0) == samples
    assert select_subset(samples, 0, seed=0) == []
    with pytest.raises(OmnifuseError, match="at least 0"):
        select_subset(samples, -1, seed=0)


@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 2**32))
def test_select_subset_property(total: int, n: int, seed: int) -> None:
    samples = [_sample(c) for c in string.ascii_letters[:total]]
    subset = select_subset(samples, n, seed)
    assert len(subset) == min(n, total)
    assert set(subset) <= set(samples)
    assert subset == select_subset(samples, n, seed)
