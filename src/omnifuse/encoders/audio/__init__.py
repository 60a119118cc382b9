"""Audio encoders: speech → feature tokens for the LLM."""

from omnifuse.encoders.audio.whisper import (
    WhisperAudioEncoder,
    build_whisper_encoder,
    pad_mels,
    random_whisper_encoder,
)

__all__ = ["WhisperAudioEncoder", "build_whisper_encoder", "pad_mels", "random_whisper_encoder"]
