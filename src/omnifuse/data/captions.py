"""Image–caption pairs derived from a VQA data set's question/answer facts (for Q-Former stage 1).

easy-vqa has no captions, but every question states or implies facts about its image: "what color
is the triangle?" → red says the shape is a red triangle; "is there not a blue shape?" → no says it
is blue. Collecting the facts per image gives captions such as "a red triangle". The result is in the
native format (a user turn with the image, an assistant turn with the caption), so it loads like any
other data set: ``easy-vqa-captions:train`` in a recipe. ``meta.task: caption`` makes ``omnifuse eval`` score
it with BLEU-4 / CIDEr-D / ROUGE-L (:mod:`omnifuse.eval.captioning`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from easy_vqa import get_answers

from omnifuse.data.easy_vqa import SHAPES, YES_NO, ensure_easy_vqa
from omnifuse.data.jsonl import load_jsonl, write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError

FORMAT_VERSION = 3  # part of the file name: a change of caption wording (v3: meta.task) writes new files


def _colors() -> frozenset[str]:
    return frozenset(get_answers()) - YES_NO - SHAPES


def _facts(question: str, answer: str, colors: frozenset[str]) -> list[str]:
    """Colour/shape words that the question + answer say are true of the image."""
    words = re.findall(r"[a-z]+", question.lower())
    mentioned = [w for w in words if w in colors or w in SHAPES]
    answer = answer.strip().lower()
    if answer in YES_NO:
        negated = "not" in words or "no" in words
        return mentioned if (answer == "yes") != negated else []
    # "what color is the triangle?" → the answer, and the triangle it presupposes.
    return [*mentioned, answer] if answer in colors or answer in SHAPES else mentioned


def captions_from_vqa(samples: Sequence[Sample]) -> list[Sample]:
    """One caption sample, "a <colour> <shape>", per image (in order of first appearance). Images whose
    questions do not reveal both colour and shape are left out: a partial caption such as "a circle"
    is also true of other images, which would make it a false negative for ITC/ITM. Contradicting
    facts (two colours for one image) are an error."""
    colors = _colors()
    found: dict[Path, dict[str, str | None]] = {}
    first: dict[Path, Sample] = {}
    for s in samples:
        images = s.images()
        if len(images) != 1:
            continue  # facts cannot be assigned to one image
        image = images[0]
        first.setdefault(image, s)
        facts = found.setdefault(image, {"color": None, "shape": None})
        question = "".join(m.text() for m in s.prompt() if m.role == "user")
        for word in _facts(question, s.answer(), colors):
            kind = "shape" if word in SHAPES else "color"
            if facts[kind] not in (None, word):
                raise OmnifuseError(
                    f"sample {s.id}: its answer says the {kind} of {image} is {word}, another sample said "
                    f"{facts[kind]}; the data set contradicts itself, so no caption can be derived"
                )
            facts[kind] = word
    out = []
    for k, (image, facts) in enumerate(found.items()):
        if facts["color"] is None or facts["shape"] is None:
            continue
        meta: dict[str, object] = {"task": "caption", **facts}  # task: scored by the caption metrics
        image_id = first[image].meta.get("image_id")
        if image_id is not None:
            meta["image_id"] = image_id
        messages = (
            Message("user", (ImagePart(image),)),
            Message("assistant", (TextPart(f"a {facts['color']} {facts['shape']}"),)),
        )
        out.append(Sample(f"image-{image_id if image_id is not None else k}", messages, meta))
    return out


def ensure_easy_vqa_captions(cache_root: Path | str, progress: bool = True) -> dict[str, Path]:
    """``captions-v1-{split}.jsonl`` beside the easy-vqa export (made on first use; the export folder
    owns them, so a rebuilt export drops them too)."""
    files = ensure_easy_vqa(cache_root, progress=progress)
    out = {}
    for split, path in files.items():
        target = path.parent / f"captions-v{FORMAT_VERSION}-{split}.jsonl"
        if not target.is_file():  # written atomically: present means complete
            write_jsonl(captions_from_vqa(load_jsonl(path)), target)
        out[split] = target
    return out
