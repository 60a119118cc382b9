"""easy-vqa with the question before the image, for docs/experiments.md ("Do the yes/no answers use the image?").

Usage: ``python benchmarks/question_first_data.py OUT`` writes ``OUT/train.jsonl`` and ``OUT/test.jsonl``: the
packaged easy-vqa samples with each user turn's text first (ending in a newline) and its image after it, image
paths made absolute. With early fusion the image token then comes after the question, so the LLM reads the
image knowing what is asked.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omnifuse.data.jsonl import write_jsonl
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.data.sources import load_data


def question_first(sample: Sample) -> Sample:
    messages = []
    for m in sample.messages:
        if m.role != "user":
            messages.append(m)
            continue
        text = [p for p in m.parts if isinstance(p, TextPart)]
        media = [p for p in m.parts if not isinstance(p, TextPart)]
        text[-1] = TextPart(text[-1].text + "\n")
        messages.append(Message(m.role, (*text, *media)))
    return Sample(sample.id, tuple(messages), dict(sample.meta))


def main(out: str) -> None:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        samples = [question_first(s) for s in load_data(f"easy-vqa:{split}")]
        assert all(isinstance(s.messages[0].parts[-1], ImagePart) for s in samples)
        write_jsonl(samples, folder / f"{split}.jsonl")
        print(folder / f"{split}.jsonl", len(samples))


if __name__ == "__main__":
    main(sys.argv[1])
