"""Video encoders: sampled frames through an image encoder (``frames.FrameEncoder``)."""

from omnifuse.encoders.video.frames import FrameEncoder

__all__ = ["FrameEncoder"]
