"""The audio recipes as written (src/omnifuse/recipes/audio-*.yaml): a few training steps each, then evaluation.

The LLM and the image encoder are tiny injected stand-ins; the audio parts are real: the embedding recipe
builds the packaged Whisper-base encoder, the cascade recipe transcribes with the packaged Whisper-base.
Clips are espeak-ng speech, so the cascade's WER is measured on real recognition.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from omnifuse.audio.tts import espeak_available, synthesize
from omnifuse.data.jsonl import load_jsonl, write_jsonl
from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample
from omnifuse.eval.runner import evaluate_run
from omnifuse.recipe import load_recipe
from omnifuse.recipes import RECIPES_DIR
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_parts, write_color_dataset

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng (apt-get install espeak-ng)"),
]
RECIPES = RECIPES_DIR
SHORT = ["stages.0.steps=2", "stages.1.steps=2", "stages.0.batch_size=2", "stages.1.batch_size=2"]


def spoken_colors(folder: Path) -> Path:
    """The tiny colour set with its question spoken by espeak-ng (transcript kept in meta)."""
    samples = load_jsonl(write_color_dataset(folder, n=4))
    clip = folder / "question.wav"
    clip.write_bytes(synthesize("what color is the shape?"))
    spoken = [
        Sample(
            s.id,
            (Message("user", (ImagePart(s.images()[0]), AudioPart(clip))), s.messages[-1]),
            {**s.meta, "transcript": "what color is the shape?"},
        )
        for s in samples
    ]
    return write_jsonl(spoken, folder / "spoken.jsonl")


def test_audio_embed_recipe_trains_and_evaluates(tmp_path, chatml_tokenizer):
    data = spoken_colors(tmp_path / "data")
    recipe = load_recipe(RECIPES / "audio-embed.yaml", [*SHORT, f"data.train={data}", f"data.eval={data}"])
    parts = make_parts(chatml_tokenizer)  # tiny LLM and image encoder; Whisper-base is built from the recipe
    from omnifuse.models.builders import build_encoder

    parts["encoders"]["audio"] = build_encoder(recipe.model.encoders["audio"])
    result = train(recipe, tmp_path / "run", progress=False, parts=parts)
    assert len((result.run.path / "metrics.jsonl").read_text().splitlines()) == 4
    run = RunDir(tmp_path / "run")
    outcome = evaluate_run(run, progress=False, loaded=load_model(run, progress=False, parts=parts))
    assert outcome.result.n == 4 and outcome.result.asr is None


def test_audio_cascade_recipe_hears_through_whisper(tmp_path, chatml_tokenizer):
    data = spoken_colors(tmp_path / "data")
    typed = write_color_dataset(tmp_path / "typed", n=4)
    recipe = load_recipe(RECIPES / "audio-cascade.yaml", [*SHORT, f"data.train={typed}", f"data.eval={data}"])
    result = train(recipe, tmp_path / "run", progress=False, parts=make_parts(chatml_tokenizer))
    assert len((result.run.path / "metrics.jsonl").read_text().splitlines()) == 4
    run = RunDir(tmp_path / "run")
    loaded = load_model(run, progress=False, parts=make_parts(chatml_tokenizer))
    outcome = evaluate_run(run, progress=False, loaded=loaded)
    asr = outcome.result.asr
    assert asr is not None and asr["n"] == 4 and asr["wer"] < 0.5
    assert all(isinstance(p["heard"], str) and p["heard"] for p in outcome.result.predictions)
