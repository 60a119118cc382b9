"""Video in: bounded decoding with PyAV, frame sampling that keeps each frame's timestamp, the audio track.

A video file comes from a user or a client, so every cost is bounded before it is paid: the file's size,
the duration its header declares (a 10-hour header is refused before a frame is decoded), the picture
size, the number of packets and frames read, and the wall-clock time of one decode. Frames are sampled
in ``[start, end)`` of the clip either uniformly (``uniform: N`` — N frames at the centres of N equal
segments, as Video-LLaMA samples) or at a rate (``fps: F`` — one frame every 1/F s, at most
``max_frames``; a longer clip gets ``max_frames`` uniform frames). The frame kept for a target time is
the one on screen at that time (the last frame that starts at or before it), and its own presentation
time is the timestamp returned — what "at 1.5 s:" markers and the temporal position embeddings use.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omnifuse.errors import OmnifuseError

MAX_VIDEO_BYTES = 2 * 1024**3  # a video file over this is refused
MAX_SECONDS = 600.0  # default longest clip (the header's duration, checked before decoding)
MAX_FRAME_PIXELS = 8_300_000  # width × height of one frame (4K); checked from the stream's header
MAX_DECODE_SECONDS = 60.0  # wall-clock bound of one decode
MAX_FPS = 240.0  # frames per second assumed at most when bounding the frames read
INSTALL_HINT = "install PyAV with `pip install av` (it is one of omnifuse's dependencies)"


@dataclass(frozen=True)
class Sampling:
    """How frames are chosen: exactly ``uniform`` frames, or ``fps`` frames per second (≤ max_frames)."""

    uniform: int | None = 8
    fps: float | None = None
    max_frames: int = 32

    def __post_init__(self) -> None:
        if (self.uniform is None) == (self.fps is None):
            raise ValueError("a video sampling is either uniform: N or fps: F")

    def describe(self) -> str:
        return f"uniform: {self.uniform}" if self.uniform is not None else f"fps: {self.fps:g}"


@dataclass(frozen=True)
class Clip:
    """Sampled frames ``[N, H, W, 3]`` (uint8 RGB), each frame's time in seconds from the file's start,
    and the part of the file they were sampled from."""

    frames: np.ndarray
    timestamps: tuple[float, ...]
    start: float
    end: float

    def __len__(self) -> int:
        return len(self.timestamps)


def _av():
    try:
        import av
    except ImportError:  # pragma: no cover - a declared dependency
        raise OmnifuseError(f"reading video needs PyAV, which is not installed; {INSTALL_HINT}") from None
    return av


def _open(source: str | Path | bytes, name: str):
    """The opened container, or an error naming the file: missing, too large, not a video."""
    av = _av()
    if isinstance(source, bytes):
        if len(source) > MAX_VIDEO_BYTES:
            raise OmnifuseError(f"{name} is {len(source):,} bytes, over the limit of {MAX_VIDEO_BYTES:,}")
        handle = io.BytesIO(source)
        empty = not source
    else:
        path = Path(source)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise OmnifuseError(f"{name} {what}; check the path")
        size = path.stat().st_size
        if size > MAX_VIDEO_BYTES:
            raise OmnifuseError(f"{name} is {size:,} bytes, over the limit of {MAX_VIDEO_BYTES:,}")
        handle, empty = str(path), size == 0
    if empty:
        raise OmnifuseError(f"{name} is empty (zero bytes); give a video file")
    try:
        return av.open(handle, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise OmnifuseError(
            f"{name} is not a readable video ({_reason(exc)}): the file is corrupt, truncated or not a video; "
            "use e.g. an MP4 (H.264) or WebM file"
        ) from None


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).split(":")[0].strip() or type(exc).__name__


def _duration(container, stream, name: str, max_packets: int) -> float:
    """The video stream's duration from the header; without one (live recordings), the last packet's end
    found by demuxing (no decoding), at most ``max_packets`` packets."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base) + float(stream.start_time or 0) * float(
            stream.time_base
        )
    if container.duration is not None:
        return container.duration / 1_000_000
    last = None
    for n, packet in enumerate(container.demux(stream)):
        if n > max_packets:
            raise OmnifuseError(f"{name} states no duration and holds more than {max_packets:,} packets")
        if packet.pts is not None:
            last = float((packet.pts + (packet.duration or 0)) * packet.time_base)
    container.seek(0)
    if last is None:
        raise OmnifuseError(f"{name} holds no video frames")
    return last


def sample_times(start: float, end: float, sampling: Sampling) -> list[float]:
    """The target times (seconds) of a sampling over ``[start, end)``."""
    span = end - start
    if sampling.fps is not None:
        n = max(1, math.ceil(span * sampling.fps - 1e-9))
        if n <= sampling.max_frames:
            return [start + k / sampling.fps for k in range(n)]
        n = sampling.max_frames
    else:
        n = sampling.uniform
    return [start + (k + 0.5) * span / n for k in range(n)]


def _window(duration: float, start: float | None, end: float | None, name: str) -> tuple[float, float]:
    s = 0.0 if start is None else float(start)
    e = duration if end is None else min(float(end), duration)
    if s < 0 or s >= e:
        raise OmnifuseError(
            f"{name}: the part from {s:g} s to {e:g} s is empty (the video lasts {duration:.2f} s); "
            "give 0 ≤ start < end ≤ the duration"
        )
    return s, e


def load_video(
    source: str | Path | bytes,
    sampling: Sampling,
    start: float | None = None,
    end: float | None = None,
    max_seconds: float = MAX_SECONDS,
    name: str | None = None,
) -> Clip:
    """Decode the frames a sampling asks for, or raise an OmnifuseError naming the file and the problem."""
    name = name or ("the video data" if isinstance(source, bytes) else f"video file {source}")
    av = _av()
    container = _open(source, name)
    try:
        return _decode(container, sampling, start, end, max_seconds, name)
    except OmnifuseError:
        raise
    except (av.error.FFmpegError, ValueError, OSError, MemoryError) as exc:
        raise OmnifuseError(
            f"{name} is corrupt or truncated ({_reason(exc)}); re-encode or replace it"
        ) from None
    finally:
        container.close()


def _video_stream(container, name: str):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["nothing"]
        raise OmnifuseError(f"{name} holds no video stream (it holds {', '.join(kinds)}); give a video file")
    stream = container.streams.video[0]
    w, h = stream.codec_context.width, stream.codec_context.height
    if w <= 0 or h <= 0 or w * h > MAX_FRAME_PIXELS:
        raise OmnifuseError(
            f"{name}: frames of {w}×{h} pixels are over the limit of {MAX_FRAME_PIXELS:,} pixels; scale it down"
        )
    return stream


def _decode(container, sampling: Sampling, start, end, max_seconds: float, name: str) -> Clip:
    stream = _video_stream(container, name)
    duration = _duration(container, stream, name, max_packets=int(max_seconds * MAX_FPS) + 16)
    if not math.isfinite(duration) or duration <= 0:
        raise OmnifuseError(f"{name} states a duration of {duration} s; it holds no playable video")
    s, e = _window(duration, start, end, name)
    if e - s > max_seconds:
        part = "" if start is None and end is None else f" (the part from {s:g} to {e:g} s)"
        raise OmnifuseError(
            f"{name} lasts {e - s:,.1f} s by its header{part}, longer than the limit of {max_seconds:g} s; "
            "cut it, or give start/end (seconds) in the video part to sample a shorter part"
        )
    targets = sample_times(s, e, sampling)
    # Frames read are bounded by the part's length (plus a keyframe interval before it after a seek).
    bound = int((e - s + 10.0) * MAX_FPS) + 16
    frames, times = _frames_at(container, stream, targets, name, max_frames=bound)
    distinct = len(set(times))
    if distinct < len(targets) and sampling.uniform is not None:
        raise OmnifuseError(
            f"{name}: the part from {s:g} to {e:.2f} s holds {distinct} frame(s), fewer than the "
            f"{len(targets)} the model samples ({sampling.describe()}); give a longer clip or sample fewer frames"
        )
    return Clip(np.stack(frames), tuple(times), s, e)


def _frames_at(container, stream, targets: list[float], name: str, max_frames: int):
    """For each target time the frame on screen then (RGB) and its time; decoding stops after the last."""
    if targets[0] > 1.0:
        container.seek(int(targets[0] / float(stream.time_base)), stream=stream, backward=True)
    deadline = time.monotonic() + MAX_DECODE_SECONDS
    chosen: list[np.ndarray | None] = [None] * len(targets)
    times: list[float] = [0.0] * len(targets)
    k, previous, count = 0, None, 0
    for frame in container.decode(stream):
        count += 1
        if count > max_frames or time.monotonic() > deadline:
            raise OmnifuseError(
                f"{name}: decoding stopped after {count:,} frames / {MAX_DECODE_SECONDS:g} s without reaching "
                f"{targets[-1]:.2f} s (the file holds more frames than its header states)"
            )
        t = frame.time if frame.time is not None else (previous[1] if previous else 0.0)
        while k < len(targets) and t > targets[k] + 1e-6:
            _take(chosen, times, k, previous if previous is not None else (frame, t))
            k += 1
        previous = (frame, t)
        if k == len(targets):
            break
    while k < len(targets) and previous is not None:  # targets after the last frame: the last frame
        _take(chosen, times, k, previous)
        k += 1
    if previous is None:
        raise OmnifuseError(f"{name} holds no decodable video frames")
    return chosen, times


def _take(chosen: list, times: list, k: int, frame_time) -> None:
    frame, t = frame_time
    chosen[k] = frame.to_ndarray(format="rgb24")
    times[k] = round(float(t), 6)


def load_audio_track(
    source: str | Path | bytes,
    start: float | None = None,
    end: float | None = None,
    sample_rate: int = 16_000,
    max_seconds: float = 30.0,
    name: str | None = None,
) -> np.ndarray | None:
    """The audio track of ``[start, end)`` as mono float32 at ``sample_rate``; None when the file has no
    audio track (or only silence). Longer than ``max_seconds`` is an error."""
    name = name or ("the video data" if isinstance(source, bytes) else f"video file {source}")
    av = _av()
    container = _open(source, name)
    try:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        s = 0.0 if start is None else float(start)
        limit = s + max_seconds if end is None else float(end)
        if end is not None and float(end) - s > max_seconds:
            raise OmnifuseError(
                f"{name}: the audio from {s:g} to {float(end):g} s is longer than the audio limit of {max_seconds:g} s"
            )
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, deadline = [], time.monotonic() + MAX_DECODE_SECONDS
        for frame in container.decode(stream):
            if time.monotonic() > deadline:
                raise OmnifuseError(f"{name}: decoding the audio track took over {MAX_DECODE_SECONDS:g} s")
            if frame.time is not None and frame.time >= limit:
                break
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    except OmnifuseError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise OmnifuseError(f"{name}: the audio track is corrupt ({_reason(exc)})") from None
    finally:
        container.close()
    if not chunks:
        return None
    wave = np.concatenate(chunks)[int(s * sample_rate) : int(limit * sample_rate)]
    if wave.size == 0 or np.abs(wave).max() < 1e-4 or not np.isfinite(wave).all():
        return None
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
    gain = min(10 ** (-20 / 20) / rms, 10 ** (-1 / 20) / float(np.abs(wave).max()))  # −20 dBFS as audio.io
    return np.ascontiguousarray(wave * gain, dtype=np.float32)
