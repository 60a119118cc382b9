"""Video out: frames (and an optional mono audio track) written as an MP4 file with PyAV.

H.264 (libx264, nearly lossless at crf 10, so colours survive) when FFmpeg has it, MPEG-4 part 2
otherwise; AAC audio. Frame ``i`` is shown from ``i / fps`` seconds, which is what ``load_video``
reports as its timestamp.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from omnifuse.errors import OmnifuseError
from omnifuse.video.io import _av


def _video_codec(av) -> tuple[str, dict[str, str]]:
    if "libx264" in av.codecs_available:
        return "libx264", {"crf": "10", "preset": "veryfast"}
    return "mpeg4", {"qscale": "2"}


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float | Fraction,
    audio: np.ndarray | None = None,
    sample_rate: int = 16_000,
) -> Path:
    """Write ``frames`` ([N, H, W, 3] uint8 RGB, even H and W) at ``fps`` and ``audio`` (mono float32 in
    [-1, 1]) to ``path``; returns the path."""
    av = _av()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise OmnifuseError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    n, h, w, _ = frames.shape
    if n == 0 or h % 2 or w % 2:
        raise OmnifuseError(f"need at least one frame of even width and height, got {n} of {w}×{h}")
    path = Path(path)
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    codec, options = _video_codec(av)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream(codec, rate=rate, options=options)
        vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
        vstream.codec_context.time_base = 1 / rate
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            for packet in vstream.encode(frame):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            _write_audio(av, container, astream, np.asarray(audio, dtype=np.float32), sample_rate)
    return path


def _write_audio(av, container, stream, wave: np.ndarray, sample_rate: int) -> None:
    block = 1024  # AAC's frame size
    wave = np.clip(wave, -1.0, 1.0)
    for start in range(0, len(wave), block):
        chunk = wave[start : start + block]
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
