"""Placeholder expansion and label masking, property-tested on three chat templates."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.processing import MediaSlot, Processor
from omnifuse.processing.processor import IGNORE_INDEX, MEDIA_MARKER
from tiny import CHATML, LLAMA3, TinyVisionEncoder, make_tokenizer

TOKENS = 5
PLACEHOLDER = 10_000
IMAGE = Path(tempfile.mkdtemp()) / "img.png"
Image.new("RGB", (8, 8), (255, 0, 0)).save(IMAGE)
WORDS = ["red", "circle", "what", "color", "is", "the", "shape", "hello", "world", "yes", "no", "fox", "?"]


def make_processor(template: str | None, system_prompt: str | None = None) -> Processor:
    enc = TinyVisionEncoder()
    slot = MediaSlot(enc.preprocess, TOKENS, PLACEHOLDER)
    return Processor(make_tokenizer(template), {"image": slot}, system_prompt)


PROCESSORS = {
    name: make_processor(t) for name, t in {"chatml": CHATML, "llama3": LLAMA3, "none": None}.items()
}

text_st = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)


@st.composite
def conversations(draw):
    turns = draw(st.integers(1, 3))
    messages, answers, n_images = [], [], 0
    if draw(st.booleans()):
        messages.append(Message("system", (TextPart(draw(text_st)),)))
    for _ in range(turns):
        k = draw(st.integers(0, 2))
        n_images += k
        parts = [ImagePart(IMAGE) for _ in range(k)]
        parts.insert(draw(st.integers(0, k)), TextPart(draw(text_st)))
        messages.append(Message("user", tuple(parts)))
        answer = draw(text_st)
        answers.append(answer)
        messages.append(Message("assistant", (TextPart(answer),)))
    return Sample("s", tuple(messages), {}), answers, n_images


def label_runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    runs, cur = [], []
    for tok, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == tok
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=conversations())
def test_expansion_and_masking(name, conv):
    proc = PROCESSORS[name]
    sample, answers, n_images = conv
    enc = proc.encode(sample)
    tok = proc.tokenizer
    # Each image becomes exactly TOKENS placeholders, and one preprocessed tensor.
    assert enc.input_ids.count(PLACEHOLDER) == n_images * TOKENS
    assert len(enc.media.get("image", [])) == n_images
    # Placeholders never carry a label.
    assert all(
        lab == IGNORE_INDEX for t, lab in zip(enc.input_ids, enc.labels, strict=True) if t == PLACEHOLDER
    )
    # One labelled run per assistant turn: the answer followed by the end-of-turn token.
    runs = label_runs(enc.input_ids, enc.labels)
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers, strict=True):
        assert tok.decode(run, skip_special_tokens=True).strip() == answer
        assert any(t in proc.stop_ids for t in run), "the model must learn to end its turn"
    # Tokens round-trip to the rendered conversation (nothing lost or duplicated).
    text, _, _ = proc.render(sample.messages, add_generation_prompt=False)
    assert tok.decode([t for t in enc.input_ids if t != PLACEHOLDER]) == text.replace(MEDIA_MARKER, "")


@pytest.mark.parametrize("name", sorted(PROCESSORS))
def test_generation_prompt_is_training_prefix(name):
    """The prompt used at generation time is exactly the unlabelled prefix seen in training."""
    proc = PROCESSORS[name]
    sample = Sample(
        "s",
        (
            Message("user", (ImagePart(IMAGE), TextPart("what color is the shape?"))),
            Message("assistant", (TextPart("red"),)),
        ),
        {},
    )
    train = proc.encode(sample)
    prompt = proc.encode(sample, for_generation=True)
    first_label = next(i for i, lab in enumerate(train.labels) if lab != IGNORE_INDEX)
    assert train.input_ids[:first_label] == prompt.input_ids
    assert all(lab == IGNORE_INDEX for lab in prompt.labels)


def test_system_prompt_replaces_default():
    proc = make_processor(CHATML, system_prompt="")
    sample = Sample("s", (Message("user", (TextPart("hi"),)), Message("assistant", (TextPart("yes"),))), {})
    text, _, _ = proc.render(sample.messages, False)
    assert "SmolLM" not in text and text.startswith("<|im_start|>system\n<|im_end|>")
    default, _, _ = PROCESSORS["chatml"].render(sample.messages, False)
    assert "SmolLM" in default


def test_collate_pads_and_stacks():
    proc = PROCESSORS["chatml"]
    short = Sample("a", (Message("user", (TextPart("hi"),)), Message("assistant", (TextPart("no"),))), {})
    long = Sample(
        "b",
        (
            Message("user", (ImagePart(IMAGE), ImagePart(IMAGE), TextPart("what is the shape"))),
            Message("assistant", (TextPart("circle"),)),
        ),
        {},
    )
    encs = [proc.encode(short), proc.encode(long)]
    right = proc.collate(encs)
    assert right.media["image"].shape == (2, 3, 32, 32)
    assert right.media_counts["image"] == [0, 2]
    assert right.attention_mask[0].tolist()[-1] == 0 and right.attention_mask[1].all()
    left = proc.collate(encs, padding_side="left")
    assert left.attention_mask[0, 0] == 0 and left.attention_mask[0, -1] == 1
    assert torch.equal(left.input_ids[1], right.input_ids[1])


@pytest.mark.parametrize(
    "content, message",
    [(b"not an image", "is not a readable image"), (None, "does not exist")],
)
def test_bad_image_files(tmp_path, content, message):
    path = tmp_path / "x.png"
    if content is not None:
        path.write_bytes(content)
    sample = Sample(
        "bad-1",
        (Message("user", (ImagePart(path), TextPart("q"))), Message("assistant", (TextPart("a"),))),
        {},
    )
    with pytest.raises(OmnifuseError, match=message) as info:
        PROCESSORS["chatml"].encode(sample)
    assert "bad-1" in str(info.value) and str(path) in str(info.value)


def test_sample_without_answer_is_rejected():
    sample = Sample("q-only", (Message("user", (TextPart("hi"),)),), {})
    with pytest.raises(OmnifuseError, match="q-only"):
        PROCESSORS["none"].encode(sample)
