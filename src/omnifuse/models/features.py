"""Frozen-encoder features of samples, cached on disk, and their per-modality normalisation.

Classic fusion and alignment train small heads on features of frozen encoders; encoding is then the
only expensive step, so it is done once per (encoder, inputs) and kept in
``cache_dir()/features/<key>.safetensors``. The key is a SHA-256 of the encoder spec, the identity of its
weights (file paths, sizes and modification times), :data:`PREPROCESS_VERSION`, the feature form (pooled
or tokens), and the ordered identities of the inputs (file path + size + modification time, or the text
itself): changing any of them — retouching an image, another subset, other weights — computes anew.
Files are written to a temporary sibling and renamed, so a crash never leaves a half-written entry.

Which input an encoder reads is its kind (its spec's ``reads``): the sample's image part, its audio part, or the
text of its user turn (the question). Exactly one image / audio part per sample is expected.

Forms: ``pooled`` → ``[N, D]``; ``tokens`` → ``[N, P, D]`` (grid tokens of a CNN, word-piece states of a
BERT, time segments × mel bands of a spectrogram, pixel rows × columns).

Placement: an encoder with a network (CNN, Hugging Face vision tower, MiniLM, Whisper) runs on the
``placement`` it is given (its frozen weights stored in the compute dtype, forward passes under autocast);
pixels and log-mel are numpy preprocessing on the CPU. Features come back to the CPU as float32, where the
cache keeps them; a low compute dtype is part of the cache key (float32 keys are unchanged by it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from omnifuse.audio.io import SAMPLE_RATE, load_audio
from omnifuse.data.content import content_hash
from omnifuse.data.sample import Sample
from omnifuse.errors import OmnifuseError
from omnifuse.models.weights import save_tensors_atomic
from omnifuse.progress import progress_bar
from omnifuse.recipe import (
    EfficientNetLite0Spec,
    HFVisionSpec,
    LogMelSpec,
    MiniLMSpec,
    MobileNetV2Spec,
    PixelsSpec,
    WhisperFeaturesSpec,
)
from omnifuse.runtime import Placement, place_model
from omnifuse.untrusted import open_image

PREPROCESS_VERSION = 2  # bump when an extractor's preprocessing changes, to invalidate cached features
FORMS = ("pooled", "tokens")


# ------------------------------------------------------------------ reading a sample's input
def _one(items: list, kind: str, sample: Sample) -> Any:
    if len(items) != 1:
        raise OmnifuseError(
            f"sample {sample.id!r} has {len(items)} {kind} part(s); a classifier's {kind} encoder reads exactly "
            f"one {kind} per sample. Give every sample one {kind}, or remove the {kind} encoder from the recipe."
        )
    return items[0]


def _question(sample: Sample) -> str:
    text = "\n".join(m.text() for m in sample.prompt() if m.role == "user").strip()
    if not text:
        raise OmnifuseError(
            f"sample {sample.id!r} has no text in its user turn, but the recipe has a text encoder; add the "
            "question text or remove the text encoder"
        )
    return text


def sample_input(sample: Sample, kind: str) -> Any:
    """The input an encoder of ``kind`` reads from ``sample``: an image / audio source, or the question text."""
    if kind == "image":
        return _one(sample.images(), "image", sample)
    if kind == "audio":
        return _one(sample.audios(), "audio", sample)
    return _question(sample)


def _identity(item: Any) -> Any:
    if isinstance(item, Path):
        st = item.stat()
        return [str(item.resolve()), st.st_size, st.st_mtime_ns]
    if isinstance(item, str):
        return item
    return content_hash(item)  # a decoded image or waveform


def _open_image(item: Path | Image.Image) -> Image.Image:
    """A data set's image as RGB (the pixel limit checked before decoding)."""
    return item if isinstance(item, Image.Image) else open_image(item, "image file")


def _waveform(item: Path | np.ndarray) -> np.ndarray:
    """A clip path → 16 kHz mono at the common loudness (load_audio); a decoded waveform as it is."""
    return item if isinstance(item, np.ndarray) else load_audio(item)


# ------------------------------------------------------------------ extractors
class Extractor:
    """One frozen encoder as a feature extractor; subclasses set ``batch`` and implement ``encode`` (which
    returns CPU float32 features). One with a network names it in ``network``; :meth:`place` puts it on a
    device, and ``encode`` feeds it through :meth:`on_device` under :meth:`autocast`."""

    batch = 64
    placement: Placement | None = None  # None: the network runs where it was built (the CPU, float32)

    def network(self) -> torch.nn.Module | None:
        return None

    def place(self, placement: Placement) -> Extractor:
        net = self.network()
        if net is not None:
            place_model(net, placement)  # frozen: every floating parameter in the compute dtype
            if placement.mixed:  # and the floating buffers with them (batch norm's running statistics)
                for buffer in net.buffers():
                    if buffer.is_floating_point():
                        buffer.data = buffer.data.to(placement.dtype)
            self.placement = placement
        return self

    def on_device(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.placement is None else x.to(self.placement.device)

    def autocast(self):
        return contextlib.nullcontext() if self.placement is None else self.placement.autocast()

    def encode(self, items: Sequence[Any], form: str) -> torch.Tensor:
        raise NotImplementedError


class _CNNExtractor(Extractor):
    def __init__(self, spec: MobileNetV2Spec | EfficientNetLite0Spec | HFVisionSpec) -> None:
        from omnifuse.models.builders import build_encoder

        self.spec, self.encoder = spec, build_encoder(spec).eval()

    def network(self):
        return self.encoder

    def encode(self, items, form):
        pixels = torch.stack([self.encoder.preprocess(_open_image(i)) for i in items])
        with torch.no_grad(), self.autocast():
            tokens = self.encoder(self.on_device(pixels)).float().cpu()  # [B, P, D]
        return tokens if form == "tokens" else tokens.mean(1)


class _PixelsExtractor(Extractor):
    batch = 512

    def __init__(self, spec: PixelsSpec) -> None:
        self.size = spec.size

    def encode(self, items, form):
        maps = [
            np.asarray(_open_image(i).convert("L").resize((self.size, self.size), Image.BILINEAR), np.float32)
            for i in items
        ]
        out = torch.from_numpy(np.stack(maps) / 255.0)  # [B, rows, cols]
        return out if form == "tokens" else out.flatten(1)


class _MiniLMExtractor(Extractor):
    batch = 128

    def __init__(self, spec: MiniLMSpec) -> None:
        from omnifuse.encoders.text.minilm import build_minilm

        self.spec, self.encoder = spec, build_minilm(spec.name, spec.max_length)

    def network(self):
        return self.encoder.bert

    def encode(self, items, form):  # the tokenizer's ids are copied to the BERT's device by the encoder
        with self.autocast():
            out = self.encoder.tokens(items) if form == "tokens" else self.encoder.pooled(items)
        return out.float().cpu()


class _LogMelExtractor(Extractor):
    batch = 256

    def __init__(self, spec: LogMelSpec) -> None:
        from transformers import WhisperFeatureExtractor

        self.spec = spec
        self.fe = WhisperFeatureExtractor(feature_size=spec.n_mels, sampling_rate=SAMPLE_RATE)

    def encode(self, items, form):
        rows = []
        for item in items:
            wave = _waveform(item)
            # Whisper's log-mel (log10, clipped 8 below the clip's maximum, scaled), over the clip only:
            # padding to Whisper's 30 s would make every statistic mostly silence.
            mel = self.fe(wave, sampling_rate=SAMPLE_RATE, padding=False, return_tensors="np").input_features[
                0
            ]
            mel = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))  # [n_mels, frames]
            if form == "tokens":
                rows.append(
                    F.adaptive_avg_pool1d(mel.unsqueeze(0), self.spec.tokens)[0].T
                )  # [tokens, n_mels]
            else:
                rows.append(torch.cat([mel.mean(1), mel.std(1)]))
        return torch.stack(rows)


class _WhisperExtractor(Extractor):
    batch = 16

    def __init__(self, spec: WhisperFeaturesSpec) -> None:
        try:
            from omnifuse.encoders.audio.whisper import build_whisper_encoder, pad_mels
        except ImportError:
            raise OmnifuseError(
                "the whisper audio encoder is not available in this omnifuse installation "
                "(omnifuse.encoders.audio.whisper is missing); use audio: {type: logmel}"
            ) from None
        self.spec, self.pad_mels = spec, pad_mels
        self.encoder = build_whisper_encoder(spec.weights)

    def network(self):
        return self.encoder

    def encode(self, items, form):
        mels, lengths = self.pad_mels([self.encoder.preprocess(_waveform(i)) for i in items])
        with torch.no_grad(), self.autocast():
            frames, counts = self.encoder(self.on_device(mels), lengths)  # [B, T, D], real frames per clip
        frames, counts = frames.float().cpu(), counts.cpu()
        real = [f[:n] for f, n in zip(frames, counts.tolist(), strict=True)]
        if form == "pooled":
            return torch.stack([f.mean(0) for f in real])
        return torch.stack([F.adaptive_avg_pool1d(f.T.unsqueeze(0), self.spec.tokens)[0].T for f in real])


EXTRACTORS: dict[type, Callable[[Any], Extractor]] = {
    MobileNetV2Spec: _CNNExtractor,
    EfficientNetLite0Spec: _CNNExtractor,
    HFVisionSpec: _CNNExtractor,
    PixelsSpec: _PixelsExtractor,
    MiniLMSpec: _MiniLMExtractor,
    LogMelSpec: _LogMelExtractor,
    WhisperFeaturesSpec: _WhisperExtractor,
}


# ------------------------------------------------------------------ extraction with a cache
def features_cache_dir() -> Path:
    from omnifuse.assets import cache_dir

    return cache_dir() / "features"


def cache_key(
    spec,
    form: str,
    weights: Any,
    items: Sequence[Any],
    dtype: torch.dtype | None = None,
    extra: dict | None = None,
) -> str:
    """The one key of cached features: the encoder's spec (its preprocessing: image size, crop, …; a spec or
    its JSON dump), ``form``, the identity of its ``weights``, :data:`PREPROCESS_VERSION` and the ordered
    identities of ``items``. ``dtype``: the compute dtype of the encoder's network, when it is not float32;
    ``extra``: anything else the features depend on (the generative cache: the device type)."""
    h = hashlib.sha256()
    head = {
        "spec": spec if isinstance(spec, dict) else spec.model_dump(mode="json"),
        "form": form,
        "weights": weights,
        "version": PREPROCESS_VERSION,
    }
    if dtype is not None and dtype != torch.float32:
        head["dtype"] = str(dtype).removeprefix("torch.")
    if extra:
        head["extra"] = extra
    h.update(json.dumps(head, sort_keys=True).encode())
    for item in items:
        h.update(json.dumps(_identity(item)).encode())
        h.update(b"\0")
    return h.hexdigest()


def _cache_path(spec, form: str, items: Sequence[Any], placement: Placement | None) -> Path:
    networked = type(spec) in WEIGHTS_IDENTITY  # pixels and log-mel run no network: no dtype in their key
    dtype = placement.dtype if placement is not None and networked else None
    return features_cache_dir() / f"{cache_key(spec, form, _weights_of(spec), items, dtype)}.safetensors"


def extract_features(
    samples: Sequence[Sample],
    modality: str,
    encoder_spec,
    *,
    form: str = "pooled",
    cache: bool = True,
    progress: bool = True,
    extractor: Extractor | None = None,
    placement: Placement | None = None,
) -> torch.Tensor:
    """Features of ``samples`` under a frozen encoder: ``[N, D]`` (pooled) or ``[N, P, D]`` (tokens), on
    the CPU in float32.

    ``modality`` must be the encoder's input kind (image, audio or text). Cached on disk unless
    ``cache=False``; ``extractor`` may inject an already built extractor (tests, repeated calls);
    ``placement``: where the encoder's network runs (default: the CPU in float32)."""
    kind = encoder_spec.reads.value
    if modality != kind:
        raise OmnifuseError(f"the {encoder_spec.type} encoder reads the {kind}, not the {modality}")
    if form not in FORMS:
        raise OmnifuseError(f"feature form must be one of {', '.join(FORMS)}, got {form!r}")
    if not samples:
        raise OmnifuseError("no samples to extract features from")
    items = [sample_input(s, kind) for s in samples]
    path = _cache_path(encoder_spec, form, items, placement) if cache else None
    if path is not None and path.is_file():
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("features")
    if extractor is None:
        # Building an encoder draws initial weights: from a fixed seed, on a forked RNG, so that a cache miss
        # leaves the caller's random state (and so its training) as a cache hit would, and an encoder
        # without pretrained weights (weights: null) gives the same features every time.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            extractor = EXTRACTORS[type(encoder_spec)](encoder_spec)
    if placement is not None:
        extractor.place(placement)
    # Many samples share an input (one image, many questions; templated questions): encode each once.
    index: dict[str, int] = {}
    unique, where = [], []
    for item in items:
        key = json.dumps(_identity(item))
        if key not in index:
            index[key] = len(unique)
            unique.append(item)
        where.append(index[key])
    chunks = []
    with progress_bar(f"{modality} features ({encoder_spec.type})", len(unique), enabled=progress) as bar:
        for start in range(0, len(unique), extractor.batch):
            chunk = unique[start : start + extractor.batch]
            chunks.append(extractor.encode(chunk, form).float())
            bar.advance(len(chunk))
    features = torch.cat(chunks)
    features = features[torch.tensor(where, device=features.device)].contiguous()
    if path is not None:
        meta = {"spec": json.dumps(encoder_spec.model_dump(mode="json")), "form": form, "n": str(len(items))}
        save_tensors_atomic({"features": features}, path, meta)
    return features


def _file_weights(spec: MobileNetV2Spec | EfficientNetLite0Spec) -> Any:
    if spec.weights is None:
        return None  # random initial weights: drawn from a fixed seed (see extract_features)
    from omnifuse.assets import AssetKind, resolve

    path = Path(resolve(spec.weights, AssetKind.VISION))
    return [str(path), path.stat().st_size, path.stat().st_mtime_ns]


def _minilm_weights(spec: MiniLMSpec) -> Any:
    from omnifuse.encoders.text.minilm import weights_identity

    return weights_identity(spec.name)


# spec class → what identifies its weights in a cache key, found without building the encoder (a cache hit
# should not load a model); pixels and log-mel have none.
WEIGHTS_IDENTITY: dict[type, Callable[[Any], Any]] = {
    MobileNetV2Spec: _file_weights,
    EfficientNetLite0Spec: _file_weights,
    HFVisionSpec: lambda s: s.name,
    MiniLMSpec: _minilm_weights,
    WhisperFeaturesSpec: lambda s: s.weights,
}


def _update(h, tensor: torch.Tensor) -> None:
    t = tensor.detach().contiguous().cpu()
    h.update(f"{t.dtype} {tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, whatever the dtype (bfloat16 too)


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (a cached tensor's checksum)."""
    h = hashlib.sha256()
    _update(h, tensor)
    return h.hexdigest()


def module_weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (every parameter's and buffer's name, dtype, shape and bytes): the weights
    as they are now, so an encoder trained in an earlier stage (fully or by LoRA) has another hash."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        _update(h, tensor)
    return h.hexdigest()


def _weights_of(spec) -> Any:
    return WEIGHTS_IDENTITY[type(spec)](spec) if type(spec) in WEIGHTS_IDENTITY else None


# ------------------------------------------------------------------ normalisation
@dataclass(frozen=True)
class Normalizer:
    """Per-modality normalisation: ``standardize`` with training-split statistics per channel (the last
    axis; over samples and tokens), ``l2`` per vector / token, or ``none``.

    A channel's standard deviation is floored at a tenth of the median channel's (``STD_FLOOR``):
    frozen CNN features have channels that are (nearly) constant on a training set — dead ReLU channels
    on av-digits' small digits, or many channels among 96 images — and dividing a held-out sample's
    small activation there by a ~0 deviation gave inputs of 10⁵. Floored, such a channel keeps the
    scale of a typical one; every other channel is standardised as usual."""

    STD_FLOOR: ClassVar[float] = 0.1

    mode: str
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

    @classmethod
    def fit(cls, mode: str, train: torch.Tensor) -> Normalizer:
        if mode != "standardize":
            return cls(mode)
        flat = train.reshape(-1, train.shape[-1])
        std = flat.std(0) if flat.shape[0] > 1 else torch.zeros(flat.shape[-1], device=flat.device)
        floor = max(cls.STD_FLOOR * float(std.median()), 1e-6)
        return cls(mode, flat.mean(0), std.clamp(min=floor))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "standardize":
            return (x - self.mean) / self.std
        if self.mode == "l2":
            return F.normalize(x, dim=-1)
        return x

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        if self.mean is None:
            return {}
        return {f"{prefix}.mean": self.mean.contiguous(), f"{prefix}.std": self.std.contiguous()}

    @classmethod
    def from_tensors(cls, mode: str, tensors: dict[str, torch.Tensor], prefix: str) -> Normalizer:
        if mode != "standardize":
            return cls(mode)
        return cls(mode, tensors[f"{prefix}.mean"], tensors[f"{prefix}.std"])
