"""A multi-turn chat about images, typed or spoken, on top of the engine (used by `omnifuse chat` and
quickstart). A question may carry several images: in order before its text, or where its ``<image>``
markers stand (``compare <image> with <image>``), interleaved with the text as in a data set's sample."""

from __future__ import annotations

from pathlib import Path

from omnifuse.data.converters import IMAGE_MARKER  # where an image stands in a question, as in LLaVA data
from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart, VideoPart
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, generation_config, pack_weights, token_pruning
from omnifuse.processing.processor import load_clip
from omnifuse.untrusted import open_image


class ChatSession:
    def __init__(self, model, processor, recipe, max_new_tokens: int | None = None) -> None:
        self.engine = Engine(model, processor, token_pruning(recipe), pack_weights(recipe))
        self.cfg = generation_config(recipe, max_new_tokens)
        self.images: list[Path] = []  # attached to the next question
        self.videos: list[VideoPart] = []  # attached to the next question, placed before its images
        self.history: list[Message] = []

    def set_image(self, path: Path) -> None:
        """Attach an image to the next question, in place of any attached since the last question (checked
        now, so a bad path fails before asking)."""
        open_image(path, "image file")
        self.images = [Path(path)]

    def add_image(self, path: Path) -> None:
        """Attach one more image to the next question (checked now)."""
        open_image(path, "image file")
        self.images.append(Path(path))

    def add_video(self, path: Path, start: float | None = None, end: float | None = None) -> None:
        """Attach a video (or its part from ``start`` to ``end`` seconds) to the next question; decoded and
        sampled now as the model samples it, so a bad or too short file fails before asking."""
        slot = self.engine.processor.media.get("video")
        if slot is None:
            raise OmnifuseError(
                "this model takes no video: it has no video encoder; train a video recipe "
                "(`omnifuse cp video-llama DEST`) or ask about images"
            )
        part = VideoPart(Path(path), start=start, end=end)
        slot.load(part, "chat")
        self.videos.append(part)

    def reset(self) -> None:
        self.history.clear()
        self.images.clear()
        self.videos.clear()

    def _question(self, question: str | None) -> list:
        """The question's text with the attached images: at its ``<image>`` markers, else before it."""
        pieces = (question or "").split(IMAGE_MARKER)
        markers = len(pieces) - 1
        if markers and markers != len(self.images):
            raise OmnifuseError(
                f"the question has {markers} {IMAGE_MARKER} marker(s) but {len(self.images)} image(s) are "
                "attached; attach one image per marker (--image, or /image in the chat), or leave the markers out"
            )
        images = [ImagePart(p) for p in self.images]
        if not markers:
            return [*images, *([TextPart(question)] if question else [])]
        parts: list = [TextPart(pieces[0])] if pieces[0] else []
        for image, piece in zip(images, pieces[1:], strict=True):
            parts.extend([image, TextPart(piece)] if piece else [image])
        return parts

    def _clip(self, audio: Path) -> AudioPart:
        spoken = self.engine.processor.media.get("audio") is not None or self.engine.processor.speech_to_text
        if not spoken:
            raise OmnifuseError(
                "this model cannot hear: it has neither an audio encoder nor an ASR cascade; train an audio "
                "recipe (`omnifuse cp audio-embed DEST` or `omnifuse cp audio-cascade DEST`) or type the question"
            )
        # Decoded once here: a bad clip fails before the conversation changes.
        return AudioPart(waveform=load_clip(Path(audio), "chat"))

    def ask(self, question: str | None = None, audio: Path | None = None) -> str:
        """Answer a typed question, a spoken one (``audio``: a clip file), or both (the text follows the clip)."""
        if not question and audio is None and not self.videos:
            raise OmnifuseError("ask a question: type it or give a clip with --audio")
        text = self._question(question)
        clip = [self._clip(audio)] if audio is not None else []
        # Images placed before the question come first, then the clip, then the text.
        lead = 0 if IMAGE_MARKER in (question or "") else len(self.images)
        self.history.append(Message("user", (*self.videos, *text[:lead], *clip, *text[lead:])))
        self.images, self.videos = [], []
        # The prompt of a sample is everything before its last assistant turn, so add an empty one.
        sample = Sample("chat", (*self.history, Message("assistant", (TextPart(""),))), {})
        answer = self.engine.generate([sample], self.cfg)[0]
        self.history.append(Message("assistant", (TextPart(answer),)))
        return answer
