"""A multi-turn chat about an image, typed or spoken, on top of the engine (used by `omnifuse chat` and
quickstart)."""

from __future__ import annotations

from pathlib import Path

from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, generation_config
from omnifuse.processing.processor import load_clip
from omnifuse.untrusted import open_image


class ChatSession:
    def __init__(self, model, processor, recipe, max_new_tokens: int | None = None) -> None:
        self.engine = Engine(model, processor)
        self.cfg = generation_config(recipe, max_new_tokens)
        self.image: Path | None = None
        self.history: list[Message] = []

    def set_image(self, path: Path) -> None:
        """Attach an image to the next question (checked now, so a bad path fails before asking)."""
        open_image(path, "image file")
        self.image = Path(path)

    def reset(self) -> None:
        self.history.clear()
        self.image = None

    def ask(self, question: str | None = None, audio: Path | None = None) -> str:
        """Answer a typed question, a spoken one (``audio``: a clip file), or both (the text follows the clip)."""
        if not question and audio is None:
            raise OmnifuseError("ask a question: type it or give a clip with --audio")
        parts: list = []
        attached = any(
            isinstance(p, ImagePart) and p.path == self.image for m in self.history for p in m.parts
        )
        if self.image is not None and not attached:
            parts.append(ImagePart(self.image))
        if audio is not None:
            spoken = (
                self.engine.processor.media.get("audio") is not None or self.engine.processor.speech_to_text
            )
            if not spoken:
                raise OmnifuseError(
                    "this model cannot hear: it has neither an audio encoder nor an ASR cascade; train an audio "
                    "recipe (`omnifuse cp audio-embed DEST` or `omnifuse cp audio-cascade DEST`) or type the question"
                )
            # Decoded once here: a bad clip fails before the conversation changes.
            parts.append(AudioPart(waveform=load_clip(Path(audio), "chat")))
        if question:
            parts.append(TextPart(question))
        self.history.append(Message("user", tuple(parts)))
        # The prompt of a sample is everything before its last assistant turn, so add an empty one.
        sample = Sample("chat", (*self.history, Message("assistant", (TextPart(""),))), {})
        answer = self.engine.generate([sample], self.cfg)[0]
        self.history.append(Message("assistant", (TextPart(answer),)))
        return answer
