"""Video decoding and frame sampling: the right frames and timestamps, and clear, bounded refusals."""

from __future__ import annotations

import time
from fractions import Fraction

import numpy as np
import pytest

from omnifuse.errors import OmnifuseError
from omnifuse.video import Sampling, load_audio_track, load_video, sample_times, write_video

FPS = 4


def marked_frames(n: int = 8, size: int = 32) -> np.ndarray:
    """Frame i has a red bar at columns [4i, 4i + 4): which frame was decoded is readable from the pixels."""
    frames = np.full((n, size, size, 3), 200, dtype=np.uint8)
    for i in range(n):
        frames[i, :, 4 * i : 4 * i + 4] = (255, 0, 0)
    return frames


def bar_of(frame: np.ndarray) -> int:
    return int(np.argmax(frame[16, :, 1] < 100)) // 4  # the red bar: low green


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    t = np.arange(2 * 16000) / 16000
    return write_video(
        path, marked_frames(), FPS, audio=(0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    )


def test_uniform_sampling_returns_the_frames_on_screen_and_their_timestamps(clip):
    got = load_video(clip, Sampling(uniform=4))
    # 8 frames at 4 fps = 2 s; segment centres 0.25, 0.75, 1.25, 1.75 s each show the frame starting then
    assert got.timestamps == (0.25, 0.75, 1.25, 1.75)
    assert [bar_of(f) for f in got.frames] == [1, 3, 5, 7]
    assert got.frames.shape == (4, 32, 32, 3) and (got.start, got.end) == (0.0, 2.0)
    every = load_video(clip, Sampling(uniform=8))
    assert [bar_of(f) for f in every.frames] == list(range(8))
    assert every.timestamps == tuple(i / FPS for i in range(8))


def test_fps_sampling_and_a_part_of_the_clip(clip):
    got = load_video(clip, Sampling(uniform=None, fps=2))
    assert got.timestamps == (0.0, 0.5, 1.0, 1.5)
    part = load_video(clip, Sampling(uniform=2), start=1.0, end=2.0)
    assert part.timestamps == (1.25, 1.75) and [bar_of(f) for f in part.frames] == [5, 7]
    capped = load_video(clip, Sampling(uniform=None, fps=4, max_frames=3))  # 8 wanted → 3 uniform
    assert len(capped) == 3
    assert sample_times(0.0, 2.0, Sampling(uniform=None, fps=4, max_frames=3)) == pytest.approx(
        [1 / 3, 1, 5 / 3]
    )


def test_the_audio_track_is_read_and_a_silent_file_has_none(clip, tmp_path):
    wave = load_audio_track(clip)
    assert wave is not None and wave.dtype == np.float32 and 1.9 * 16000 < len(wave) < 2.2 * 16000
    silent = write_video(tmp_path / "silent.mp4", marked_frames(), FPS)
    assert load_audio_track(silent) is None


def test_a_clip_shorter_than_the_frames_asked_for_is_refused(clip):
    with pytest.raises(OmnifuseError, match=r"holds 8 frame\(s\), fewer than the 12 .*uniform: 12"):
        load_video(clip, Sampling(uniform=12))
    with pytest.raises(OmnifuseError, match="empty"):
        load_video(clip, Sampling(uniform=2), start=3.0)


def test_bad_files_are_refused_clearly_and_fast(clip, tmp_path):
    raw = clip.read_bytes()
    cases = {
        "truncated.mp4": (raw[: len(raw) // 2], "corrupt, truncated or not a video"),
        "notes.mp4": (b"these are my notes, not a video\n" * 20, "corrupt, truncated or not a video"),
        "empty.mp4": (b"", "empty"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        t0 = time.perf_counter()
        with pytest.raises(OmnifuseError, match=message) as err:
            load_video(path, Sampling(uniform=4))
        assert name in str(err.value) and time.perf_counter() - t0 < 2
    with pytest.raises(OmnifuseError, match="does not exist"):
        load_video(tmp_path / "missing.mp4", Sampling(uniform=4))


def test_a_wav_named_mp4_has_no_video_stream(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "speech.wav", 0.1 * np.ones(8000), 16000)
    (tmp_path / "speech.mp4").write_bytes((tmp_path / "speech.wav").read_bytes())
    with pytest.raises(OmnifuseError, match="holds no video stream"):
        load_video(tmp_path / "speech.mp4", Sampling(uniform=4))


def test_a_ten_hour_header_is_refused_before_decoding(tmp_path):
    # two frames of five hours each: a real file whose header says 36,000 s
    path = write_video(tmp_path / "long.mp4", marked_frames(2), Fraction(1, 18000))
    t0 = time.perf_counter()
    with pytest.raises(
        OmnifuseError, match=r"lasts 36,000\.0 s by its header, longer than the limit of 600 s"
    ):
        load_video(path, Sampling(uniform=2))
    assert time.perf_counter() - t0 < 1
    # a short part of it is allowed: only that part is decoded
    part = load_video(path, Sampling(uniform=1), start=0.0, end=10.0)
    assert part.timestamps == (0.0,)
