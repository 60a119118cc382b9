"""load_audio / save_wav: rate and channel conversion, loudness, every refusal with its message."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from omnifuse.audio import io as audio_io
from omnifuse.audio.io import PEAK_LIMIT_DBFS, SAMPLE_RATE, TARGET_RMS_DBFS, load_audio, save_wav
from omnifuse.errors import OmnifuseError


def _sine(rate: int, seconds: float = 0.5, freq: float = 440.0, amp: float = 0.3) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path: Path, rate: int, channels: int) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, np.stack([_sine(rate)] * channels, axis=1), rate)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == SAMPLE_RATE // 2  # 0.5 s
    assert abs(_peak_hz(wave, SAMPLE_RATE) - 440.0) < 3.0  # the pitch survives resampling


def test_channels_are_averaged_without_normalisation(tmp_path: Path) -> None:
    left = _sine(SAMPLE_RATE)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, 0.5 * left], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path, normalize=False), 0.75 * left)


def test_rms_normalisation_with_peak_limit() -> None:
    quiet = _sine(SAMPLE_RATE, amp=0.01)
    buf = io.BytesIO()
    sf.write(buf, quiet, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    wave = load_audio(buf.getvalue())  # bytes are accepted as well as paths
    rms_db = 20 * np.log10(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(TARGET_RMS_DBFS, abs=0.01)

    click = np.full(SAMPLE_RATE, 1e-3, dtype=np.float32)
    click[100] = 0.5  # the RMS gain would push this peak far above full scale
    buf = io.BytesIO()
    sf.write(buf, click, SAMPLE_RATE, format="WAV", subtype="FLOAT")
    wave = load_audio(buf.getvalue())
    assert np.abs(wave).max() == pytest.approx(10 ** (PEAK_LIMIT_DBFS / 20), rel=1e-5)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_formats(tmp_path: Path, fmt: str) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, _sine(44100, seconds=1.0), 44100, format=fmt)
    wave = load_audio(path)
    assert abs(len(wave) - SAMPLE_RATE) < 0.06 * SAMPLE_RATE  # mp3 adds encoder padding
    assert abs(_peak_hz(wave, SAMPLE_RATE) - 440.0) < 3.0


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(OmnifuseError, match=r"nope\.wav does not exist"):
        load_audio(tmp_path / "nope.wav")
    text = tmp_path / "notes.wav"
    text.write_text("these are not samples")
    with pytest.raises(
        OmnifuseError, match=r"notes\.wav is not an audio file that soundfile can read .* FLAC.*WAV"
    ):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(OmnifuseError, match=r"empty\.wav is empty \(zero length\)"):
        load_audio(empty)
    header_only = tmp_path / "header.wav"
    sf.write(header_only, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(OmnifuseError, match=r"header\.wav lasts 0 samples .*shorter than 0\.1 s"):
        load_audio(header_only)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(OmnifuseError, match="the clip is silent"):
        load_audio(silent)
    long = tmp_path / "long.wav"
    sf.write(long, _sine(8000, seconds=61.0), 8000)
    with pytest.raises(OmnifuseError, match=r"lasts 61\.0 s, longer than the limit of 60 s.*max_seconds"):
        load_audio(long)
    assert len(load_audio(long, max_seconds=None)) == 61 * SAMPLE_RATE


@pytest.mark.parametrize(
    "frames, rate, message",
    [
        (1, SAMPLE_RATE, r"lasts 1 samples .*shorter than 0\.1 s"),
        (10, SAMPLE_RATE, r"lasts 10 samples"),
        (1599, SAMPLE_RATE, r"lasts 1599 samples"),
        (100, 1, r"sample rate of 1 Hz, outside 8000"),
        (100, 7, r"sample rate of 7 Hz"),
        (10**6, 400_000, r"sample rate of 400000 Hz"),
    ],
)
def test_implausible_clips_are_refused(tmp_path: Path, frames: int, rate: int, message: str) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, _sine(rate, seconds=frames / rate), rate)
    with pytest.raises(OmnifuseError, match=message):
        load_audio(path)


def test_the_shortest_clip_and_telephone_rate_are_read(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, _sine(SAMPLE_RATE, seconds=0.1), SAMPLE_RATE)
    assert len(load_audio(path)) == 1600
    sf.write(path, _sine(8000, seconds=1.0), 8000)
    assert len(load_audio(path)) == SAMPLE_RATE


def test_a_truncated_wav_is_refused_and_a_streamed_one_is_read(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(path, _sine(SAMPLE_RATE, seconds=1.0), SAMPLE_RATE, subtype="PCM_16")
    raw = path.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(OmnifuseError, match=r"cut\.wav is truncated: its header declares 32,000 bytes"):
        load_audio(cut)
    # A writer that streams (ffmpeg to a pipe) puts 0xFFFFFFFF where the data size goes: not truncation.
    streamed = tmp_path / "streamed.wav"
    data_at = raw.index(b"data") + 4
    streamed.write_bytes(raw[:data_at] + b"\xff\xff\xff\xff" + raw[data_at + 4 :])
    assert len(load_audio(streamed)) == SAMPLE_RATE


def test_save_wav_is_16_bit_clipped_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.wav"
    wave = np.array([0.0, 0.5, -0.25, 1.5, -2.0], dtype=np.float32)
    assert save_wav(path, wave) == path
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (SAMPLE_RATE, 1, "PCM_16", 5)
    back, _ = sf.read(path, dtype="int16")
    assert back.tolist() == [0, 16384, -8192, 32767, -32768]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(audio_io.sf, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        save_wav(path, np.zeros(3, dtype=np.float32))
    assert sf.info(path).frames == 5  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.wav"]  # no temporary left
    with pytest.raises(OmnifuseError, match="non-empty, finite"):
        save_wav(path, np.array([np.nan], dtype=np.float32))
