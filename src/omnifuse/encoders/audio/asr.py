"""Speech recognition with Whisper: waveforms → English transcripts (greedy decoding).

This is the speech-to-text step of a cascade (transcribe, then hand the text to the LLM). Decoding is
transformers' Whisper ``generate`` with the English transcription prompt
``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``. Clips are sorted by length before
batching, so similar lengths share a batch.

Two ways to feed the encoder:

- ``pad_to_30s=True`` (default): every clip padded with silence to 30 s, as Whisper was trained and as
  transformers' encoder requires.
- ``pad_to_30s=False``: each clip gets ``trailing_silence_s`` of silence and each batch is padded to its
  longest clip only; the encoder runs over those frames
  (:class:`~omnifuse.encoders.audio.whisper.WhisperAudioEncoder`). Padding is silence rather than
  masked-out frames because Whisper's decoder has no cross-attention mask. Cheaper per clip, but
  Whisper-base, which always saw a 30 s window, then more often repeats a phrase until the token budget
  runs out (without the trailing silence it does so on most clips), so it is not the default.

A repeating decoder would otherwise run on to Whisper's 448-token limit; the token budget
(:meth:`Transcriber.token_budget`) stops it at 16 + 10 tokens per second of audio, well above any
speaking rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from transformers import (
    PreTrainedTokenizerBase,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperTokenizerFast,
)
from transformers.modeling_outputs import BaseModelOutput

from omnifuse.assets import load_pretrained
from omnifuse.encoders.audio.whisper import WHISPER_HINT, WhisperAudioEncoder, load_whisper
from omnifuse.errors import OmnifuseError

PROMPT = ("<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>")
PAD_TO_30S = True
TRAILING_SILENCE_S = 3.0  # appended to each clip when not padding to 30 s (see the module docstring)
TOKENS_PER_SECOND = 10  # English speech is ~2.5 words, ~3.5 tokens per second
MIN_NEW_TOKENS = 16


class Transcriber:
    """Batched greedy Whisper transcription of 16 kHz mono waveforms (each at most 30 s)."""

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        feature_extractor: WhisperFeatureExtractor,
        pad_to_30s: bool = PAD_TO_30S,
        trailing_silence_s: float = TRAILING_SILENCE_S,
    ) -> None:
        if trailing_silence_s < 0:
            raise OmnifuseError(f"trailing_silence_s must be ≥ 0, got {trailing_silence_s}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.encoder = WhisperAudioEncoder(model.get_encoder(), feature_extractor)
        self.pad_to_30s = pad_to_30s
        self.trailing_silence_s = trailing_silence_s
        self.max_target_tokens = model.config.max_target_positions - len(PROMPT)

    @classmethod
    def load(
        cls,
        weights: str = "whisper-base",
        pad_to_30s: bool = PAD_TO_30S,
        trailing_silence_s: float = TRAILING_SILENCE_S,
    ) -> Transcriber:
        """From a packaged name (``whisper-base``), a local Whisper folder or a hub id."""
        model, feature_extractor = load_whisper(weights, WhisperForConditionalGeneration)
        tokenizer = load_pretrained(
            lambda: WhisperTokenizerFast.from_pretrained(model.name_or_path),
            "Whisper tokenizer",
            weights,
            model.name_or_path,
            WHISPER_HINT,
        )
        return cls(model, tokenizer, feature_extractor, pad_to_30s, trailing_silence_s)

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @torch.inference_mode()
    def transcribe(self, waveforms: Sequence[np.ndarray], batch_size: int = 8) -> list[str]:
        """One transcript per waveform, in input order (leading/trailing spaces removed)."""
        if batch_size < 1:
            raise OmnifuseError(f"batch_size must be at least 1, got {batch_size}")
        waves = [self.encoder.check_waveform(w) for w in waveforms]
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # similar lengths share a batch
        texts: list[str] = [""] * len(waves)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            ids = self._generate([waves[i] for i in chosen])
            for i, text in zip(
                chosen, self.tokenizer.batch_decode(ids, skip_special_tokens=True), strict=True
            ):
                texts[i] = text.strip()
        return texts

    def token_budget(self, num_samples: int) -> int:
        """How many tokens may follow the prompt for a clip of ``num_samples`` samples."""
        seconds = num_samples / self.sample_rate
        return min(self.max_target_tokens, MIN_NEW_TOKENS + math.ceil(TOKENS_PER_SECOND * seconds))

    def _generate(self, waves: list[np.ndarray]) -> torch.Tensor:
        options = {
            "language": "en",
            "task": "transcribe",
            "do_sample": False,
            "num_beams": 1,
            # Whisper's generate adds the prompt's length to max_length (max_new_tokens would do the same
            # but makes transformers warn that the generation config sets max_length too)
            "max_length": self.token_budget(max(len(w) for w in waves)),
        }
        if self.pad_to_30s:
            mel = self.feature_extractor(waves, sampling_rate=self.sample_rate, return_tensors="pt")
            return self.model.generate(input_features=mel.input_features, **options)
        silence = round(self.trailing_silence_s * self.sample_rate)
        limit = self.encoder.max_frames * self.encoder.hop_length
        waves = [np.pad(w, (0, max(0, min(silence, limit - len(w))))) for w in waves]
        mel = self.feature_extractor(
            waves,
            sampling_rate=self.sample_rate,
            padding="longest",
            pad_to_multiple_of=2 * self.encoder.hop_length,
            truncation=False,
            return_tensors="pt",
        ).input_features
        lengths = torch.full((mel.shape[0],), mel.shape[-1], dtype=torch.long)
        features, _ = self.encoder(mel, lengths)
        return self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=features), **options)
