"""The boundary for user files: what omnifuse.untrusted refuses, and what it lets through."""

from __future__ import annotations

import codecs

import pytest
import torch
from safetensors.torch import save_file

from omnifuse.errors import OmnifuseError
from omnifuse.untrusted import check_json, check_safetensors, decode_text, json_fields, read_text

SCORES = {"accuracy": float, "n": int, "ci95?": [float, float], "per_type": {"*": {"n": int}}}


@pytest.mark.parametrize(
    "value, says",
    [
        ([1], "the content is [1], not an object"),
        ({"n": 1}, "accuracy is missing"),
        ({"accuracy": True, "n": 1, "per_type": {}}, "accuracy is True, not a finite number"),
        ({"accuracy": float("nan"), "n": 1, "per_type": {}}, "not a finite number"),
        ({"accuracy": 0.5, "n": 1.5, "per_type": {}}, "n is 1.5, not an integer"),
        ({"accuracy": 0.5, "n": 1, "ci95": [0.1], "per_type": {}}, "ci95 holds 1 values, not 2"),
        ({"accuracy": 0.5, "n": 1, "ci95": [0.1, "x"], "per_type": {}}, "ci95[1] is 'x'"),
        ({"accuracy": 0.5, "n": 1, "per_type": {"color": {"n": "x"}}}, "per_type.color.n is 'x'"),
    ],
)
def test_check_json_names_the_first_wrong_value(value, says):
    with pytest.raises(OmnifuseError, match="eval.json: .*damaged") as info:
        check_json(value, "eval.json", SCORES)
    assert says in str(info.value)


def test_check_json_passes_conforming_values_and_alternatives():
    ok = {"accuracy": 1, "n": 2, "per_type": {"a": {"n": 1}, "b": {"n": 0}}, "extra": None}
    assert check_json(ok, "f", SCORES) is ok
    assert check_json({"id": 3}, "f", {"id": (str, int)}) == {"id": 3}
    with pytest.raises(OmnifuseError, match="id is None, not a string or an integer"):
        check_json({"id": None}, "f", {"id": (str, int)})


def test_json_fields_keeps_its_flat_messages():
    with pytest.raises(OmnifuseError, match="must hold a JSON object, not list"):
        json_fields([], "s.json", {"a": int})
    with pytest.raises(OmnifuseError, match="s.json has no 'a'; the file is damaged"):
        json_fields({}, "s.json", {"a": int})
    assert json_fields({}, "s.json", {"a?": int}) == {}


def test_text_with_a_byte_order_mark_is_decoded_and_nul_bytes_are_refused():
    text = "name: café\n"
    for bom, encoding in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF32_BE, "utf-32-be")):
        assert decode_text(bom + text.encode(encoding), "r.yaml") == text
    with pytest.raises(OmnifuseError, match="NUL bytes .* UTF-16/32 text without a byte-order mark"):
        decode_text(text.encode("utf-16-le"), "r.yaml")
    with pytest.raises(OmnifuseError, match=r"r.yaml is not UTF-8 text .* at byte 9"):
        decode_text(text.encode("latin-1"), "r.yaml")


def test_read_text_refuses_folders_missing_and_oversized_files(tmp_path):
    with pytest.raises(OmnifuseError, match="is a folder"):
        read_text(tmp_path, "recipe")
    with pytest.raises(OmnifuseError, match="does not exist"):
        read_text(tmp_path / "nope", "recipe")
    (tmp_path / "big").write_bytes(b"x" * 2048)
    with pytest.raises(OmnifuseError, match="over the limit"):
        read_text(tmp_path / "big", "recipe", limit=1024)


def test_check_safetensors(tmp_path):
    good = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(2, 2)}, str(good))
    assert set(check_safetensors(good)) >= {"a", "b"}
    raw = good.read_bytes()
    cases = {
        "empty": (b"", "no safetensors header .*empty"),
        "text": (b"just some text in a file\n", "no safetensors header"),
        "truncated": (raw[:-8], "is truncated"),
        "header-list": (len(b"[1]").to_bytes(8, "little") + b"[1]", "no JSON object"),
        "bad-offsets": (
            _header({"a": {"dtype": "F32", "shape": [1], "data_offsets": "x"}}),
            "tensor 'a' is damaged",
        ),
    }
    for name, (content, says) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(OmnifuseError, match=says):
            check_safetensors(path, "weights file")


def _header(obj) -> bytes:
    import json

    body = json.dumps(obj).encode()
    return len(body).to_bytes(8, "little") + body
