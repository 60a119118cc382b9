"""Spoken input through the spine: Whisper encoder over the real clip length → frame stacking → LLM."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import parse_recipe
from tiny import make_parts, make_whisper_encoder, tiny_recipe_dict, write_spoken_dataset


def audio_recipe(data: Path, **stage) -> dict:
    raw = tiny_recipe_dict(data)
    raw["model"]["encoders"]["audio"] = {"type": "whisper", "weights": "injected-by-tests"}
    raw["model"]["connectors"]["audio"] = {"type": "stack", "factor": 4}
    for s in raw["stages"]:
        s.update(stage)
    return raw


def audio_parts(tokenizer) -> dict:
    parts = make_parts(tokenizer)
    parts["encoders"]["audio"] = make_whisper_encoder()
    return parts


@pytest.fixture
def spoken(tmp_path) -> Path:
    return write_spoken_dataset(tmp_path / "spoken")


def test_each_clip_gets_its_own_token_count_and_batching_changes_nothing(spoken, chatml_tokenizer):
    recipe = parse_recipe(audio_recipe(spoken))
    model, proc = build_model(recipe.model, **audio_parts(chatml_tokenizer))
    model.eval()
    samples = load_jsonl(spoken)[:4]
    encoded = [proc.encode(s, for_generation=True) for s in samples]
    pid = model.placeholder_ids["audio"]
    for s, e in zip(samples, encoded, strict=True):
        n_samples = len(sf.read(s.audios()[0])[0])
        frames = e.media["audio"][0].shape[-1]  # 100 mel frames per second, even
        assert frames == 2 * math.ceil(n_samples / 320)
        assert e.input_ids.count(pid) == math.ceil(math.ceil(frames / 2) / 4)  # /2 (Whisper), /4 (stack)
    batch = proc.collate(encoded)
    assert batch.media_lengths["audio"].tolist() == [e.media["audio"][0].shape[-1] for e in encoded]
    with torch.no_grad():  # right padding: each row's first n positions are its own
        together = model(**batch.model_inputs()).logits
        for b, e in enumerate(encoded):
            alone = model(**proc.collate([e]).model_inputs()).logits
            n = len(e.input_ids)
            assert torch.allclose(together[b, :n], alone[0, :n], atol=1e-4)


def test_hearing_differs_from_silence_and_features_reach_the_llm(spoken, chatml_tokenizer):
    recipe = parse_recipe(audio_recipe(spoken))
    model, proc = build_model(recipe.model, **audio_parts(chatml_tokenizer))
    model.eval()
    a, b = load_jsonl(spoken)[:2]  # 300 Hz vs 600 Hz tones
    enc_a, enc_b = proc.encode(a, for_generation=True), proc.encode(b, for_generation=True)
    with torch.no_grad():
        la = model(**proc.collate([enc_a]).model_inputs()).logits[0, -1]
        lb = model(**proc.collate([enc_b]).model_inputs()).logits[0, -1]
    assert not torch.allclose(la, lb, atol=1e-5)


def test_a_few_training_steps_and_generation(spoken, chatml_tokenizer, tmp_path):
    from omnifuse.training.loop import train

    raw = audio_recipe(spoken)
    recipe = parse_recipe(raw)
    result = train(recipe, tmp_path / "run", progress=False, parts=audio_parts(chatml_tokenizer))
    lines = (result.run.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8
    engine = Engine(*build_model(recipe.model, **audio_parts(chatml_tokenizer)))
    out = engine.generate(load_jsonl(spoken)[:3], GenerationConfig(max_new_tokens=3))
    assert len(out) == 3 and all(isinstance(x, str) for x in out)


def test_distill_objective_logs_both_terms(spoken, chatml_tokenizer, tmp_path):
    from omnifuse.training.loop import train

    raw = audio_recipe(spoken)
    raw["stages"] = raw["stages"][:1]
    raw["stages"][0].update(objective={"type": "distill", "weight": 0.5})
    result = train(parse_recipe(raw), tmp_path / "run", progress=False, parts=audio_parts(chatml_tokenizer))
    rows = [yaml.safe_load(x) for x in (result.run.path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["kd"] >= 0 and r["ce"] > 0 for r in rows)
    # w·kd + (1 − w)·ce is the logged loss (one micro-batch per step)
    assert all(abs(r["loss"] - (0.5 * r["kd"] + 0.5 * r["ce"])) < 1e-3 for r in rows)


def test_distill_needs_transcripts(spoken, chatml_tokenizer, tmp_path):
    from omnifuse.training.loop import train

    text = spoken.read_text().replace('"transcript": "what color is the shape?"', '"other": 1')
    spoken.write_text(text)
    raw = audio_recipe(spoken)
    raw["stages"] = raw["stages"][:1]
    raw["stages"][0].update(objective={"type": "distill"})
    with pytest.raises(OmnifuseError, match="meta.transcript"):
        train(parse_recipe(raw), tmp_path / "run", progress=False, parts=audio_parts(chatml_tokenizer))


def test_bad_clips_name_the_sample(spoken, chatml_tokenizer):
    recipe = parse_recipe(audio_recipe(spoken))
    model, proc = build_model(recipe.model, **audio_parts(chatml_tokenizer))
    (spoken.parent / "audio" / "0.wav").write_bytes(b"this is not audio")
    (spoken.parent / "audio" / "1.wav").write_bytes(b"")
    samples = load_jsonl(spoken)
    with pytest.raises(OmnifuseError, match=r"sample a0: .*0\.wav"):
        proc.encode(samples[0])
    with pytest.raises(OmnifuseError, match=r"sample a1: .*empty"):
        proc.encode(samples[1])


def test_a_model_without_ears_says_so(spoken, chatml_tokenizer):
    raw = tiny_recipe_dict(spoken)
    model, proc = build_model(parse_recipe(raw).model, **make_parts(chatml_tokenizer))
    with pytest.raises(
        OmnifuseError, match="has an audio but this model has no audio encoder or ASR cascade"
    ):
        proc.encode(load_jsonl(spoken)[0])
