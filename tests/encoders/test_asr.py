"""Whisper transcription: the prompt, batching and order, the padding modes and the decoding budget
(a tiny random Whisper converted from a synthetic CTranslate2 file); LibriVox WER with the packaged one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnifuse.assets import whisper
from omnifuse.encoders.audio.asr import PROMPT, Transcriber
from omnifuse.errors import OmnifuseError
from tiny_whisper import IDS, write_tiny_ct2

SR = 16000
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whisper")
    _, parts, tokenizer, config = write_tiny_ct2(root / "ct2")
    folder = root / "hf"
    folder.mkdir()
    whisper.write_hf_whisper(parts, tokenizer, config, folder)
    return folder


def _clip(seconds: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, round(seconds * SR)).astype(np.float32)


def _spy_generate(transcriber: Transcriber) -> list[dict]:
    """Record the decoder prompt and the settings of each generate call."""
    calls: list[dict] = []
    generate = transcriber.model.generate

    def first_step(module, args, kwargs):
        if calls and "prompt" not in calls[-1]:
            calls[-1]["prompt"] = kwargs["decoder_input_ids"][0].tolist()

    def spy(**kwargs):
        frames = kwargs["input_features"].shape[-1] if "input_features" in kwargs else None
        tokens = kwargs["encoder_outputs"].last_hidden_state.shape[1] if "encoder_outputs" in kwargs else None
        calls.append({"frames": frames, "encoder_tokens": tokens, "budget": kwargs["max_length"]})
        out = generate(**kwargs)
        calls[-1]["generated"] = out.shape[1]
        return out

    transcriber.model.generate = spy
    transcriber.model.register_forward_pre_hook(first_step, with_kwargs=True)
    return calls


@pytest.mark.parametrize("pad_to_30s", [True, False])
def test_english_transcription_prompt_and_budget(tiny_folder, pad_to_30s):
    tr = Transcriber.load(str(tiny_folder), pad_to_30s=pad_to_30s)
    calls = _spy_generate(tr)
    texts = tr.transcribe([_clip(0.1, 0)])
    assert len(texts) == 1 and isinstance(texts[0], str)
    assert calls[0]["prompt"] == [IDS[t] for t in PROMPT]
    assert calls[0]["budget"] == 17  # 16 + 10 per second of audio, rounded up
    assert calls[0]["generated"] <= 17
    if pad_to_30s:
        assert calls[0]["frames"] == 3000
    else:  # 0.1 s + 3 s of silence → 3.1 s → 310 frames → 155 encoder tokens
        assert calls[0]["encoder_tokens"] == 155


def test_budget_is_capped_by_the_decoder_length(tiny_folder):
    tr = Transcriber.load(str(tiny_folder))
    assert tr.token_budget(SR * 20) == 24 - len(PROMPT)  # the tiny decoder has 24 positions


def test_batches_sorted_by_length_and_results_in_input_order(tiny_folder):
    """Real-length mode: clips are grouped by length (each batch padded to its longest clip plus 3 s of
    silence); transcripts come back in input order and equal those of the same batches run directly."""
    tr = Transcriber.load(str(tiny_folder), pad_to_30s=False)
    clips = [_clip(s, i) for i, s in enumerate((2.0, 0.3, 1.2, 0.5, 2.5))]
    calls = _spy_generate(tr)
    texts = tr.transcribe(clips, batch_size=2)
    assert [c["encoder_tokens"] for c in calls] == [175, 250, 275]  # (0.3, 0.5) (1.2, 2.0) (2.5) + 3 s
    for group in ([1, 3], [2, 0], [4]):
        assert tr.transcribe([clips[i] for i in group], batch_size=len(group)) == [texts[i] for i in group]


def test_padded_to_30s_batching_does_not_change_results(tiny_folder):
    tr = Transcriber.load(str(tiny_folder), pad_to_30s=True)
    clips = [_clip(s, i) for i, s in enumerate((1.0, 0.4, 0.7))]
    assert tr.transcribe(clips, batch_size=3) == [tr.transcribe([c])[0] for c in clips]


def test_bad_input(tiny_folder):
    tr = Transcriber.load(str(tiny_folder))
    assert tr.transcribe([]) == []
    with pytest.raises(OmnifuseError, match=r"audio clip of 31\.00 s .* limit of 30 s"):
        tr.transcribe([_clip(1.0, 0), _clip(31.0, 1)])
    with pytest.raises(OmnifuseError, match="batch_size must be at least 1"):
        tr.transcribe([_clip(1.0, 0)], batch_size=0)
    with pytest.raises(OmnifuseError, match="trailing_silence_s"):
        Transcriber.load(str(tiny_folder), pad_to_30s=False, trailing_silence_s=-1)


# ------------------------------------------------------------------ packaged Whisper on LibriVox
def _librivox() -> tuple[list[np.ndarray], list[str]]:
    import soundfile as sf

    refs = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, utt = line.rsplit("(", 1)
        refs[utt.rstrip(") ")] = text.replace("<s>", "").replace("</s>", "").strip()
    ids = (LIBRIVOX / "fileids").read_text().split()
    waves = []
    for utt in ids:
        wave, rate = sf.read(LIBRIVOX / f"{utt}.wav", dtype="float32")
        assert rate == SR
        waves.append(wave)
    return waves, [refs[u] for u in ids]


@pytest.mark.integration
def test_packaged_whisper_transcribes_librivox():
    from omnifuse.assets import get_asset, is_installed
    from omnifuse.eval.metrics import normalize_transcript, word_error_rate

    asset = get_asset("whisper-base")
    if not is_installed(asset):
        pytest.skip(f"the packaged Whisper is not installed: `{asset.install_command}`")
    if not (LIBRIVOX / "transcription").is_file():
        pytest.skip("LibriVox clips missing: `apt-get install pocketsphinx-testdata`")
    waves, refs = _librivox()
    transcriber = Transcriber.load("whisper-base")
    assert transcriber.pad_to_30s  # the default
    hyps = transcriber.transcribe(waves, batch_size=8)
    result = word_error_rate([normalize_transcript(r) for r in refs], [normalize_transcript(h) for h in hyps])
    assert result.wer < 0.10, hyps
    assert hyps[1] == "He was not an ill-disposed young man."
