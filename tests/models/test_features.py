"""Feature extraction: forms and shapes, the disk cache and its key, normalisation, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.models import features
from omnifuse.models.features import Normalizer, extract_features
from omnifuse.recipe import LogMelSpec, MiniLMSpec, PixelsSpec


def make_samples(folder, n=3, audio=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(image)
        parts = [ImagePart(image), TextPart(f"question {i}?")]
        if audio:
            wav = folder / f"{i}.wav"
            sf.write(wav, rng.normal(0, 0.1, 8000 + 800 * i).astype(np.float32), 16000)
            parts.insert(1, AudioPart(wav))
        msgs = (Message("user", tuple(parts)), Message("assistant", (TextPart(str(i % 2)),)))
        out.append(Sample(f"s{i}", msgs))
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


def test_pixels_and_logmel_forms(tmp_path, cache):
    samples = make_samples(tmp_path / "d")
    px = PixelsSpec(type="pixels", size=8)
    assert extract_features(samples, "image", px, form="tokens", progress=False).shape == (3, 8, 8)
    assert extract_features(samples, "image", px, progress=False).shape == (3, 64)
    mel = LogMelSpec(type="logmel", n_mels=16, tokens=5)
    assert extract_features(samples, "audio", mel, progress=False).shape == (3, 32)  # mean + std per band
    assert extract_features(samples, "audio", mel, form="tokens", progress=False).shape == (3, 5, 16)


def test_the_cache_is_hit_and_keyed_by_spec_inputs_and_file_changes(tmp_path, cache, monkeypatch):
    samples = make_samples(tmp_path / "d")
    spec = PixelsSpec(type="pixels", size=8)
    first = extract_features(samples, "image", spec, progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 1

    calls = []
    real = features._PixelsExtractor.encode
    monkeypatch.setattr(
        features._PixelsExtractor, "encode", lambda self, i, f: calls.append(1) or real(self, i, f)
    )
    assert torch.equal(extract_features(samples, "image", spec, progress=False), first)
    assert calls == []  # served from the cache
    extract_features(samples[:2], "image", spec, progress=False)  # other inputs
    extract_features(samples, "image", PixelsSpec(type="pixels", size=4), progress=False)  # other spec
    Image.new("L", (12, 12), 255).save(samples[0].images()[0])  # an input file changes
    changed = extract_features(samples, "image", spec, progress=False)
    assert len(calls) == 3 and len(list(cache.glob("*.safetensors"))) == 4
    assert not torch.equal(changed[0], first[0]) and torch.equal(changed[1:], first[1:])
    assert not list(cache.glob(".*"))  # no temporary files left


def test_minilm_is_unit_norm_and_separates_sentences(tmp_path, cache):
    from omnifuse.assets import get_asset, is_installed

    if not is_installed(get_asset("all-minilm-l6-v2")):
        pytest.skip("needs the packaged MiniLM")
    samples = make_samples(tmp_path / "d", audio=False)
    spec = MiniLMSpec(type="minilm", max_length=8)
    pooled = extract_features(samples, "text", spec, progress=False)
    assert pooled.shape == (3, 384) and torch.allclose(pooled.norm(dim=-1), torch.ones(3), atol=1e-5)
    tokens = extract_features(samples, "text", spec, form="tokens", progress=False)
    assert tokens.shape == (3, 8, 384) and tokens[:, -1].abs().sum() == 0  # padding positions zeroed


def test_missing_inputs_and_wrong_modality_are_clear_errors(tmp_path, cache):
    samples = make_samples(tmp_path / "d", audio=False)
    with pytest.raises(OmnifuseError, match="has 0 audio part"):
        extract_features(samples, "audio", LogMelSpec(type="logmel"), progress=False)
    with pytest.raises(OmnifuseError, match="reads the image, not the audio"):
        extract_features(samples, "audio", PixelsSpec(type="pixels"), progress=False)


def test_normalizers():
    x = torch.randn(50, 4, 3) * 5 + 2
    z = Normalizer.fit("standardize", x)(x)
    assert torch.allclose(z.reshape(-1, 3).mean(0), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.reshape(-1, 3).std(0), torch.ones(3), atol=1e-4)
    assert torch.allclose(Normalizer.fit("l2", x)(x).norm(dim=-1), torch.ones(50, 4), atol=1e-5)
    n = Normalizer.fit("standardize", x)
    again = Normalizer.from_tensors("standardize", n.tensors("image"), "image")
    assert torch.equal(again(x), n(x))


def test_standardize_floors_the_deviation_of_a_dead_channel():
    # Channel 0 is constant in training (a dead ReLU channel), channel 1 barely moves; a held-out sample
    # that activates them a little must not become an input of 10^5.
    train = torch.randn(200, 6)
    train[:, 0] = 0.0
    train[:, 1] = 1e-7 * torch.randn(200)
    n = Normalizer.fit("standardize", train)
    typical = float(train.std(0).median())
    assert torch.allclose(n.std[:2], torch.full((2,), Normalizer.STD_FLOOR * typical))
    held_out = torch.zeros(1, 6)
    held_out[0, :2] = 0.5 * typical  # half a typical deviation → 5, not 0.5 / 1e-7
    assert torch.allclose(n(held_out)[0, :2], torch.full((2,), 0.5 / Normalizer.STD_FLOOR), rtol=1e-3)
    assert torch.allclose(n.std[2:], train[:, 2:].std(0))  # the others are standardised as usual


def test_shared_inputs_are_encoded_once(tmp_path, cache, monkeypatch):
    samples = make_samples(tmp_path / "d")
    shared = [Sample(f"q{i}", (Message("user", (s.messages[0].parts[0], TextPart("?"))), s.messages[1]))
              for i, s in enumerate(samples * 3)]  # fmt: skip
    seen = []
    real = features._PixelsExtractor.encode
    monkeypatch.setattr(
        features._PixelsExtractor, "encode", lambda self, i, f: seen.extend(i) or real(self, i, f)
    )
    out = extract_features(shared, "image", PixelsSpec(type="pixels", size=4), progress=False, cache=False)
    assert len(seen) == 3 and out.shape == (9, 16)
    assert torch.equal(out[:3], out[3:6]) and torch.equal(out[:3], out[6:])
    assert not torch.equal(out[0], out[1])


def test_whisper_features_pool_the_real_frames(tmp_path, cache):
    whisper = pytest.importorskip("omnifuse.encoders.audio.whisper")
    from transformers import WhisperConfig

    from omnifuse.recipe import WhisperFeaturesSpec

    config = WhisperConfig(num_mel_bins=80, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                           decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=1500)  # fmt: skip
    ext = features._WhisperExtractor.__new__(features._WhisperExtractor)
    ext.spec, ext.pad_mels = WhisperFeaturesSpec(type="whisper", tokens=3), whisper.pad_mels
    ext.encoder = whisper.random_whisper_encoder(config).eval()
    samples = make_samples(tmp_path / "d")  # clips of 0.50, 0.55 and 0.60 s
    pooled = extract_features(samples, "audio", ext.spec, progress=False, extractor=ext, cache=False)
    tokens = extract_features(
        samples, "audio", ext.spec, form="tokens", progress=False, extractor=ext, cache=False
    )
    assert pooled.shape == (3, 16) and tokens.shape == (3, 3, 16)
    alone = extract_features(samples[2:], "audio", ext.spec, progress=False, extractor=ext, cache=False)
    assert torch.allclose(alone[0], pooled[2], atol=1e-5)  # padding in a batch changes nothing


def test_whisper_without_its_module_is_a_clear_error(monkeypatch):
    import sys

    from omnifuse.recipe import WhisperFeaturesSpec

    monkeypatch.setitem(sys.modules, "omnifuse.encoders.audio.whisper", None)
    with pytest.raises(OmnifuseError, match="whisper audio encoder is not available"):
        features._WhisperExtractor(WhisperFeaturesSpec(type="whisper"))


def _random_cnn():
    from omnifuse.recipe import MobileNetV2Spec

    spec = MobileNetV2Spec(type="mobilenet_v2", weights=None, image_size=32)
    return spec, features._CNNExtractor(spec)


def _tiny_whisper():
    whisper = pytest.importorskip("omnifuse.encoders.audio.whisper")
    from transformers import WhisperConfig

    from omnifuse.recipe import WhisperFeaturesSpec

    config = WhisperConfig(num_mel_bins=80, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                           decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=32,
                           decoder_ffn_dim=32, max_source_positions=1500)  # fmt: skip
    ext = features._WhisperExtractor.__new__(features._WhisperExtractor)
    ext.spec, ext.pad_mels = WhisperFeaturesSpec(type="whisper", tokens=3), whisper.pad_mels
    ext.encoder = whisper.random_whisper_encoder(config).eval()
    return ext.spec, ext


@pytest.mark.parametrize("build", [_random_cnn, _tiny_whisper], ids=["cnn", "whisper"])
def test_an_encoder_network_creates_nothing_off_its_device(build, tmp_path, cache):
    """The extractor's network placed (here: on the CPU), then run with torch's default device set to
    meta: a tensor made without a device would be meta and fail (see tests/runtime/test_placement.py)."""
    from omnifuse.runtime import resolve_placement

    spec, ext = build()
    ext.place(resolve_placement(device="cpu", dtype="float32"))
    samples = make_samples(tmp_path / "d")
    modality = spec.reads.value
    for form in ("pooled", "tokens"):
        plain = extract_features(
            samples, modality, spec, form=form, cache=False, progress=False, extractor=ext
        )
        with torch.device("meta"):
            meta = extract_features(
                samples, modality, spec, form=form, cache=False, progress=False, extractor=ext
            )
        assert meta.device.type == "cpu" and torch.equal(meta, plain)


def test_a_bf16_encoder_gives_float32_features_close_to_float32_and_its_own_cache_entry(tmp_path, cache):
    """Placed in bf16, the frozen CNN's weights are stored in bf16 and run under autocast; the features
    come back float32, close to float32's (random MobileNetV2, 32 px: every feature within 5 % of the
    largest one; measured 1.4 %), cached under a key of their own."""
    from omnifuse.runtime import resolve_placement

    samples = make_samples(tmp_path / "d")
    spec, _ = _random_cnn()
    fp32 = extract_features(samples, "image", spec, progress=False)
    bf16 = extract_features(samples, "image", spec, progress=False,
                            placement=resolve_placement(device="cpu", dtype="bfloat16"))  # fmt: skip
    print("max |bf16 - fp32| feature:", float((bf16 - fp32).abs().max()), "scale", float(fp32.abs().max()))
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape and not torch.equal(bf16, fp32)
    assert torch.allclose(bf16, fp32, rtol=0, atol=0.05 * float(fp32.abs().max()))
    assert len(list(cache.glob("*.safetensors"))) == 2  # bf16 features never answer a float32 request
    again = extract_features(samples, "image", spec, progress=False,
                             placement=resolve_placement(device="cpu", dtype="float32"))  # fmt: skip
    assert torch.equal(again, fp32) and len(list(cache.glob("*.safetensors"))) == 2  # float32 keys unchanged
