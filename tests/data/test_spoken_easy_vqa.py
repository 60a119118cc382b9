"""spoken-easy-vqa on a tiny slice: held-out test voices, 16 kHz mono clips that say the question,
shared clips, deterministic and movable output, no rebuild when complete, clear refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omnifuse.audio.tts import espeak_available
from omnifuse.cli import main
from omnifuse.data import spoken_easy_vqa as sevqa
from omnifuse.data.easy_vqa import export_easy_vqa
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import AudioPart, ImagePart, TextPart
from omnifuse.data.spoken_easy_vqa import TEST_VOICES, TRAIN_VOICES, export_spoken_easy_vqa
from omnifuse.errors import OmnifuseError

needs_espeak = pytest.mark.skipif(
    not espeak_available(), reason="espeak-ng is not installed (scripts/install.sh installs it)"
)
LIMITS = {"train": 6, "test": 4}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return export_easy_vqa(tmp_path_factory.mktemp("src") / "easy-vqa", progress=False, limit_images=3)


@pytest.fixture(scope="module")
def spoken(source: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("out") / "spoken"
    export_spoken_easy_vqa(out, source, limits=LIMITS, progress=False)
    return out


def _questions(path: Path) -> dict[str, tuple[str, str, str]]:
    return {s.id: (s.prompt()[0].text(), s.answer(), s.meta["question_type"]) for s in load_jsonl(path)}


@needs_espeak
def test_export(spoken: Path, source: dict[str, Path]) -> None:
    voices = {}
    for split in ("train", "test"):
        originals = _questions(source[split])
        samples = load_jsonl(spoken / f"{split}.jsonl")
        assert len(samples) == LIMITS[split] and {s.id for s in samples} <= set(originals)
        voices[split] = {s.meta["voice"] for s in samples}
        clips: dict[tuple[str, str], Path] = {}
        for s in samples:
            user, assistant = s.messages
            assert [type(p) for p in user.parts] == [ImagePart, AudioPart]
            assert user.parts[0].path.is_relative_to(spoken / "images" / split)
            question, answer, kind = originals[s.id]
            assert (s.meta["transcript"], s.answer(), s.meta["question_type"]) == (question, answer, kind)
            assert clips.setdefault((question, s.meta["voice"]), s.audios()[0]) == s.audios()[0]
        # the typed reference: the same samples, the clip replaced by its transcript
        typed = {t.id: t for t in load_jsonl(spoken / f"{split}-typed.jsonl")}
        assert list(typed) == [s.id for s in samples]
        for s in samples:
            (user,) = typed[s.id].prompt()
            assert [type(p) for p in user.parts] == [ImagePart, TextPart]
            assert user.text() == s.meta["transcript"] and typed[s.id].answer() == s.answer()
        for wav in set(clips.values()):
            info = sf.info(wav)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            wave, _ = sf.read(wav)
            assert 0.5 < len(wave) / 16000 < 5 and np.abs(wave).max() > 0.3
    assert voices["train"] <= set(TRAIN_VOICES) and voices["test"] <= set(TEST_VOICES)
    assert not voices["train"] & voices["test"]
    # one clip per (question, voice): as many wav files as distinct pairs over both splits
    pairs = {
        (s.meta["transcript"], s.meta["voice"])
        for sp in ("train", "test")
        for s in load_jsonl(spoken / f"{sp}.jsonl")
    }
    assert len(list((spoken / "audio").rglob("*.wav"))) == len(pairs)
    raw = json.loads((spoken / "test.jsonl").read_text().splitlines()[0])
    image, audio = raw["messages"][0]["content"]
    assert image["image"].startswith("images/test/") and audio["audio"].startswith("audio/")
    assert sorted(p.name for p in spoken.parent.iterdir()) == ["spoken"]  # no temporary folders left


@needs_espeak
def test_deterministic_and_movable(spoken: Path, source: dict[str, Path], tmp_path: Path) -> None:
    again = tmp_path / "again"
    export_spoken_easy_vqa(again, source, limits=LIMITS, progress=False)
    for split in ("train", "test"):
        assert (again / f"{split}.jsonl").read_text() == (spoken / f"{split}.jsonl").read_text()
    moved = tmp_path / "moved"
    shutil.move(again, moved)
    assert len(load_jsonl(moved / "train.jsonl")) == LIMITS["train"]  # every media path still resolves


@needs_espeak
def test_complete_export_is_not_rebuilt(
    spoken: Path, source: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(spoken, out)

    def no_synthesis(*args, **kwargs):
        raise AssertionError("a complete export must not be rebuilt")

    monkeypatch.setattr(sevqa, "synthesize", no_synthesis)
    stamp = (out / ".complete").stat().st_mtime_ns
    export_spoken_easy_vqa(out, source, limits=LIMITS, progress=False)
    assert (out / ".complete").stat().st_mtime_ns == stamp
    with pytest.raises(AssertionError, match="must not be rebuilt"):  # other sizes: rebuilt
        export_spoken_easy_vqa(out, source, limits={"train": 5, "test": 4}, progress=False)
    assert (out / ".complete").stat().st_mtime_ns == stamp  # the failed rebuild left it intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # and removed its temporary folder


def test_missing_espeak_gives_the_install_hint(
    source: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    with pytest.raises(OmnifuseError, match=r"espeak-ng, which is not installed; install it with `apt-get"):
        export_spoken_easy_vqa(tmp_path / "x", source, limits=LIMITS, progress=False)
    assert not (tmp_path / "x").exists()


@needs_espeak
def test_voice_refusals(source: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(OmnifuseError, match=r"en-us\+m1 are both train and test voices"):
        export_spoken_easy_vqa(
            tmp_path / "x", source, voices={"train": ["en-us+m1"], "test": ["en-us+m1", "en-gb+m2"]}
        )
    with pytest.raises(OmnifuseError, match=r"unknown espeak-ng voice variant\(s\) in en-us\+zz9"):
        export_spoken_easy_vqa(tmp_path / "x", source, voices={"test": ["en-us+zz9"]})
    with pytest.raises(OmnifuseError, match="at least one test voice"):
        export_spoken_easy_vqa(tmp_path / "x", source, voices={"test": []})
    with pytest.raises(OmnifuseError, match="train limit must be at least 1"):
        export_spoken_easy_vqa(tmp_path / "x", source, limits={"train": 0})


def test_cli_passes_limits_and_voices(
    source: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}

    def fake_export(out_dir, files, **kwargs):
        seen.update(kwargs)
        return {"train": Path(out_dir) / "train.jsonl", "test": Path(out_dir) / "test.jsonl"}

    monkeypatch.setattr(sevqa, "export_spoken_easy_vqa", fake_export)
    monkeypatch.setattr("omnifuse.data.easy_vqa.ensure_easy_vqa", lambda root, progress: source)
    args = ["data", "spoken-easy-vqa", "--out", str(tmp_path), "--limit-train", "0", "--no-progress"]
    assert main([*args, "--voices-test", "en-us+f3, en-gb+m2"]) == 0
    assert seen["limits"] == {"train": None, "test": 1000}
    assert seen["voices"] == {"test": ["en-us+f3", "en-gb+m2"]}


@needs_espeak
def test_cli_help_and_clean_error(
    source: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert main(["data", "spoken-easy-vqa", "--help"]) == 0
    assert "--voices-test" in capsys.readouterr().out
    monkeypatch.setattr("omnifuse.data.easy_vqa.ensure_easy_vqa", lambda root, progress: source)
    args = ["data", "spoken-easy-vqa", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main([*args, "--voices-train", "en-us+m1", "--voices-test", "en-us+m1"]) != 0
    captured = capsys.readouterr()
    assert "both train and test voices" in captured.err and "Traceback" not in captured.err
