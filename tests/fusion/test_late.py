"""ASR cascade (late fusion): spoken parts become their transcript; batched, remembered, errors named."""

from __future__ import annotations

import numpy as np
import pytest

from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.fusion.late import SpeechToText
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import make_parts, tiny_recipe_dict, write_spoken_dataset


class PitchTranscriber:
    """Names a clip by its loudest frequency: 'what color is it 300' — and counts its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def transcribe(self, waveforms, batch_size: int = 8) -> list[str]:
        self.calls.append(len(waveforms))
        out = []
        for w in waveforms:
            spectrum = np.abs(np.fft.rfft(w))
            out.append(f"what color is it {round(np.argmax(spectrum) * 16000 / len(w), -2):.0f}")
        return out


@pytest.fixture
def cascade(tmp_path, chatml_tokenizer):
    data = write_spoken_dataset(tmp_path / "spoken")
    recipe = parse_recipe(tiny_recipe_dict(data))
    model, proc = build_model(recipe.model, **make_parts(chatml_tokenizer))
    asr = PitchTranscriber()
    proc.speech_to_text = SpeechToText(asr, batch_size=4)
    return load_jsonl(data), model.eval(), proc, asr


def test_the_transcript_takes_the_clips_place(cascade):
    samples, model, proc, asr = cascade
    text, _, items = proc.render(samples[1].prompt(), add_generation_prompt=True, sample_id=samples[1].id)
    assert "what color is it 600" in text and [kind for kind, _ in items] == ["image"]
    assert "what color is it 900" in proc.render(samples[2].prompt(), True, samples[2].id)[0]


def test_prefetch_batches_and_remembers(cascade):
    samples, model, proc, asr = cascade
    proc.speech_to_text.prefetch(samples, progress=False)
    assert asr.calls == [4, 4, 4]  # 12 clips in batches of 4
    for s in samples:
        proc.encode(s)
    assert asr.calls == [4, 4, 4]  # every clip known: nothing transcribed again
    result = evaluate_vqa(Engine(model, proc), samples, GenerationConfig(max_new_tokens=2), progress=False)
    assert result.predictions[0]["heard"] == "what color is it 300"
    assert asr.calls == [4, 4, 4]
    # the data's transcript is "what color is the shape?": 'the shape' heard as 'it <pitch>' = 2 of 5 words
    assert result.asr == {"wer": pytest.approx(0.4), "exact": 0.0, "n": 12}
    assert result.summary()["asr"]["n"] == 12


def test_a_bad_clip_names_the_sample(cascade):
    samples, model, proc, asr = cascade
    samples[3].audios()[0].write_bytes(b"not a wav")
    with pytest.raises(OmnifuseError, match=r"sample a3: .*3\.wav"):
        proc.encode(samples[3])
