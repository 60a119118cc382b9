"""``OmnifuseProcessor``: the exported folder's processor for ``AutoProcessor``.

It is omnifuse's own :class:`~omnifuse.processing.Processor` (the encoders' preprocessing, the LLM's
chat template with the recipe's system prompt, placeholders expanded to the connector's token count),
rebuilt from ``config.json`` and the tokenizer in the folder: the model's parts are built on the
``meta`` device (no memory, no weights), since only their preprocessing and token counts are needed.
``processor_config.json`` records the preprocessing settings (image size, crop, mean, std, resampling;
audio sampling rate and hop), the token counts and the placeholder ids, and is checked against the
rebuilt processor when loaded.

An ASR cascade (``model.asr``) is part of the processor, as in omnifuse: its Whisper is a plain Hugging
Face Whisper folder in ``asr/`` (safetensors, tokenizer, feature extractor), loaded when the processor
is, and a clip becomes its transcript in the user turn.

``processor(text=QUESTION, images=IMAGE, audio=CLIP)`` makes the prompt ``omnifuse chat`` makes: one
user turn with the images, then the clips, then the text; then the assistant's turn begins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature

from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
from omnifuse.encoders.audio.asr import Transcriber
from omnifuse.errors import OmnifuseError
from omnifuse.fusion.late import SpeechToText
from omnifuse.hf.config import OmnifuseConfig
from omnifuse.hf.media import features_of
from omnifuse.hf.modeling import build_parts, local_folder, model_spec
from omnifuse.models.multimodal import MultimodalLM
from omnifuse.processing import Processor
from omnifuse.untrusted import read_json

PROCESSOR_CONFIG = "processor_config.json"
ASR_FOLDER = "asr"
SETTINGS = ("image_size", "crop", "resize_shorter", "mean", "std", "resample", "sample_rate", "hop_length")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def settings(model: MultimodalLM, processor: Processor) -> dict:
    """What the processor does with each modality, as JSON (the encoders own these settings)."""
    media = {}
    for m, slot in processor.media.items():
        encoder = model.encoders[m]
        entry = {"encoder": type(encoder).__name__, "placeholder_id": slot.placeholder_id}
        entry |= {k: _plain(getattr(encoder, k)) for k in SETTINGS if hasattr(encoder, k)}
        entry["tokens_per_item"] = slot.tokens_per_item  # None: per clip, from its length
        entry["tiling"] = None if slot.tiling is None else vars(slot.tiling)
        media[m] = entry
    asr = None if processor.speech_to_text is None else ASR_FOLDER
    return {"processor_class": "OmnifuseProcessor", "system_prompt": processor.system_prompt, "media": media,
            "asr": asr}  # fmt: skip


class OmnifuseProcessor:
    def __init__(self, processor: Processor, settings: dict) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.settings = settings

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> OmnifuseProcessor:
        folder = local_folder(pretrained_model_name_or_path)
        config = OmnifuseConfig.from_pretrained(folder)
        with torch.device("meta"):
            model, processor = build_parts(config, AutoTokenizer.from_pretrained(folder))
        asr = model_spec(config).asr
        if asr is not None:
            transcriber = Transcriber.load(str(folder / ASR_FOLDER))
            cascade = SpeechToText(transcriber, batch_size=asr.batch_size, max_seconds=asr.max_seconds)
            processor = Processor(processor.tokenizer, processor.media, processor.system_prompt, cascade)
        found = json.loads(json.dumps(settings(model, processor)))
        recorded = read_json(folder / PROCESSOR_CONFIG, "processor config")
        if recorded != found:
            raise OmnifuseError(
                f"{folder / PROCESSOR_CONFIG} does not describe the processor config.json rebuilds "
                f"(recorded {recorded}, rebuilt {found}); the folder was edited. Export it again"
            )
        return cls(processor, found)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        cascade = self.processor.speech_to_text
        if cascade is not None:
            transcriber = cascade.transcriber
            transcriber.model.save_pretrained(folder / ASR_FOLDER)
            transcriber.tokenizer.save_pretrained(folder / ASR_FOLDER)
            transcriber.feature_extractor.save_pretrained(folder / ASR_FOLDER)
        text = json.dumps(self.settings, indent=2, sort_keys=True) + "\n"
        (folder / PROCESSOR_CONFIG).write_text(text, encoding="utf-8")

    def __call__(self, text=None, images=None, audio=None, return_tensors="pt", **kwargs) -> BatchFeature:
        """One prompt per text (a string, or a list for a batch); ``images`` / ``audio``: one item or a
        list of items per prompt (an image: PIL image or file; a clip: 16 kHz waveform or file)."""
        if kwargs:
            raise OmnifuseError(f"OmnifuseProcessor takes text, images and audio, not {', '.join(kwargs)}")
        if return_tensors not in (None, "pt"):
            raise OmnifuseError(
                f"return_tensors={return_tensors!r}: the processor returns torch tensors ('pt')"
            )
        texts = [text] if text is None or isinstance(text, str) else list(text)
        batch = len(texts)
        image_rows, audio_rows = _rows(images, batch, "images"), _rows(audio, batch, "audio")
        samples = []
        for i, question in enumerate(texts):
            parts = [ImagePart(image=x.convert("RGB")) if isinstance(x, Image.Image) else ImagePart(Path(x))
                     for x in image_rows[i]]  # fmt: skip
            parts += [AudioPart(waveform=x.astype(np.float32)) if isinstance(x, np.ndarray) else AudioPart(Path(x))
                      for x in audio_rows[i]]  # fmt: skip
            if question:
                parts.append(TextPart(question))
            turns = (Message("user", tuple(parts)), Message("assistant", (TextPart(""),)))
            samples.append(Sample(f"prompt-{i}", turns, {}))
        encoded = [self.processor.encode(s, for_generation=True) for s in samples]
        collated = self.processor.collate(encoded, padding_side="left")
        return BatchFeature(features_of(collated))

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, **({"skip_special_tokens": True} | kwargs))

    def batch_decode(self, ids, **kwargs) -> list[str]:
        return [self.decode(row, **kwargs) for row in ids]


def _rows(items, batch: int, what: str) -> list[list]:
    if items is None:
        return [[] for _ in range(batch)]
    if not isinstance(items, (list, tuple)):
        items = [items]
    if batch == 1:
        return [list(items)]
    if len(items) != batch:
        raise OmnifuseError(f"{len(items)} entries of {what} for {batch} texts; give one entry per text")
    return [list(x) if isinstance(x, (list, tuple)) else ([] if x is None else [x]) for x in items]


__all__ = ["OmnifuseProcessor", "settings", "PROCESSOR_CONFIG"]
