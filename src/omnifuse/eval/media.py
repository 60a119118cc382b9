"""Sample-level changes of one modality's media (image, audio parts) for the evaluation probes and the
modality importance: remove, give each sample another's (a seeded derangement), or replace by noise with the
data set's moments. The changed samples are new objects; the data and its files are left alone."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from PIL import Image

from omnifuse.data.sample import MEDIA_PARTS, AudioPart, ImagePart, Sample
from omnifuse.errors import OmnifuseError
from omnifuse.processing.processor import load_clip, load_image


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation with no fixed point (every sample gets another one's input); n ≥ 2."""
    rng = random.Random(seed)
    order = list(range(n))
    rng.shuffle(order)
    # Each element is sent to its successor in a shuffled cycle: never to itself.
    at = {v: j for j, v in enumerate(order)}
    return [order[(at[i] + 1) % n] for i in range(n)]


def need_two(n: int, what: str = "samples") -> None:
    """Refuse fewer than two evaluated samples (or items): no paired interval, and no sample to swap with."""
    if n < 2:
        raise OmnifuseError(
            f"--importance compares intact and perturbed scores over the evaluated {what} (a paired 95 % interval; "
            f"permute gives each one another's input), which needs at least two; there are {n}: evaluate more "
            "(a larger --limit, or other --data)"
        )


def media_modalities(samples: Sequence[Sample]) -> list[str]:
    """The media kinds (image, audio) present in the samples' prompts."""
    return [
        k
        for k, cls in MEDIA_PARTS.items()
        if any(isinstance(p, cls) for s in samples for m in s.prompt() for p in m.parts)
    ]


def _parts(sample: Sample, cls: type) -> list:
    return [p for m in sample.messages for p in m.parts if isinstance(p, cls)]


def map_media(sample: Sample, cls: type, make: Callable[[int, object], object | None]) -> Sample:
    """The sample with its k-th part of class ``cls`` replaced by ``make(k, part)`` (None: the part removed)."""
    k = 0
    messages = []
    for m in sample.messages:
        parts = []
        for p in m.parts:
            if isinstance(p, cls):
                p, k = make(k, p), k + 1
                if p is None:
                    continue
            parts.append(p)
        messages.append(replace(m, parts=tuple(parts)))
    return replace(sample, messages=tuple(messages))


def remove_media(samples: Sequence[Sample], kind: str, seed: int) -> list[Sample]:
    return [map_media(s, MEDIA_PARTS[kind], lambda k, p: None) for s in samples]


def permute_media(samples: Sequence[Sample], kind: str, seed: int) -> list[Sample]:
    """Each sample with the modality gets another such sample's parts of it (its k-th: the donor's k-th,
    cycling), in a seeded derangement; samples without it are left as they are."""
    cls = MEDIA_PARTS[kind]
    holders = [i for i, s in enumerate(samples) if _parts(s, cls)]
    need_two(len(holders), f"samples with {kind}")
    donor = {
        holders[i]: _parts(samples[holders[j]], cls) for i, j in enumerate(derangement(len(holders), seed))
    }
    return [
        map_media(s, cls, lambda k, p, d=donor[i]: d[k % len(d)]) if i in donor else s
        for i, s in enumerate(samples)
    ]


def _image_moments(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for s in samples:
        for src in s.images():
            a = np.asarray(load_image(src, s.id), dtype=np.float64).reshape(-1, 3)
            total, squares, count = total + a.sum(0), squares + (a**2).sum(0), count + len(a)
    mean = total / count
    return mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))


def _clip_rms(samples: Sequence[Sample]) -> float:
    squares, count = 0.0, 0
    for s in samples:
        for src in s.audios():
            w = load_clip(src, s.id).astype(np.float64)
            squares, count = squares + float((w**2).sum()), count + w.size
    return float(np.sqrt(squares / max(count, 1)))


NOISY_KINDS = ("image", "audio")  # the media noise_media draws


def noise_media(samples: Sequence[Sample], kind: str, seed: int) -> list[Sample]:
    """Each part of the modality replaced by Gaussian noise with the data set's moments (images: per-channel
    mean and standard deviation of all eval pixels, the image's size kept; clips: zero mean and the eval
    clips' RMS, the clip's length kept), drawn from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    if kind == "image":
        mean, std = _image_moments(samples)

        def make(sample: Sample) -> Callable:
            def image(k: int, p: ImagePart) -> ImagePart:
                w, h = load_image(p.source, sample.id).size
                a = rng.normal(mean, std, (h, w, 3))
                return ImagePart(image=Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))

            return image
    elif kind == "audio":
        rms = _clip_rms(samples)

        def make(sample: Sample) -> Callable:
            def clip(k: int, p: AudioPart) -> AudioPart:
                n = len(load_clip(p.source, sample.id))
                return AudioPart(waveform=rng.normal(0.0, rms, n).astype(np.float32))

            return clip

    else:
        raise ValueError(f"no noise is drawn for {kind}; NOISY_KINDS lists the media that have one")
    return [map_media(s, MEDIA_PARTS[kind], make(s)) for s in samples]
