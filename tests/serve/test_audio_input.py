"""Spoken questions through the OpenAI API (input_audio parts) on a model with a Whisper encoder."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from omnifuse.data.sample import AudioPart, Message, Sample
from omnifuse.errors import OmnifuseError
from omnifuse.generation.engine import Engine, GenerationConfig
from omnifuse.models.builders import build_model
from omnifuse.recipe import GenerationSpec, ModelSpec
from omnifuse.serve.server import ServerSettings
from serve.conftest import MODEL_SPEC, running_server, tiny_engine
from tiny import make_parts, make_whisper_encoder

SPEC = {
    **MODEL_SPEC,
    "encoders": {**MODEL_SPEC["encoders"], "audio": {"type": "whisper", "weights": "injected"}},
    "connectors": {**MODEL_SPEC["connectors"], "audio": {"type": "stack", "factor": 4}},
}


def wav_b64(seconds: float = 0.8, hz: float = 440.0, rate: int = 44100, channels: int = 2) -> str:
    t = np.arange(int(rate * seconds)) / rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * hz * t)] * channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def spoken(data: str) -> dict:
    return {
        "model": "tiny",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}],
            }
        ],
        "max_tokens": 3,
        "temperature": 1.0,
        "seed": 5,
    }


@pytest.fixture(scope="module")
def audio_server():
    parts = make_parts()
    parts["encoders"]["audio"] = make_whisper_encoder()
    model, processor = build_model(ModelSpec.model_validate(SPEC), progress=False, **parts)
    with running_server(ServerSettings(model_name="tiny"), Engine(model.eval(), processor)) as s:
        yield s


def test_a_spoken_question_is_heard(audio_server):
    """A 44.1 kHz stereo wav is converted (not refused); the answer is the engine's on the same clip,
    and the prompt holds the clip's tokens (0.8 s → 40 Whisper frames → 10 stacked tokens)."""
    res = httpx.post(f"{audio_server.url}/v1/chat/completions", json=spoken(wav_b64()), timeout=60)
    assert res.status_code == 200, res.text
    from omnifuse.audio.io import load_audio

    clip = load_audio(base64.b64decode(wav_b64()))
    sample = Sample("x", (Message("user", (AudioPart(waveform=clip),)),), {})
    engine = audio_server.service.engine
    expected = engine.generate([sample], GenerationConfig(3, 1.0, seed=5))[0]
    assert res.json()["choices"][0]["message"]["content"] == expected
    text_only = httpx.post(
        f"{audio_server.url}/v1/chat/completions",
        json={"model": "tiny", "messages": [{"role": "user", "content": ""}], "max_tokens": 1},
        timeout=60,
    ).json()
    assert res.json()["usage"]["prompt_tokens"] - text_only["usage"]["prompt_tokens"] == 10


@pytest.mark.parametrize(
    "data, status, needle",
    [
        (base64.b64encode(b"RIFF....not really").decode(), 400, "not an audio file"),
        ("%%%", 400, "not valid base64"),
        (wav_b64(seconds=31, rate=8000, channels=1), 400, "longer than the limit"),
        (base64.b64encode(np.zeros(0).tobytes()).decode(), 400, "empty"),
    ],
)
def test_bad_audio_is_a_400_naming_the_part(audio_server, data, status, needle):
    res = httpx.post(f"{audio_server.url}/v1/chat/completions", json=spoken(data), timeout=60)
    assert res.status_code == status, res.text
    err = res.json()["error"]
    assert needle in err["message"] and err["param"] == "messages.0.content.0.input_audio.data"
    assert audio_server.alive()


def test_silence_is_refused(audio_server):
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000), 16000, format="WAV")
    res = httpx.post(
        f"{audio_server.url}/v1/chat/completions",
        json=spoken(base64.b64encode(buf.getvalue()).decode()),
        timeout=60,
    )
    assert res.status_code == 400 and "silent" in res.json()["error"]["message"]


def test_chat_takes_a_spoken_question_and_refuses_one_it_cannot_hear(audio_server, tmp_path):
    from omnifuse.generation.chat import ChatSession

    engine = audio_server.service.engine
    recipe = type("R", (), {"generation": GenerationSpec(max_new_tokens=3), "seed": 0})()
    clip = tmp_path / "q.wav"
    clip.write_bytes(base64.b64decode(wav_b64()))
    session = ChatSession(engine.model, engine.processor, recipe)
    answer = session.ask(None, clip)
    assert isinstance(answer, str) and len(session.history) == 2
    assert isinstance(session.history[0].parts[0], AudioPart)
    with pytest.raises(OmnifuseError, match="type it or give a clip"):
        session.ask(None, None)
    deaf = tiny_engine()
    with pytest.raises(OmnifuseError, match="this model cannot hear"):
        ChatSession(deaf.model, deaf.processor, recipe).ask(None, clip)
