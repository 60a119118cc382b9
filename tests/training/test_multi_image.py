"""Two images per sample, interleaved with text (text, image, text, image in one turn): the processor gives
each its own placeholders, training and evaluation run on such samples, and the chat places several images
where the question's <image> markers stand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.eval.runner import evaluate_run
from omnifuse.generation.chat import ChatSession
from omnifuse.models.builders import build_model
from omnifuse.processing.processor import IGNORE_INDEX
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import COLORS, make_parts, tiny_recipe_dict

NAMES = sorted(COLORS)


def write_pairs(folder: Path, n: int = 9) -> Path:
    """'first: <image> second: <image> what color is the second shape?' → the second image's colour."""
    (folder / "img").mkdir(parents=True)
    for name, rgb in COLORS.items():
        Image.new("RGB", (32, 32), rgb).save(folder / "img" / f"{name}.png")
    lines = []
    for i in range(n):
        a, b = NAMES[i % 3], NAMES[(i // 3) % 3]
        user = [{"type": "text", "text": "first:"}, {"type": "image", "image": f"img/{a}.png"},
                {"type": "text", "text": "second:"}, {"type": "image", "image": f"img/{b}.png"},
                {"type": "text", "text": "what color is the second shape?"}]  # fmt: skip
        lines.append({"id": f"p{i}", "messages": [{"role": "user", "content": user},
                                                  {"role": "assistant", "content": [{"type": "text", "text": b}]}]})  # fmt: skip
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def runs_of(ids: list[int], token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of ``token`` in ``ids``."""
    runs, k = [], 0
    while k < len(ids):
        if ids[k] == token:
            start = k
            while k < len(ids) and ids[k] == token:
                k += 1
            runs.append((start, k - start))
        else:
            k += 1
    return runs


def test_each_image_gets_its_own_placeholders_in_place(tmp_path):
    from omnifuse.recipe import ModelSpec

    spec = ModelSpec.model_validate(tiny_recipe_dict(tmp_path)["model"])
    model, processor = build_model(spec, progress=False, **make_parts())
    sample = load_jsonl(write_pairs(tmp_path / "d"))[1]  # green, then blue
    enc = processor.encode(sample)
    slot = processor.media["image"]
    runs = runs_of(enc.input_ids, slot.placeholder_id)
    assert [n for _, n in runs] == [slot.tokens_per_item] * 2  # each image expanded to the connector's count
    text = processor.tokenizer.decode([t for t in enc.input_ids[runs[0][0] + runs[0][1] : runs[1][0]]])
    assert text.strip() == "second:"  # the text between the two images stays between them
    assert all(enc.labels[s + k] == IGNORE_INDEX for s, n in runs for k in range(n))
    green, blue = (torch.tensor(COLORS[c]) / 255 for c in ("green", "blue"))
    firsts = [t[:, 0, 0] for t in enc.media["image"]]  # in order of the text
    assert torch.allclose(firsts[0], green, atol=0.01) and torch.allclose(firsts[1], blue, atol=0.01)
    # The model sees the second image: changing it changes the logits of the answer.
    other = Sample("x", (Message("user", (TextPart("first:"), ImagePart(sample.images()[0]), TextPart("second:"),
                                          ImagePart(sample.images()[0]), TextPart("what color is the second shape?"))),
                         sample.messages[1]))  # fmt: skip
    batch = processor.collate([enc, processor.encode(other)])
    assert batch.media_counts["image"] == [2, 2] and batch.media["image"].shape[0] == 4
    with torch.no_grad():
        inputs = {k: v for k, v in batch.model_inputs().items() if k not in ("sample_ids", "labels")}
        logits = model(**inputs).logits  # every position (without labels)
    n = len(enc.input_ids)
    assert not torch.allclose(logits[0, runs[1][0] + runs[1][1] : n], logits[1, runs[1][0] + runs[1][1] : n])
    assert torch.allclose(logits[0, : runs[1][0]], logits[1, : runs[1][0]], atol=1e-5)  # before it: the same


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    data = write_pairs(root / "d")
    raw = tiny_recipe_dict(data)
    raw["stages"] = raw["stages"][:1]
    raw["stages"][0] |= {"steps": 3, "batch_size": 3, "save_every": 3}
    train(parse_recipe(raw), root / "run", parts=make_parts(), progress=False)
    return root, data


def test_training_and_evaluation_on_two_image_samples(trained):
    root, data = trained
    records = [json.loads(x) for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["loss"] == r["loss"] and r["loss"] > 0 for r in records)
    run = RunDir(root / "run")
    loaded = load_model(run, progress=False, parts=make_parts())
    outcome = evaluate_run(run, progress=False, loaded=loaded, blind=False)
    predictions = [json.loads(x) for x in (root / "run" / "predictions.jsonl").read_text().splitlines()]
    assert outcome.result.n == 9 and [p["id"] for p in predictions] == [f"p{i}" for i in range(9)]
    assert [p["answer"] for p in predictions] == [s.answer() for s in load_jsonl(data)]


def test_chat_places_several_images_at_the_markers(trained):
    root, data = trained
    recipe, model, processor = load_model(RunDir(root / "run"), progress=False, parts=make_parts())
    session = ChatSession(model, processor, recipe)
    red, blue = data.parent / "img" / "red.png", data.parent / "img" / "blue.png"
    session.add_image(red)
    session.add_image(blue)
    answer = session.ask("first:<image>second:<image>what color is the second shape?")
    (question,) = [m for m in session.history if m.role == "user"]
    assert question.parts == (TextPart("first:"), ImagePart(red), TextPart("second:"), ImagePart(blue),
                              TextPart("what color is the second shape?"))  # fmt: skip
    # The same prompt as the data set's sample with those images: the chat asks what training taught.
    sample = next(s for s in load_jsonl(data) if s.images() == [red, blue])
    engine = session.engine
    assert answer == engine.generate([sample], session.cfg)[0]
    # Without markers the images come first, in order; a marker count that does not match is refused.
    session.reset()
    session.add_image(red)
    session.add_image(blue)
    session.ask("which is red?")
    assert [type(p) for p in session.history[0].parts] == [ImagePart, ImagePart, TextPart]
    assert session.history[0].images() == [red, blue] and session.images == []
    session.add_image(red)
    with pytest.raises(Exception, match="2 <image> marker"):
        session.ask("<image> and <image>?")


def test_chat_command_takes_several_images_and_checks_each_first(trained, capsys):
    from omnifuse.cli import main

    root, data = trained
    red = data.parent / "img" / "red.png"
    code = main(["chat", str(root / "run"), "q?", "--image", str(red), "--image", str(root / "nope.png")])
    err = capsys.readouterr().err
    assert code != 0 and "nope.png" in err and "does not exist" in err and "Traceback" not in err
