"""Late fusion by cascade: another model turns a modality into text before the LLM sees it.

The ASR cascade transcribes each spoken part with Whisper and puts the transcript where the clip was;
the LLM reads it like typed text. It needs no training (the text model is reused as it is) but it loses
what a transcript cannot hold and inherits the recogniser's errors — the trade-off
``docs/audio.md`` measures against the direct embedding (``encoders.audio`` + ``connectors.audio``).

Transcripts are kept per clip file (path, size, modification time) for the life of the object, and a
data set's clips are transcribed in batches up front (:meth:`SpeechToText.prefetch`), which is several
times faster than one clip at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omnifuse.data.sample import Sample
from omnifuse.processing.processor import load_clip
from omnifuse.progress import progress_bar


def _key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


class SpeechToText:
    """``(clip, sample id) → transcript`` for the processor; ``clip`` is a path or a 16 kHz waveform."""

    def __init__(self, transcriber, batch_size: int = 16, max_seconds: float = 30.0) -> None:
        self.transcriber = transcriber
        self.batch_size = batch_size
        self.max_seconds = max_seconds
        self._known: dict[tuple[str, int, int], str] = {}

    def _load(self, clip: Path | np.ndarray, sample_id: str) -> np.ndarray:
        return load_clip(clip, sample_id, self.max_seconds)

    def __call__(self, clip: Path | np.ndarray, sample_id: str) -> str:
        if not isinstance(clip, Path):
            return self.transcriber.transcribe([self._load(clip, sample_id)], batch_size=1)[0]
        key = _key(clip)
        if key not in self._known:
            self._known[key] = self.transcriber.transcribe([self._load(clip, sample_id)], batch_size=1)[0]
        return self._known[key]

    def forget(self) -> None:
        """Drop the remembered transcripts (e.g. to time transcription itself)."""
        self._known.clear()

    def prefetch(self, samples: Sequence[Sample], progress: bool = True) -> None:
        """Transcribe every clip of ``samples`` not transcribed yet, in batches."""
        todo: dict[tuple[str, int, int], tuple[Path, str]] = {}
        for s in samples:
            for clip in s.audios():
                if isinstance(clip, Path) and (key := _key(clip)) not in self._known:
                    todo.setdefault(key, (clip, s.id))
        keys = list(todo)
        with progress_bar("transcribe (ASR cascade)", len(keys), enabled=progress) as bar:
            for i in range(0, len(keys), self.batch_size):
                chunk = keys[i : i + self.batch_size]
                waves = [self._load(*todo[k]) for k in chunk]
                for k, text in zip(
                    chunk, self.transcriber.transcribe(waves, batch_size=len(waves)), strict=True
                ):
                    self._known[k] = text
                bar.advance(len(chunk))
