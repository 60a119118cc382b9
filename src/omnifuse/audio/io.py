"""Reading and writing audio: any file soundfile reads becomes 16 kHz mono float32 with a set loudness.

Every audio path in omnifuse goes through :func:`load_audio`, so encoders see one sample rate, one
channel and one level whatever the recording was (8 kHz phone audio, 44.1 kHz stereo, 48 kHz 5.1).

Loudness: the clip is scaled to an RMS level of ``TARGET_RMS_DBFS`` (-20 dBFS, the usual speech
level), and the gain is lowered when that would push the peak above ``PEAK_LIMIT_DBFS`` (-1 dBFS).
RMS rather than peak because the level the encoders respond to is the average energy (a log-mel
spectrogram shifts with the gain), and peak normalisation lets one click or plosive decide the level
of the whole clip, so two voices at the same peak can differ by 10 dB in loudness. The peak cap keeps
the scaling from clipping clips with a high crest factor.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from omnifuse.atomic import atomic_write_bytes
from omnifuse.errors import OmnifuseError

SAMPLE_RATE = 16000
TARGET_RMS_DBFS = -20.0
PEAK_LIMIT_DBFS = -1.0
SILENCE_PEAK = 1e-4  # -80 dBFS, about three steps of 16-bit PCM: below it a clip holds no signal
# Plausible recordings: telephone speech is 8 kHz, studio audio goes to 384 kHz. A header claiming 1 Hz
# or 7 Hz is damage, and resampling from it would invent a clip of the wrong length.
MIN_RATE, MAX_RATE = 8000, 384_000
MIN_SECONDS = 0.1  # shorter than one spoken syllable; Whisper's encoder sees 5 frames of it
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # what streaming writers put in a WAV header before the length is known
_DATA_CHUNK = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


def _formats() -> str:
    return ", ".join(sorted(sf.available_formats()))


def _check_header(name: str, rate: int, frames: int, info: str) -> None:
    """Refuse implausible sample rates, clips too short to hold speech, and WAV files cut short (libsndfile
    reads what is there and notes in its log that the data chunk "should be" smaller than declared)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise OmnifuseError(
            f"{name} declares a sample rate of {rate} Hz, outside {MIN_RATE}–{MAX_RATE} Hz; the file is damaged "
            "or mislabelled: re-export it (e.g. `sox IN -r 16000 OUT.wav`)"
        )
    if frames < MIN_SECONDS * rate:
        raise OmnifuseError(
            f"{name} lasts {frames} samples ({frames / rate * 1000:.1f} ms), shorter than {MIN_SECONDS:g} s; give "
            "a clip with speech in it"
        )
    m = _DATA_CHUNK.search(info)
    if m and int(m.group(1)) not in _UNKNOWN_SIZES and int(m.group(2)) < int(m.group(1)):
        raise OmnifuseError(
            f"{name} is truncated: its header declares {int(m.group(1)):,} bytes of audio, the file holds "
            f"{int(m.group(2)):,}; copy or export it again"
        )


def load_audio(
    source: str | Path | bytes,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float | None = 60.0,
    normalize: bool = True,
) -> np.ndarray:
    """A file (or the bytes of one) as a 1-D float32 waveform at ``sample_rate``, channels averaged.

    Any sample rate and channel count is converted. ``max_seconds`` (None: no limit) is checked from
    the header before the samples are read, so an hour-long file costs nothing.
    """
    if isinstance(source, bytes):
        name, handle = "the data", io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise OmnifuseError(f"audio file {path} {what}; check the path.")
        name, handle = str(path), path
    try:
        with sf.SoundFile(handle) as f:
            rate, frames = f.samplerate, f.frames
            _check_header(name, rate, frames, f.extra_info)
            if max_seconds is not None and frames > max_seconds * rate:
                raise OmnifuseError(
                    f"{name} lasts {frames / rate:.1f} s, longer than the limit of {max_seconds:g} s; "
                    "cut it, or raise the limit (max_seconds)."
                )
            data = f.read(dtype="float32", always_2d=True)
    except sf.SoundFileError as exc:
        if isinstance(handle, Path) and handle.stat().st_size == 0 or source == b"":
            raise OmnifuseError(f"{name} is empty (zero length); give a clip with sound in it.") from None
        reason = str(getattr(exc, "error_string", exc)).rstrip(".")
        raise OmnifuseError(
            f"{name} is not an audio file that soundfile can read ({reason}); "
            f"use one of these formats: {_formats()}."
        ) from None
    if data.shape[0] == 0:
        raise OmnifuseError(f"{name} holds no samples (zero length); give a clip with sound in it.")
    wave = data.mean(axis=1)
    if not np.isfinite(wave).all():
        raise OmnifuseError(f"{name} contains NaN or infinite samples; re-export it from the recording.")
    if rate != sample_rate:
        g = math.gcd(rate, sample_rate)
        wave = resample_poly(wave, sample_rate // g, rate // g)
    if np.abs(wave).max() < SILENCE_PEAK:  # after resampling: sound above the new band is gone too
        raise OmnifuseError(
            f"{name}: the clip is silent (every sample is below -80 dBFS); check the recording."
        )
    if normalize:
        rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
        peak = float(np.abs(wave).max())
        gain = min(10 ** (TARGET_RMS_DBFS / 20) / rms, 10 ** (PEAK_LIMIT_DBFS / 20) / peak)
        wave = wave * gain
    return np.ascontiguousarray(wave, dtype=np.float32)


def save_wav(path: str | Path, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write 16-bit PCM wav atomically (temp file + ``os.replace``); samples beyond ±1 are clipped."""
    path = Path(path)
    wave = np.asarray(waveform, dtype=np.float32)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0 or not np.isfinite(wave).all():
        raise OmnifuseError(
            f"cannot write {path}: a waveform must be a non-empty, finite [samples] or [samples, channels] "
            f"array, got shape {wave.shape}."
        )
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buffer.getvalue())
    return path
