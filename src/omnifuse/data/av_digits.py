"""av-digits: a small audio-visual classification data set made on this machine, nothing downloaded.

Each sample pairs a handwritten digit image (scikit-learn's 8×8 ``load_digits``, upsampled, with
Gaussian pixel noise) with the same digit spoken by espeak-ng (``omnifuse.audio.tts``; several voices and
speeds, a random time shift, white noise at a fixed signal-to-noise ratio, 16 kHz mono wav). The label
is the digit. The test split has its own images and *voices never heard in training*. The noise levels
are chosen so that neither modality alone is enough (docs/classic.md lists the measured unimodal and
fused accuracies), which is what makes the set useful for comparing fusion methods.

Samples use the native format: the user turn holds an image part and an audio part, the assistant
turn the digit as text, so the same files serve a classifier and a multimodal LLM. The export is done
once into a temporary sibling folder and renamed into place, with a ``.complete`` marker holding the
settings it was made with (:mod:`omnifuse.data.export`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from omnifuse.audio.io import SAMPLE_RATE, load_audio, save_wav
from omnifuse.audio.tts import synthesize
from omnifuse.data.export import is_complete, write_export
from omnifuse.data.jsonl import write_jsonl
from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
from omnifuse.progress import progress_bar

SPLITS = ("train", "test")
FORMAT_VERSION = 1  # bump when the exported layout or sample shape changes, to force a rebuild
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Test voices are disjoint from training voices: the audio classifier must generalise across speakers.
TRAIN_VOICES = (
    "en-us+m1",
    "en-us+m3",
    "en-us+f1",
    "en-us+f3",
    "en-gb+m2",
    "en-gb+f2",
    "en-gb-scotland",
    "en-029",
)
TEST_VOICES = ("en-us+m5", "en-us+f4", "en-gb-x-rp", "en-us-nyc")
SPEEDS = (140, 175, 210)  # words per minute


@dataclass(frozen=True)
class AVDigitsConfig:
    """What an export is made from; stored in the marker, so changing any of it rebuilds the set."""

    image_size: int = 32
    image_noise: float = 0.2  # std of the Gaussian pixel noise, in units of the full intensity range
    audio_snr_db: float = -8.0  # speech power / white-noise power
    clip_seconds: float = 1.2  # every clip is padded (at a random offset) or cut to this length
    test_fraction: float = 0.25
    seed: int = 0
    format: int = FORMAT_VERSION


def _clip_bank(voices: tuple[str, ...], bar) -> dict[tuple[int, str, int], np.ndarray]:
    """Every digit word in every voice and speed, spoken once (espeak-ng is deterministic)."""
    bank = {}
    for digit, word in enumerate(WORDS):
        for voice in voices:
            for speed in SPEEDS:
                wave = load_audio(synthesize(word, voice=voice, speed_wpm=speed), normalize=False)
                nonzero = np.flatnonzero(np.abs(wave) > 1e-3)  # espeak pads with silence: trim it
                bank[digit, voice, speed] = wave[nonzero[0] : nonzero[-1] + 1] if nonzero.size else wave
                bar.advance()
    return bank


def _noisy_clip(speech: np.ndarray, cfg: AVDigitsConfig, rng: np.random.Generator) -> np.ndarray:
    length = int(cfg.clip_seconds * SAMPLE_RATE)
    speech = speech[:length] / max(1e-6, float(np.abs(speech).max()))
    out = np.zeros(length, dtype=np.float32)
    start = int(rng.integers(0, length - len(speech) + 1))
    out[start : start + len(speech)] = speech
    power = float(np.mean(speech**2))
    noise_std = np.sqrt(power / 10 ** (cfg.audio_snr_db / 10))
    out += rng.normal(0.0, noise_std, length).astype(np.float32)
    return (0.9 * out / max(1e-6, float(np.abs(out).max()))).astype(np.float32)


def _noisy_image(pixels: np.ndarray, cfg: AVDigitsConfig, rng: np.random.Generator) -> Image.Image:
    small = Image.fromarray((pixels / 16.0 * 255).astype(np.uint8))
    big = np.asarray(small.resize((cfg.image_size, cfg.image_size), Image.BILINEAR), dtype=np.float32) / 255
    big = big + rng.normal(0.0, cfg.image_noise, big.shape)
    return Image.fromarray((np.clip(big, 0, 1) * 255).astype(np.uint8))


def _split_indices(labels: np.ndarray, cfg: AVDigitsConfig) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=labels, random_state=cfg.seed)
    return {"train": np.sort(train), "test": np.sort(test)}


def _build(root: Path, cfg: AVDigitsConfig, limit: int | None, progress: bool) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    splits = _split_indices(digits.target, cfg)
    if limit is not None:
        splits = {s: idx[:limit] for s, idx in splits.items()}
    n_clips = len(WORDS) * len(SPEEDS) * (len(TRAIN_VOICES) + len(TEST_VOICES))
    n_samples = sum(len(v) for v in splits.values())
    with progress_bar("av-digits", n_clips + n_samples, enabled=progress) as bar:
        banks = {"train": _clip_bank(TRAIN_VOICES, bar), "test": _clip_bank(TEST_VOICES, bar)}
        for k, (split, indices) in enumerate(splits.items()):
            voices = TRAIN_VOICES if split == "train" else TEST_VOICES
            rng = np.random.default_rng([cfg.seed, k])
            (root / "images" / split).mkdir(parents=True)
            (root / "audio" / split).mkdir(parents=True)
            samples = []
            for i in indices:
                label = int(digits.target[i])
                voice = voices[int(rng.integers(len(voices)))]
                speed = SPEEDS[int(rng.integers(len(SPEEDS)))]
                image = root / "images" / split / f"{i}.png"
                audio = root / "audio" / split / f"{i}.wav"
                _noisy_image(digits.images[i], cfg, rng).save(image)
                save_wav(audio, _noisy_clip(banks[split][label, voice, speed], cfg, rng))
                messages = (
                    Message("user", (ImagePart(image), AudioPart(audio), TextPart("Which digit is this?"))),
                    Message("assistant", (TextPart(str(label)),)),
                )
                samples.append(Sample(f"{split}-{i}", messages, {"voice": voice, "speed": speed}))
                bar.advance()
            write_jsonl(samples, root / f"{split}.jsonl")


def _manifest(cfg: AVDigitsConfig, limit: int | None) -> dict:
    return {**asdict(cfg), "limit": limit}


def export_av_digits(
    out_dir: Path | str,
    config: AVDigitsConfig | None = None,
    progress: bool = True,
    limit: int | None = None,
) -> dict[str, Path]:
    """Write ``train.jsonl``/``test.jsonl``, ``images/`` and ``audio/`` under ``out_dir``; returns the
    JSONL paths. Returns at once when an export with the same settings exists. ``limit`` keeps the first
    N samples of each split (tests)."""
    cfg = config or AVDigitsConfig()
    out_dir = Path(out_dir)
    files = {s: out_dir / f"{s}.jsonl" for s in SPLITS}
    manifest = _manifest(cfg, limit)
    if not is_complete(out_dir, manifest, files.values()):
        write_export(
            out_dir, manifest, files.values(), lambda tmp: _build(tmp, cfg, limit, progress), "av-digits"
        )
    return files


def ensure_av_digits(cache_root: Path | str, progress: bool = True) -> dict[str, Path]:
    """The av-digits export in the asset cache (``cache_root/data/av-digits``), made on first use."""
    return export_av_digits(Path(cache_root) / "data" / "av-digits", progress=progress)
