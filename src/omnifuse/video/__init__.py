"""Video in and out: bounded decoding and frame sampling with timestamps (``io``), MP4 writing (``write``)."""

from omnifuse.video.io import Clip, Sampling, load_audio_track, load_video, sample_times
from omnifuse.video.write import write_video

__all__ = ["Clip", "Sampling", "load_audio_track", "load_video", "sample_times", "write_video"]
