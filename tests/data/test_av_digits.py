"""av-digits: the export's shape, held-out voices, determinism, and the built-in name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from omnifuse.audio.io import SAMPLE_RATE
from omnifuse.audio.tts import espeak_available
from omnifuse.data.av_digits import TEST_VOICES, TRAIN_VOICES, AVDigitsConfig, export_av_digits
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sources import BUILTIN

pytestmark = pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng")


def test_export_pairs_a_digit_image_with_the_spoken_digit(tmp_path):
    files = export_av_digits(tmp_path / "avd", progress=False, limit=12)
    train, test = load_jsonl(files["train"]), load_jsonl(files["test"])
    assert len(train) == len(test) == 12
    for s in train + test:
        (image,), (audio,) = s.images(), s.audios()
        assert s.answer() in {str(d) for d in range(10)}
        assert Image.open(image).size == (32, 32)
        wave, rate = sf.read(audio)
        assert rate == SAMPLE_RATE and len(wave) == int(AVDigitsConfig().clip_seconds * SAMPLE_RATE)
    assert {s.meta["voice"] for s in train} <= set(TRAIN_VOICES)
    assert {s.meta["voice"] for s in test} <= set(TEST_VOICES)
    assert not set(TRAIN_VOICES) & set(TEST_VOICES)
    marker = json.loads((tmp_path / "avd" / ".complete").read_text())
    assert marker["limit"] == 12 and marker["audio_snr_db"] == AVDigitsConfig().audio_snr_db


def test_export_is_deterministic_and_rebuilt_only_when_settings_change(tmp_path):
    a = export_av_digits(tmp_path / "a", progress=False, limit=4)
    export_av_digits(tmp_path / "b", progress=False, limit=4)
    wav = "audio/train/" + load_jsonl(a["train"])[0].id.split("-")[1] + ".wav"
    assert np.array_equal(sf.read(tmp_path / "a" / wav)[0], sf.read(tmp_path / "b" / wav)[0])
    mtime = a["train"].stat().st_mtime_ns
    export_av_digits(tmp_path / "a", progress=False, limit=4)  # same settings: nothing rewritten
    assert a["train"].stat().st_mtime_ns == mtime
    export_av_digits(tmp_path / "a", AVDigitsConfig(audio_snr_db=0.0), progress=False, limit=4)
    assert json.loads((tmp_path / "a" / ".complete").read_text())["audio_snr_db"] == 0.0


def test_av_digits_is_a_builtin_data_set():
    assert "av-digits" in BUILTIN
