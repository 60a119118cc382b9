"""What an explanation starts from: the image, the chosen decoder layers, the prompt and the answer
tokens (teacher-forced), checked and encoded by the model's own processor."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from omnifuse import untrusted
from omnifuse.data.sample import ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.processing.processor import IGNORE_INDEX

MODALITY = "image"


def open_image(path: Path | str) -> Image.Image:
    """The image to explain, as RGB; a missing, unreadable or oversized file is an OmnifuseError."""
    return untrusted.open_image(path, "--image")


def parse_layers(spec: str | None, num_layers: int) -> list[int]:
    """Decoder layers (0-based) from a spec: ``all`` (or None), ``last8``, ``20-29``, ``5`` or a comma
    list of these (``0-3,28,29``). Out-of-range or empty selections are an OmnifuseError."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return list(range(num_layers))
    chosen: set[int] = set()
    for part in spec.replace(" ", "").lower().split(","):
        if m := re.fullmatch(r"last(\d+)", part):
            k = int(m.group(1))
            if not 1 <= k <= num_layers:
                raise OmnifuseError(
                    f"--layers {spec!r}: last{k} needs 1 ≤ {k} ≤ {num_layers} (the LLM's layers)"
                )
            chosen.update(range(num_layers - k, num_layers))
        elif m := re.fullmatch(r"(\d+)(?:-(\d+))?", part):
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if lo > hi or hi >= num_layers:
                raise OmnifuseError(
                    f"--layers {spec!r}: {part} is not a range within the LLM's layers 0-{num_layers - 1}"
                )
            chosen.update(range(lo, hi + 1))
        else:
            raise OmnifuseError(
                f"--layers {spec!r}: cannot read {part!r}; use all, lastN, A-B, N or a comma list of these"
            )
    return sorted(chosen)


def question_sample(image: Image.Image | None, question: str, answer: str | None = None) -> Sample:
    """The one-turn conversation: the image (if any) before the question, as in the training data."""
    parts = ((ImagePart(image=image),) if image is not None else ()) + (TextPart(question),)
    messages = [Message("user", parts)]
    if answer is not None:
        messages.append(Message("assistant", (TextPart(answer),)))
    return Sample("explain", tuple(messages))


@dataclass
class ExplainInputs:
    """A prompt followed by the answer tokens but the last (teacher forcing), ready for the LLM."""

    input_ids: torch.Tensor  # [1, T]
    pixels: torch.Tensor | None  # [1, ...] the preprocessed image the encoder receives, or None
    image_positions: list[int]  # positions of the image's placeholder tokens (early fusion)
    target_ids: list[int]
    target_positions: list[int]  # position predicting each target token

    @classmethod
    def build(cls, prompt_ids: Sequence[int], pixels: torch.Tensor | None, placeholder_id: int | None,
              target_ids: Sequence[int], device: torch.device | None = None) -> ExplainInputs:  # fmt: skip
        """``device``: the model's (ids and pixels are put there; default the CPU)."""
        if not target_ids:
            raise OmnifuseError("there is no answer token to explain (the answer is empty)")
        ids = list(prompt_ids) + list(target_ids[:-1])
        n = len(prompt_ids)
        image_positions = [i for i, t in enumerate(ids) if placeholder_id is not None and t == placeholder_id]
        device = device or torch.device("cpu")
        return cls(
            torch.tensor([ids], device=device),
            pixels.to(device) if pixels is not None else None,
            image_positions,
            list(target_ids),
            [n - 1 + k for k in range(len(target_ids))],
        )


def check_supported(model: MultimodalLM, processor: Processor) -> None:
    if MODALITY not in model.encoders:
        raise OmnifuseError("this model has no image encoder; there is no image to explain")
    slot = processor.media[MODALITY]
    if slot.tiling is not None:
        raise OmnifuseError(
            "explain does not support tiled images yet (the model sees several views of the image, each with "
            "its own tokens and pixels); explain a model trained without model.tiling"
        )


def encode_prompt(
    processor: Processor, image: Image.Image | None, question: str
) -> tuple[list[int], torch.Tensor | None]:
    enc = processor.encode(question_sample(image, question), for_generation=True)
    items = enc.media.get(MODALITY, [])
    return enc.input_ids, (torch.stack(items) if items else None)


def answer_token_ids(
    processor: Processor, image: Image.Image, question: str, answer: str
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) for a given answer text, tokenised as training does: the labelled tokens
    of the full conversation up to the first end-of-turn token."""
    enc = processor.encode(question_sample(image, question, answer))
    labelled = [i for i, lab in enumerate(enc.labels) if lab != IGNORE_INDEX]
    if not labelled:
        raise OmnifuseError(f"the answer {answer!r} gives no tokens to explain; give a non-empty --answer")
    start = labelled[0]
    stop = set(processor.stop_ids)
    ids: list[int] = []
    for i in labelled:
        if enc.input_ids[i] in stop:
            break
        ids.append(enc.input_ids[i])
    if not ids:
        raise OmnifuseError(f"the answer {answer!r} gives no tokens to explain; give a non-empty --answer")
    return enc.input_ids[:start], ids
