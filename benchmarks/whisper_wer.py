"""Whisper-base (converted from the packaged CTranslate2 weights) on real speech: WER and speed.

Transcribes the LibriVox clips of Debian's pocketsphinx-testdata with both input modes of
``omnifuse.encoders.audio.asr.Transcriber`` — padded to Whisper's 30 s window (the default) and the clip's real
length plus 3 s of silence — and prints the corpus WER (Whisper's English normaliser on both sides) and
seconds per clip, the real-length time as a ratio to the padded one. Then times the encoder alone on a
2 s clip: omnifuse's real-length ``WhisperAudioEncoder`` against transformers' ``WhisperEncoder`` on the
30 s window it requires (median of 5, interleaved).

    python benchmarks/whisper_wer.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import soundfile as sf
import torch

from omnifuse.encoders.audio.asr import Transcriber
from omnifuse.eval.metrics import normalize_transcript, word_error_rate

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def librivox() -> tuple[list, list[str]]:
    refs = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        body, utt = line.rsplit("(", 1)
        refs[utt.strip(" )")] = body.replace("<s>", "").replace("</s>", "").strip()
    ids = (LIBRIVOX / "fileids").read_text().split()
    return [sf.read(LIBRIVOX / f"{u}.wav", dtype="float32")[0] for u in ids], [refs[u] for u in ids]


def main() -> None:
    if not LIBRIVOX.is_dir():
        raise SystemExit("needs Debian's pocketsphinx-testdata: apt-get install pocketsphinx-testdata")
    waves, refs = librivox()
    base = Transcriber.load()
    seconds = {}
    for name, pad in (("padded to 30 s", True), ("real length + 3 s", False)):
        asr = Transcriber(base.model, base.tokenizer, base.feature_extractor, pad_to_30s=pad)
        asr.transcribe(waves[:1], batch_size=1)  # warm-up
        t0 = time.perf_counter()
        hyps = asr.transcribe(waves, batch_size=8)
        seconds[name] = (time.perf_counter() - t0) / len(waves)
        wer = word_error_rate(
            [normalize_transcript(r) for r in refs], [normalize_transcript(h) for h in hyps]
        )
        print(
            f"{name:18s} WER {100 * wer.wer:5.2f} % ({int(wer.errors.sum())} of {int(wer.reference_words.sum())} "
            f"words, {len(waves)} clips)  {seconds[name]:.2f} s/clip"
        )
    print(f"real-length time / padded time: {seconds['real length + 3 s'] / seconds['padded to 30 s']:.2f}")

    clip = waves[0][: 2 * 16000]
    encoder = base.encoder  # omnifuse's WhisperAudioEncoder around the model's own encoder modules
    mel = encoder.preprocess(clip)[None]
    full = base.feature_extractor(
        clip, sampling_rate=16000, return_tensors="pt"
    ).input_features  # 3000 frames
    times: dict[str, list[float]] = {"real length": [], "30 s window": []}
    with torch.inference_mode():
        for _ in range(6):
            t0 = time.perf_counter()
            encoder(mel, torch.tensor([mel.shape[-1]]))
            times["real length"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            base.model.get_encoder()(full)
            times["30 s window"].append(time.perf_counter() - t0)
    real, padded = (statistics.median(t[1:]) for t in times.values())
    print(
        f"encoder on a 2 s clip: real length {real:.3f} s ({mel.shape[-1] // 2} tokens), 30 s window "
        f"{padded:.3f} s (1500 tokens): {padded / real:.1f}× faster"
    )


if __name__ == "__main__":
    main()
