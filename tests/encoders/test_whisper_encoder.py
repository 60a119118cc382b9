"""The real-length Whisper audio encoder: features, lengths, batch invariance, equality with
transformers' encoder at 30 s (tiny random encoder; the packaged one in the integration tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from omnifuse.encoders.audio import WhisperAudioEncoder, build_whisper_encoder, pad_mels
from omnifuse.encoders.audio.whisper import random_whisper_encoder
from omnifuse.errors import OmnifuseError
from tiny_whisper import tiny_config

SR = 16000


@pytest.fixture(scope="module")
def encoder() -> WhisperAudioEncoder:
    return random_whisper_encoder(tiny_config())


def _tone(seconds: float, freq: float = 220.0, seed: int = 0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    noise = np.random.default_rng(seed).normal(0, 0.05, t.size)
    return (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def test_attributes(encoder):
    assert (encoder.output_dim, encoder.max_frames, encoder.sample_rate) == (16, 3000, 16000)
    assert encoder.max_seconds == 30.0
    assert [encoder.num_tokens(n) for n in (1, 2, 99, 100, 3000)] == [1, 1, 50, 50, 1500]
    assert encoder.output_lengths(torch.tensor([1, 2, 99, 100, 3000])).tolist() == [1, 1, 50, 50, 1500]


@pytest.mark.parametrize(
    ("samples", "frames"), [(16000, 100), (16001, 102), (16320, 102), (480000, 3000), (1, 2)]
)
def test_preprocess_real_length_even_frames(encoder, samples, frames):
    mel = encoder.preprocess(_tone(samples / SR))
    assert mel.shape == (80, frames) and mel.dtype == torch.float32


def test_preprocess_matches_the_30s_features_over_the_clip(encoder):
    """Same log-mel values as transformers' 30 s padded features, except the last frame, whose window
    reaches into the padding."""
    wave = _tone(2.0)
    mel = encoder.preprocess(wave)
    full = encoder.feature_extractor(wave, sampling_rate=SR, return_tensors="pt").input_features[0]
    torch.testing.assert_close(mel[:, :-1], full[:, : mel.shape[1] - 1], atol=1e-5, rtol=0)


def test_preprocess_refuses_long_or_multichannel_audio(encoder):
    with pytest.raises(OmnifuseError, match=r"audio clip of 30\.50 s .* longer than Whisper's limit of 30 s"):
        encoder.preprocess(np.zeros(488000, np.float32))
    with pytest.raises(OmnifuseError, match=r"mono waveform .* got shape \(100, 2\)"):
        encoder.preprocess(np.zeros((100, 2), np.float32))
    with pytest.raises(OmnifuseError, match="non-empty"):
        encoder.preprocess(np.zeros(0, np.float32))


def test_forward_shapes_and_zero_padding(encoder):
    mels = [encoder.preprocess(_tone(s, seed=i)) for i, s in enumerate((1.0, 0.37, 2.0))]
    mel, lengths = pad_mels(mels)
    assert mel.shape == (3, 80, 200) and lengths.tolist() == [100, 38, 200]
    assert torch.all(mel[1, :, 38:] == 0)
    with torch.no_grad():
        features, out_lengths = encoder(mel, lengths)
    assert features.shape == (3, 100, 16) and out_lengths.tolist() == [50, 19, 100]
    assert torch.all(features[1, 19:] == 0) and torch.all(features[0, 50:] == 0)
    assert torch.all(features[1, :19].abs().sum(-1) > 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_invariance(encoder, dtype):
    """Each clip's features in a padded batch equal the clip encoded alone (odd lengths included)."""
    enc = random_whisper_encoder(tiny_config()).to(dtype)
    mels = [
        enc.preprocess(_tone(s, 150 + 40 * i, seed=i)).to(dtype) for i, s in enumerate((1.3, 0.2, 2.6, 0.9))
    ]
    mels[3] = mels[3][:, :-1]  # an odd frame count
    mel, lengths = pad_mels(mels)
    with torch.no_grad():
        batched, out_lengths = enc(mel, lengths)
        for i, m in enumerate(mels):
            alone, n = enc(m[None], torch.tensor([m.shape[1]]))
            assert n.item() == out_lengths[i].item() == alone.shape[1]
            atol = 1e-5 if dtype == torch.float32 else 1e-12
            torch.testing.assert_close(batched[i, : n.item()], alone[0], atol=atol, rtol=0)


def test_padding_would_leak_without_the_masks(encoder):
    """The invariance above is not trivial: running the stock modules over the padded batch differs."""
    mels = [encoder.preprocess(_tone(s, seed=i)) for i, s in enumerate((0.5, 2.0))]
    mel, lengths = pad_mels(mels)
    with torch.no_grad():
        masked, _ = encoder(mel, lengths)
        unmasked, _ = encoder(mel, torch.full_like(lengths, mel.shape[-1]))
    assert (masked[0, :25] - unmasked[0, :25]).abs().max() > 1e-3


def test_full_30s_equals_transformers_encoder(encoder):
    features = encoder.feature_extractor(
        [_tone(3.0), _tone(29.0, 300, seed=1)], sampling_rate=SR, return_tensors="pt"
    ).input_features
    assert features.shape[-1] == 3000
    with torch.no_grad():
        ours, lengths = encoder(features, torch.tensor([3000, 3000]))
        reference = encoder.encoder(features).last_hidden_state
    assert lengths.tolist() == [1500, 1500]
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


def test_forward_checks_lengths(encoder):
    mel = torch.zeros(2, 80, 10)
    with pytest.raises(OmnifuseError, match="lengths"):
        encoder(mel, torch.tensor([10, 11]))
    with pytest.raises(OmnifuseError, match="lengths"):
        encoder(mel, torch.tensor([10]))
    with pytest.raises(OmnifuseError, match="3002 mel frames exceed"):
        encoder(torch.zeros(1, 80, 3002), torch.tensor([3002]))


def test_trains_through_the_mask(encoder):
    """Gradients reach the weights and never depend on padding: the padded clip's loss has the same
    gradient as the clip alone."""
    enc = random_whisper_encoder(tiny_config(), seed=1).double().train()
    enc.encoder.dropout = 0.0
    m = enc.preprocess(_tone(0.8)).double()
    mel, lengths = pad_mels([m, enc.preprocess(_tone(2.0, seed=2)).double()])

    def grad(features):
        enc.zero_grad()
        features.sum().backward()
        return enc.encoder.conv1.weight.grad.clone()

    batched, n = enc(mel, lengths)
    g_batch = grad(batched[0, : n[0]])
    alone, _ = enc(m[None], torch.tensor([m.shape[1]]))
    torch.testing.assert_close(g_batch, grad(alone[0]), atol=1e-10, rtol=0)


def test_unloadable_weights_are_a_user_error(tmp_path):
    with pytest.raises(OmnifuseError, match="Whisper model folder .* is empty"):
        build_whisper_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "whisper", "d_model": "wide"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(OmnifuseError, match="only pickled weights .* OMNIFUSE_ALLOW_PICKLE=1"):
        build_whisper_encoder(str(tmp_path))
    (tmp_path / "pytorch_model.bin").unlink()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(OmnifuseError, match="could not load the Whisper model .* 'whisper-base'"):
        build_whisper_encoder(str(tmp_path))


# ------------------------------------------------------------------ packaged weights
@pytest.mark.integration
def test_packaged_encoder_real_length_matches_30s_run():
    """The packaged Whisper encoder: 512-d, equal to transformers' encoder on a 30 s input, and batch
    invariant on real speech."""
    import glob

    import soundfile as sf

    from omnifuse.assets import get_asset, is_installed

    asset = get_asset("whisper-base")
    if not is_installed(asset):
        pytest.skip(f"the packaged Whisper is not installed: `{asset.install_command}`")
    files = sorted(glob.glob("/usr/share/pocketsphinx/test/data/librivox/*.wav"))
    if not files:
        pytest.skip("LibriVox clips missing: `apt-get install pocketsphinx-testdata`")
    enc = build_whisper_encoder("whisper-base")
    assert enc.output_dim == 512
    waves = [sf.read(f, dtype="float32")[0] for f in files]
    waves = sorted(waves, key=len)[:2]  # the two shortest (3.0 s and 3.3 s)
    with torch.no_grad():
        full = enc.feature_extractor(waves[0], sampling_rate=SR, return_tensors="pt").input_features
        ours, _ = enc(full, torch.tensor([3000]))
        torch.testing.assert_close(ours, enc.encoder(full).last_hidden_state, atol=1e-5, rtol=0)
        mels = [enc.preprocess(w) for w in waves]
        batched, n = enc(*pad_mels(mels))
        for i, m in enumerate(mels):
            alone, _ = enc(m[None], torch.tensor([m.shape[1]]))
            # float32 rounding differs with the sequence length; values are of order 10
            torch.testing.assert_close(batched[i, : n[i]], alone[0], atol=1e-3, rtol=0)
