"""Spoken easy-vqa: the easy-vqa questions read aloud by espeak-ng voices, for image + speech models.

A sample holds the image and the question as a 16 kHz mono wav (no text part); the answer and the
question type are easy-vqa's, and ``meta`` keeps the ``transcript`` and the ``voice``. The test split
is spoken only by voices that never speak in training: the default voices share accents (en-us,
en-gb, en-029) across the splits but no speaker variant, so test accuracy measures how well a model
understands speakers it has not heard.

easy-vqa has only 107 distinct question texts, so each (text, voice) pair is synthesised once and
shared by every sample that uses it: the audio folder holds at most 107 clips per voice, whatever
the number of samples. The export follows ``easy_vqa.py``: built in a temporary sibling folder,
a ``.complete`` marker recording what was made, renamed into place, rebuilt only when the marker
does not match (other sizes, voices or seed, or a changed easy-vqa export).
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from omnifuse.audio.io import SAMPLE_RATE, load_audio, save_wav
from omnifuse.audio.tts import INSTALL_HINT, espeak_available, synthesize
from omnifuse.data.easy_vqa import ensure_easy_vqa
from omnifuse.data.export import is_complete, write_export
from omnifuse.data.jsonl import load_jsonl, write_jsonl
from omnifuse.data.sample import (
    AudioPart,
    ImagePart,
    Message,
    Sample,
    TextPart,
    select_subset,
    with_transcript,
)
from omnifuse.errors import OmnifuseError
from omnifuse.progress import progress_bar

SPLITS = ("train", "test")
TYPED = "-typed"  # <split>-typed.jsonl: the same samples with the question typed (the text reference)
FORMAT_VERSION = 2  # bump when the exported layout or sample shape changes, to force a rebuild
# Language + speaker variant (`espeak-ng --voices=en`, `espeak-ng --voices=variant`). The test voices'
# variants (f1, m2, f3, m7) never occur in training.
TRAIN_VOICES = ("en-us+m1", "en-us+f2", "en-gb+m3", "en-gb+f4", "en-029+m5", "en-gb-x-rp+m6")
TEST_VOICES = ("en-us+f3", "en-gb+m2", "en-029+f1", "en-gb-x-rp+m7")
DEFAULT_LIMITS = {"train": 4000, "test": 1000}  # seeded subsets of the 38,575 / 9,673 questions
SEED = 0


def _known_variants() -> set[str]:
    """The speaker variants this espeak-ng has: an unknown ``+variant`` is silently ignored by
    espeak-ng (the voice falls back to the plain language), which would make two "voices" one."""
    res = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=False)
    return set(re.findall(r"!v/(\S+)", res.stdout))


def _check_voices(voices: dict[str, tuple[str, ...]]) -> None:
    for split, names in voices.items():
        if not names:
            raise OmnifuseError(f"give at least one {split} voice (e.g. {', '.join(TRAIN_VOICES[:2])}).")
    shared = sorted(set(voices["train"]) & set(voices["test"]))
    if shared:
        raise OmnifuseError(
            f"voice(s) {', '.join(shared)} are both train and test voices; the test split must be spoken by "
            "voices not heard in training, so list each voice in one split only."
        )
    known = _known_variants()
    unknown = [v for names in voices.values() for v in names if "+" in v and v.split("+", 1)[1] not in known]
    if unknown:
        raise OmnifuseError(
            f"unknown espeak-ng voice variant(s) in {', '.join(unknown)}; list them with "
            "`espeak-ng --voices=variant` (the name after '!v/', e.g. en-us+m3)."
        )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _voice_of(sample_id: str, voices: Sequence[str], seed: int) -> str:
    """A seeded choice per question (independent of the other questions, so a larger limit keeps the
    voices of the smaller one)."""
    return random.Random(f"{seed}:{sample_id}").choice(list(voices))


def _question_and_image(source: Sample) -> tuple[str, Path]:
    images = source.images()
    question = "".join(m.text() for m in source.prompt() if m.role == "user").strip()
    if len(images) != 1 or not isinstance(images[0], Path) or not question:
        raise OmnifuseError(
            f"easy-vqa sample {source.id} does not hold one image file and a question; re-export easy-vqa "
            "with `omnifuse data easy-vqa`."
        )
    return question, images[0]


def _build(
    root: Path,
    sources: dict[str, list[Sample]],
    voices: dict[str, tuple[str, ...]],
    seed: int,
    progress: bool,
) -> None:
    plans = {
        split: [(s, *_question_and_image(s), _voice_of(s.id, voices[split], seed)) for s in samples]
        for split, samples in sources.items()
    }
    clips: dict[tuple[str, str], Path] = {}  # (question, voice) -> wav, synthesised once
    for plan in plans.values():
        for _, question, _, voice in plan:
            name = hashlib.sha1(question.encode()).hexdigest()[:12]
            clips.setdefault((question, voice), root / "audio" / voice.replace("+", "_") / f"{name}.wav")
    with progress_bar("spoken-easy-vqa: synthesising", total=len(clips), enabled=progress) as bar:
        for (question, voice), wav in clips.items():
            wav.parent.mkdir(parents=True, exist_ok=True)
            save_wav(wav, load_audio(synthesize(question, voice=voice)), SAMPLE_RATE)
            bar.advance()
    for split, plan in plans.items():
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True)
        copied: dict[Path, Path] = {}
        samples = []
        for s, question, image, voice in plan:
            if image not in copied:
                copied[image] = shutil.copyfile(image, image_dir / image.name)
            messages = (
                Message("user", (ImagePart(copied[image]), AudioPart(clips[question, voice]))),
                Message("assistant", (TextPart(s.answer()),)),
            )
            samples.append(Sample(s.id, messages, {**s.meta, "transcript": question, "voice": voice}))
        write_jsonl(samples, root / f"{split}.jsonl")
        write_jsonl([with_transcript(s) for s in samples], root / f"{split}{TYPED}.jsonl")


def _files(out_dir: Path) -> dict[str, Path]:
    return {f"{s}{typed}": out_dir / f"{s}{typed}.jsonl" for s in SPLITS for typed in ("", TYPED)}


def export_spoken_easy_vqa(
    out_dir: Path | str,
    easy_vqa_files: dict[str, Path],
    limits: dict[str, int | None] | None = None,
    voices: dict[str, Sequence[str]] | None = None,
    seed: int = SEED,
    progress: bool = True,
) -> dict[str, Path]:
    """Write ``{train,test}.jsonl`` (image + spoken question), ``{train,test}-typed.jsonl`` (the same
    samples with the question typed: the text reference), ``images/<split>/`` and ``audio/<voice>/``
    under ``out_dir`` from an easy-vqa export (``easy_vqa_files``: ``{split: jsonl}``, as
    ``ensure_easy_vqa`` returns).

    ``limits`` (default ``DEFAULT_LIMITS``; None for a split: all its questions) keeps a seeded subset
    of each split; ``voices`` (default ``TRAIN_VOICES``/``TEST_VOICES``) must not share a voice
    between the splits. Sample ids are easy-vqa's. Returns at once when a matching export exists.
    """
    out_dir = Path(out_dir)
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    chosen = {"train": TRAIN_VOICES, "test": TEST_VOICES, **(voices or {})}
    voice_sets = {s: tuple(dict.fromkeys(chosen[s])) for s in SPLITS}  # order kept, repeats dropped
    for split in SPLITS:
        if limits[split] is not None and limits[split] < 1:
            raise OmnifuseError(
                f"the {split} limit must be at least 1 (or None for all), got {limits[split]}."
            )
    files = _files(out_dir)
    manifest = {
        "format": FORMAT_VERSION,
        "sample_rate": SAMPLE_RATE,
        "seed": seed,
        "limits": {s: limits[s] for s in SPLITS},
        "voices": {s: list(voice_sets[s]) for s in SPLITS},
        "source": {s: _digest(Path(easy_vqa_files[s])) for s in SPLITS},
    }
    if is_complete(out_dir, manifest, files.values()):
        return files
    if not espeak_available():
        raise OmnifuseError(
            f"spoken-easy-vqa is spoken by espeak-ng, which is not installed; {INSTALL_HINT}."
        )
    _check_voices(voice_sets)
    sources = {s: select_subset(load_jsonl(easy_vqa_files[s]), limits[s], seed) for s in SPLITS}
    write_export(
        out_dir,
        manifest,
        files.values(),
        lambda tmp: _build(tmp, sources, voice_sets, seed, progress),
        "spoken-easy-vqa",
    )
    return files


def ensure_spoken_easy_vqa(cache_root: Path | str, progress: bool = True) -> dict[str, Path]:
    """The default spoken-easy-vqa export in the asset cache (``cache_root/data/spoken-easy-vqa``),
    made on first use from the cached easy-vqa export."""
    source = ensure_easy_vqa(cache_root, progress=progress)
    return export_spoken_easy_vqa(Path(cache_root) / "data" / "spoken-easy-vqa", source, progress=progress)
