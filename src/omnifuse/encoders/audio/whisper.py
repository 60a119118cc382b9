"""Whisper's encoder as an audio encoder for the LLM, run over each clip's real length.

transformers' ``WhisperEncoder`` insists on 3000 mel frames (30 s): a 2 s question would cost as much as
30 s of speech and give 1500 output tokens, almost all of them silence. This wrapper runs the same
modules (conv1, conv2, positional embeddings, layers, final norm) over the frames that exist. In a padded
batch, the first convolution's output is zeroed past each clip's end (as the second convolution's own
zero padding would be for the clip alone) and the layers get a key-padding mask, so each clip's
features equal those of the clip run alone; for a full 30 s input they equal the stock encoder's output.

Two mel frames become one output token (the second convolution has stride 2): 100 frames, i.e. 50
tokens, per second of audio.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from omnifuse.errors import OmnifuseError


class WhisperAudioEncoder(nn.Module):
    """``forward(mel [B, n_mels, T], lengths [B])`` → (features [B, ⌈T/2⌉, d_model], token counts [B])."""

    def __init__(self, encoder: WhisperEncoder, feature_extractor: WhisperFeatureExtractor) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        n_mels = encoder.conv1.in_channels
        if feature_extractor.feature_size != n_mels:
            raise OmnifuseError(
                f"the feature extractor makes {feature_extractor.feature_size} mel bins, the encoder takes {n_mels}"
            )
        self.output_dim: int = encoder.conv1.out_channels
        self.sample_rate: int = feature_extractor.sampling_rate
        self.hop_length: int = feature_extractor.hop_length
        stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        self.max_frames: int = encoder.embed_positions.num_embeddings * stride

    @property
    def max_seconds(self) -> float:
        return self.max_frames * self.hop_length / self.sample_rate

    def num_tokens(self, num_frames: int | None = None) -> int:
        """Output tokens for a clip of ``num_frames`` mel frames (default: the longest clip, 30 s)."""
        return ((self.max_frames if num_frames is None else num_frames) + 1) // 2

    def token_grid(self) -> None:
        """Frames in time order: no spatial grid."""
        return None

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output tokens per clip: the second convolution (kernel 3, stride 2, padding 1) maps L → ⌈L/2⌉."""
        return torch.div(lengths + 1, 2, rounding_mode="floor")

    def check_waveform(self, waveform: np.ndarray) -> np.ndarray:
        """The waveform as float32, or OmnifuseError when it is not mono or longer than 30 s."""
        wave = np.asarray(waveform, dtype=np.float32)
        if wave.ndim != 1 or wave.size == 0:
            raise OmnifuseError(
                f"Whisper takes a non-empty mono waveform (a 1-D array at {self.sample_rate} Hz), got shape "
                f"{wave.shape}; mix stereo down to mono and resample first."
            )
        limit = self.max_frames * self.hop_length
        if wave.size > limit:
            raise OmnifuseError(
                f"audio clip of {wave.size / self.sample_rate:.2f} s ({wave.size} samples) is longer than Whisper's "
                f"limit of {self.max_seconds:.0f} s ({self.max_frames} mel frames); cut it into clips of at most "
                f"{self.max_seconds:.0f} s."
            )
        return wave

    def preprocess(self, waveform: np.ndarray) -> torch.Tensor:
        """Mono 16 kHz float waveform → log-mel [n_mels, T] over its real length, zero-padded to the next
        even frame count (T = ⌈samples / 320⌉ · 2, at most ``max_frames``)."""
        wave = self.check_waveform(waveform)
        features = self.feature_extractor(
            wave,
            sampling_rate=self.sample_rate,
            padding="longest",
            pad_to_multiple_of=2 * self.hop_length,
            truncation=False,
            return_tensors="pt",
        )
        return features.input_features[0]

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        batch, _, frames = mel.shape
        if frames > self.max_frames:
            raise OmnifuseError(f"{frames} mel frames exceed Whisper's limit of {self.max_frames} (30 s)")
        lengths = lengths.to(mel.device)
        if lengths.shape != (batch,) or bool((lengths < 1).any()) or bool((lengths > frames).any()):
            raise OmnifuseError(f"lengths {lengths.tolist()} must be {batch} frame counts in 1..{frames}")
        real = torch.arange(frames, device=mel.device) < lengths[:, None]  # [B, T]
        x = F.gelu(enc.conv1(mel)) * real[:, None, :].to(mel.dtype)
        x = F.gelu(enc.conv2(x)).transpose(1, 2)  # [B, T2, D]
        out_lengths = self.output_lengths(lengths)
        tokens = x.shape[1]
        keep = torch.arange(tokens, device=mel.device) < out_lengths[:, None]  # [B, T2]
        x = x + enc.embed_positions.weight[:tokens]
        x = F.dropout(x, p=enc.dropout, training=self.training)
        mask = None
        if not bool(keep.all()):  # additive key-padding mask, broadcast over heads and queries
            mask = torch.zeros(batch, 1, 1, tokens, dtype=x.dtype, device=x.device)
            mask.masked_fill_(~keep[:, None, None, :], torch.finfo(x.dtype).min)
        for layer in enc.layers:
            x = layer(x, mask)
        x = enc.layer_norm(x) * keep[..., None].to(x.dtype)
        return x, out_lengths


def pad_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[n_mels, T_i] spectrograms → a zero-padded batch [B, n_mels, T_max] and the frame counts [B]."""
    lengths = torch.tensor([m.shape[-1] for m in mels], dtype=torch.long, device=mels[0].device)
    batch = nn.utils.rnn.pad_sequence([m.transpose(0, 1) for m in mels], batch_first=True)
    return batch.transpose(1, 2).contiguous(), lengths


WHISPER_HINT = (
    "Use the packaged 'whisper-base' (see `omnifuse assets`), a local folder with config.json, safetensors "
    "weights, preprocessor_config.json and tokenizer files, or a Hugging Face id on a machine with hub access."
)


def load_whisper(weights: str, model_class):
    """(model, feature extractor) of ``model_class`` (``WhisperModel`` or
    ``WhisperForConditionalGeneration``) from a packaged name, a local folder or a hub id, fp32, eval."""
    from omnifuse.assets import AssetKind, load_pretrained, pretrained_kwargs, resolve

    path = resolve(weights, AssetKind.AUDIO)
    model = load_pretrained(
        lambda: model_class.from_pretrained(path, dtype=torch.float32, **pretrained_kwargs()),
        "Whisper model",
        weights,
        path,
        WHISPER_HINT,
    )
    feature_extractor = load_pretrained(
        lambda: WhisperFeatureExtractor.from_pretrained(path),
        "Whisper feature extractor",
        weights,
        path,
        WHISPER_HINT,
    )
    return model.eval(), feature_extractor


def build_whisper_encoder(weights: str = "whisper-base") -> WhisperAudioEncoder:
    """The pretrained Whisper encoder (packaged name, local folder or hub id) in eval mode; the decoder
    is loaded with it and dropped."""
    from transformers import WhisperModel

    model, feature_extractor = load_whisper(weights, WhisperModel)
    return WhisperAudioEncoder(model.get_encoder(), feature_extractor).eval()


def random_whisper_encoder(config, seed: int = 0) -> WhisperAudioEncoder:
    """A randomly initialised encoder of the architecture ``config`` (a ``WhisperConfig``): for tests and
    from-scratch experiments; its feature extractor makes ``config.num_mel_bins`` mel bins."""
    torch.manual_seed(seed)
    encoder = WhisperEncoder(config)
    return WhisperAudioEncoder(encoder, WhisperFeatureExtractor(feature_size=config.num_mel_bins)).eval()
