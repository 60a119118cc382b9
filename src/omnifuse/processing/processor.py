"""Processor: sample → token ids, labels and preprocessed media, using the LLM's own chat template.

Three things happen here and nowhere else:

* media are loaded and preprocessed with the *encoder's* transform;
* the conversation is rendered with the LLM's chat template (or a plain ``User:/Assistant:`` template
  for base models that have none) and each media placeholder is expanded to exactly the connector's
  token count;
* labels are masked outside assistant turns. The assistant spans come from the template itself: for
  each assistant turn, the conversation before it rendered with ``add_generation_prompt=True`` is a
  prefix of the conversation including it, and the characters in between are what the model must
  learn to produce (answer plus end-of-turn token). Token labels follow from character offsets, so
  the rule works for any prefix-stable template (ChatML, Llama-3, the base fallback) without
  per-template code.

With tiling (``MediaSlot.tiling``, see :mod:`omnifuse.processing.tiling`) an image becomes several
views: each view is one preprocessed tensor and ``tokens_per_item`` placeholders, preceded by its
position marker text (tokenised on its own, never labelled). To the model every view is one item.

Audio clips have their own length: the slot's ``tokens_for`` says how many placeholders a preprocessed
clip becomes (the encoder runs over the real length only), ``collate`` pads the clips of a batch to the
longest and records each one's length in ``Batch.media_lengths``. With an ASR cascade (``speech_to_text``)
and no audio encoder, a clip becomes its transcript instead: plain text in the user turn (late fusion).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from omnifuse.data.content import content_hash
from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart, VideoPart
from omnifuse.errors import OmnifuseError
from omnifuse.processing.tiling import Tiling
from omnifuse.untrusted import open_image

# The label of a position that carries no loss (cross_entropy's default ignore_index). It lives here,
# where labels are made; the model's loss reads it from here.
IGNORE_INDEX = -100

# Stand-in for a media item while the template renders; it is split out before tokenisation and
# never reaches the tokenizer.
MEDIA_MARKER = "\x00omnifuse-media\x00"

# For base models without a chat template. The space after "Assistant:" belongs to the answer so
# that training and generation tokenise the answer's first word the same way.
BASE_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def load_image(path, sample_id: str) -> Image.Image:
    """Open an image file as RGB, or raise an error naming the file and the sample (a header promising
    more than ``untrusted.MAX_PIXELS`` pixels is refused before decoding)."""
    if isinstance(path, Image.Image):
        return path.convert("RGB")
    return open_image(path, f"sample {sample_id}: image file")


def load_clip(source, sample_id: str, max_seconds: float | None = 30.0) -> np.ndarray:
    """A clip file (or a waveform already decoded) as 16 kHz mono float32, or an error naming the sample."""
    from omnifuse.audio.io import load_audio

    if isinstance(source, np.ndarray):  # decoded by load_audio already (a request, the chat)
        return source
    try:
        return load_audio(source, max_seconds=max_seconds)
    except OmnifuseError as exc:
        raise OmnifuseError(f"sample {sample_id}: {exc}") from None


@dataclass(frozen=True)
class MediaSlot:
    """What the processor needs to know about one modality of the model.

    ``load(source, sample_id)`` opens a media item (an image file → PIL image, a clip → waveform);
    ``transform`` is the encoder's preprocessing. Fixed-size media make ``tokens_per_item`` placeholders
    per item (per view with tiling); variable-length media (audio) set ``tokens_per_item=None`` and give
    ``tokens_for(preprocessed)`` instead, and are padded along their last axis when batched."""

    transform: Callable[[Any], torch.Tensor]
    tokens_per_item: int | None
    placeholder_id: int
    tiling: Tiling | None = None
    load: Callable[[Any, str], Any] = load_image
    tokens_for: Callable[[torch.Tensor], int] | None = None
    # Video: text before each equal segment of an item's tokens (a frame's time, "at 1.5 s:"), and the
    # clip's audio track as a waveform for the audio slot (None: no track), both from the loaded item.
    segments: Callable[[Any], list[str]] | None = None
    audio_track: Callable[[Any, str], np.ndarray | None] | None = None

    def __post_init__(self) -> None:
        if (self.tokens_per_item is None) == (self.tokens_for is None):
            raise ValueError("a media slot has either a fixed tokens_per_item or a tokens_for function")


@dataclass
class Encoded:
    sample_id: str
    input_ids: list[int]
    labels: list[int]
    media: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    # Each media item's content hash (``Processor.content_keys``; None for an item no feature cache keeps).
    media_keys: dict[str, list[str | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Packing:
    """How a packed batch's rows hold its samples (``Batch.sample_ids`` lists them in row-major order);
    made by :func:`omnifuse.processing.packing.collate_packed`."""

    position_ids: torch.Tensor  # [R, L]: each sample's positions from 0; a row's tail again from 0
    segments: torch.Tensor  # [R, L]: each token's sample (an index into Batch.sample_ids), -1 for the tail
    rows: tuple[int, ...]  # rows[s]: the row that sample s lies in

    def to(self, device: torch.device | str) -> Packing:
        return Packing(
            self.position_ids.to(device, non_blocking=True), self.segments.to(device, non_blocking=True),
            self.rows,
        )  # fmt: skip

    def row_names(self, sample_ids: Sequence[str]) -> list[str]:
        """Each row's sample ids joined by "+" (what an error about a row names)."""
        names: list[list[str]] = [[] for _ in range(int(self.segments.shape[0]))]
        for row, sid in zip(self.rows, sample_ids, strict=True):
            names[row].append(sid)
        return ["+".join(n) for n in names]

    def row_counts(self, counts: Sequence[int]) -> list[int]:
        """Per-sample counts (media items) summed per row."""
        out = [0] * int(self.segments.shape[0])
        for row, n in zip(self.rows, counts, strict=True):
            out[row] += n
        return out


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    media: dict[str, torch.Tensor]
    media_counts: dict[str, list[int]]
    sample_ids: list[str]
    # Variable-length modalities only: each item's real length along the padded last axis of media[m].
    media_lengths: dict[str, torch.Tensor] = field(default_factory=dict)
    # Each item's content hash, by modality (``Processor.content_keys``): the model's feature cache reads it.
    media_keys: dict[str, list[str | None]] = field(default_factory=dict)
    # Packed batches only (omnifuse.processing.packing): several samples per row; media_counts are then
    # per sample, samples (sample_ids) in row-major order.
    packing: Packing | None = None

    def model_inputs(self) -> dict:
        packed = {} if self.packing is None else {"packing": self.packing}
        return packed | {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "media": self.media,
            "media_counts": self.media_counts,
            "labels": self.labels,
            "sample_ids": self.sample_ids,
            "media_lengths": self.media_lengths,
            "media_keys": self.media_keys,
        }

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on ``device`` (one copy per tensor)."""
        move = {k: v.to(device, non_blocking=True) for k, v in self.media.items()}
        lengths = {k: v.to(device, non_blocking=True) for k, v in self.media_lengths.items()}
        labels = None if self.labels is None else self.labels.to(device, non_blocking=True)
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
            labels, move, dict(self.media_counts), list(self.sample_ids), lengths, dict(self.media_keys),
            None if self.packing is None else self.packing.to(device),
        )  # fmt: skip


class Processor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        media: Mapping[str, MediaSlot],
        system_prompt: str | None = None,
        speech_to_text: Callable[[Any, str], str] | None = None,
    ) -> None:
        if not tokenizer.is_fast:
            raise OmnifuseError(
                "omnifuse needs a fast (Rust) tokenizer for label masking by character offsets"
            )
        self.tokenizer = tokenizer
        self.media = dict(media)
        self.system_prompt = system_prompt
        # ASR cascade: (clip, sample id) → transcript, used for audio parts when there is no audio slot.
        self.speech_to_text = speech_to_text
        self.template = tokenizer.chat_template or BASE_TEMPLATE
        self.pad_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        )
        self.stop_ids = self._stop_ids()
        # Where collate puts its batches: the model's device, set by whoever places the model
        # (omnifuse.runtime.place_model's callers); batches are built on the CPU and copied once.
        self.device = torch.device("cpu")
        # Hash each fixed-size image item's content into Batch.media_keys (set where a feature cache reads them).
        self.content_keys = False
        self._markers: dict[str, list[int]] = {}

    def _stop_ids(self) -> list[int]:
        """Tokens that end an assistant turn: EOS plus the template's end-of-turn token if it has one."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        # The end-of-turn token is whatever the template writes right after an assistant answer.
        probe = self._render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], False)
        prefix = self._render([{"role": "user", "content": "x"}], True)
        tail = probe[len(prefix) :]
        tail_ids = self.tokenizer(tail, add_special_tokens=False).input_ids
        specials = set(self.tokenizer.all_special_ids)
        specials |= {i for i, tok in self.tokenizer.added_tokens_decoder.items() if tok.special}
        ids.update(t for t in tail_ids if t in specials)
        return sorted(ids)

    def _marker_ids(self, marker: str) -> list[int]:
        """Token ids of a tile-position marker (plain text through the tokenizer; cached)."""
        if not marker:
            return []
        if marker not in self._markers:
            self._markers[marker] = self.tokenizer(marker, add_special_tokens=False).input_ids
        return self._markers[marker]

    # ------------------------------------------------------------ rendering
    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _as_template_messages(
        self, messages: Sequence[Message], sample_id: str = "?"
    ) -> tuple[list[dict], list[tuple[str, object]]]:
        out, items = [], []
        if self.system_prompt is not None and (not messages or messages[0].role != "system"):
            out.append({"role": "system", "content": self.system_prompt})
        for msg in messages:
            text = []
            for part in msg.parts:
                if isinstance(part, TextPart):
                    text.append(part.text)
                elif isinstance(part, ImagePart):
                    text.append(MEDIA_MARKER)
                    items.append(("image", part.source))
                elif isinstance(part, AudioPart) and "audio" not in self.media and self.speech_to_text:
                    text.append(self.speech_to_text(part.source, sample_id))
                elif isinstance(part, AudioPart):
                    text.append(MEDIA_MARKER)
                    items.append(("audio", part.source))
                elif isinstance(part, VideoPart):
                    text.append(MEDIA_MARKER)
                    items.append(("video", part))
                    track = self._audio_track(part, sample_id)
                    if track is not None:  # Video-LLaMA's audio branch: the clip's sound after its frames
                        text.append(MEDIA_MARKER)
                        items.append(("audio", track))
                else:  # pragma: no cover - parse_sample admits only the types above
                    raise OmnifuseError(f"unsupported message part {part!r}")
            out.append({"role": msg.role, "content": "".join(text)})
        return out, items

    def _audio_track(self, part: VideoPart, sample_id: str) -> np.ndarray | None:
        slot = self.media.get("video")
        if slot is None or slot.audio_track is None or "audio" not in self.media:
            return None
        return slot.audio_track(part, sample_id)

    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool, sample_id: str = "?"
    ) -> tuple[str, list[tuple[int, int]], list]:
        """Rendered text, character spans of the assistant answers to learn, and the media items in order."""
        tmsgs, items = self._as_template_messages(messages, sample_id)
        text = self._render(tmsgs, add_generation_prompt)
        spans = []
        for i, m in enumerate(tmsgs):
            if m["role"] != "assistant":
                continue
            prefix = self._render(tmsgs[:i], True)
            upto = self._render(tmsgs[: i + 1], False)
            if not (upto.startswith(prefix) and text.startswith(upto)):
                raise OmnifuseError(
                    "the LLM's chat template is not prefix-stable (rendering a conversation changes earlier "
                    "turns), so assistant turns cannot be located for label masking; use a template without "
                    "history rewriting"
                )
            spans.append((len(prefix), len(upto)))
        return text, spans, items

    # ------------------------------------------------------------ encoding
    def encode(self, sample: Sample, for_generation: bool = False) -> Encoded:
        messages = sample.prompt() if for_generation else sample.messages
        text, spans, items = self.render(messages, add_generation_prompt=for_generation, sample_id=sample.id)
        pieces = text.split(MEDIA_MARKER)
        if len(pieces) - 1 != len(items):
            raise OmnifuseError(
                f"sample {sample.id}: the text contains the reserved media marker; remove NUL characters from it"
            )
        ids: list[int] = []
        labels: list[int] = []
        media: dict[str, list[torch.Tensor]] = {}
        keys: dict[str, list[str | None]] = {}
        offset = 0
        for k, piece in enumerate(pieces):
            if piece:
                enc = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                for tok, (s, e) in zip(enc.input_ids, enc.offset_mapping, strict=True):
                    s, e = s + offset, e + offset
                    ids.append(tok)
                    inside = any(e > a and s < b for a, b in spans)
                    labels.append(tok if inside and not for_generation else IGNORE_INDEX)
            offset += len(piece)
            if k < len(items):
                modality, ref = items[k]
                slot = self.media.get(modality)
                if slot is None:
                    hint = " or ASR cascade (model.asr)" if modality == "audio" else ""
                    raise OmnifuseError(
                        f"sample {sample.id} has an {modality} but this model has no {modality} encoder{hint} "
                        f"(it has: {', '.join(self.media) or 'none'})"
                    )
                item = slot.load(ref, sample.id)
                views = slot.tiling.views(item) if slot.tiling is not None else [("", item)]
                for marker, view in views:
                    marker_ids = self._marker_ids(marker)
                    ids.extend(marker_ids)
                    labels.extend([IGNORE_INDEX] * len(marker_ids))
                    tensor = slot.transform(view)
                    media.setdefault(modality, []).append(tensor)
                    if self.content_keys:
                        keys.setdefault(modality, []).append(self._content_key(slot, view))
                    n = slot.tokens_per_item if slot.tokens_for is None else slot.tokens_for(tensor)
                    for seg_marker, seg_n in self._segments(slot, view, n, sample.id):
                        seg_ids = self._marker_ids(seg_marker)
                        ids.extend(seg_ids + [slot.placeholder_id] * seg_n)
                        labels.extend([IGNORE_INDEX] * (len(seg_ids) + seg_n))
                offset += len(MEDIA_MARKER)
        if not for_generation and all(lab == IGNORE_INDEX for lab in labels):
            raise OmnifuseError(
                f"sample {sample.id} has no assistant answer to learn from; add an assistant turn"
            )
        return Encoded(sample.id, ids, labels, media, keys)

    @staticmethod
    def _content_key(slot: MediaSlot, view: Any) -> str | None:
        """The content hash of a decoded image item; None for variable-length media (audio) and video
        clips, which no feature cache keeps (see omnifuse.models.feature_cache)."""
        return content_hash(view) if slot.tokens_for is None and isinstance(view, Image.Image) else None

    @staticmethod
    def _segments(slot: MediaSlot, item: Any, n: int, sample_id: str) -> list[tuple[str, int]]:
        """(text before it, placeholder count) per segment of an item's ``n`` tokens: one segment without
        ``slot.segments``; with it (video frames) one per marker, the tokens shared equally."""
        markers = slot.segments(item) if slot.segments is not None and n else [""]
        if n % len(markers):
            raise OmnifuseError(
                f"sample {sample_id}: {n} media tokens cannot be split evenly over {len(markers)} segments"
            )
        return [(m, n // len(markers)) for m in markers]

    def collate(self, encoded: Sequence[Encoded], padding_side: str = "right") -> Batch:
        """Pad to the longest sample; right padding for training, left padding for generation."""
        if not encoded:
            raise ValueError("cannot collate an empty batch")
        width = max(len(e.input_ids) for e in encoded)
        cpu = torch.device("cpu")
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long, device=cpu)
        labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long, device=cpu)
        mask = torch.zeros((len(encoded), width), dtype=torch.long, device=cpu)
        for b, e in enumerate(encoded):
            n = len(e.input_ids)
            sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
            ids[b, sl] = torch.tensor(e.input_ids, device=cpu)
            labels[b, sl] = torch.tensor(e.labels, device=cpu)
            mask[b, sl] = 1
        media, counts, lengths, keys = {}, {}, {}, {}
        for modality, slot in self.media.items():
            items = [t for e in encoded for t in e.media.get(modality, [])]
            counts[modality] = [len(e.media.get(modality, [])) for e in encoded]
            if not items:
                continue
            if all(modality in e.media_keys or not e.media.get(modality) for e in encoded):
                keys[modality] = [k for e in encoded for k in e.media_keys.get(modality, [])]
            if slot.tokens_for is None:
                media[modality] = torch.stack(items)
                continue
            # Variable length: pad the last axis with zeros to the longest item, and keep the lengths.
            lengths[modality] = torch.tensor([t.shape[-1] for t in items], device=cpu)
            longest = int(lengths[modality].max())
            media[modality] = torch.stack([F.pad(t, (0, longest - t.shape[-1])) for t in items])
        has_labels = bool((labels != IGNORE_INDEX).any())
        ids_list = [e.sample_id for e in encoded]
        batch = Batch(ids, mask, labels if has_labels else None, media, counts, ids_list, lengths, keys)
        return batch if self.device.type == "cpu" else batch.to(self.device)
