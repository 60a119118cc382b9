"""Modality importance (omnifuse.eval.importance): the options, the seeded perturbations of features and media,
and the generative table on an engine that looks at the image and never listens: the image matters clearly
(the interval excludes 0), the audio not at all (a drop of exactly 0, its interval at 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval.test_probes import ColourEngine, pixels
from omnifuse.data.jsonl import load_jsonl
from omnifuse.data.sample import AudioPart
from omnifuse.errors import OmnifuseError
from omnifuse.eval.importance import (
    PERTURBATIONS,
    explanation,
    generate_importance,
    importance_markdown,
    importance_settings,
    noise_like,
    permuted_rows,
)
from omnifuse.eval.media import media_modalities, noise_media, permute_media, remove_media
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.generation.engine import GenerationConfig
from omnifuse.processing.processor import load_clip, load_image
from tiny import write_spoken_dataset


@pytest.fixture
def spoken(tmp_path):
    """24 samples: a colour image and a tone whose pitch also names the colour."""
    return load_jsonl(write_spoken_dataset(tmp_path / "spoken", n=24))


def test_the_options_parse_or_say_what_is_wrong():
    assert importance_settings(None, None, False) is None
    default = importance_settings(None, None, True)
    assert default.perturbations == PERTURBATIONS and default.seed == 0 and not default.explicit
    named = importance_settings("noise, permute", 4, True)
    assert named.perturbations == ("permute", "noise") and named.seed == 4 and named.explicit
    with pytest.raises(OmnifuseError, match="unknown 'blank'; name one or more of remove, permute, noise"):
        importance_settings("permute,blank", None, True)
    with pytest.raises(OmnifuseError, match="empty"):
        importance_settings(" , ", None, True)
    with pytest.raises(OmnifuseError, match="runs only with --importance"):
        importance_settings("noise", None, False)
    for seed in (-1, 2**32):
        with pytest.raises(OmnifuseError, match=f"--importance-seed {seed}: a seed is a whole number from 0"):
            importance_settings(None, seed, True)


def test_feature_perturbations_are_seeded_and_carry_no_sample():
    x = torch.arange(40, dtype=torch.float32).reshape(10, 4)
    p = permuted_rows(x, 3)
    assert torch.equal(p, permuted_rows(x, 3)) and not torch.equal(p, permuted_rows(x, 4))
    assert sorted(p[:, 0].tolist()) == x[:, 0].tolist() and (p[:, 0] != x[:, 0]).all()  # a derangement
    x = torch.randn(4000, 3) * torch.tensor([1.0, 2.0, 5.0]) + torch.tensor([0.0, 3.0, -1.0])
    z = noise_like(x, 0)
    assert torch.equal(z, noise_like(x, 0)) and z.shape == x.shape
    assert torch.allclose(z.mean(0), x.mean(0), atol=0.25) and torch.allclose(z.std(0), x.std(0), rtol=0.1)
    assert abs(float(torch.corrcoef(torch.stack([z[:, 2], x[:, 2]]))[0, 1])) < 0.1  # independent of the data
    with pytest.raises(OmnifuseError, match="at least two"):
        permuted_rows(x[:1], 0)


def test_media_perturbations_touch_only_their_modality(spoken):
    assert media_modalities(spoken) == ["image", "audio"]
    removed = remove_media(spoken, "audio", 0)
    assert all(not s.audios() and s.images() == o.images() for s, o in zip(removed, spoken, strict=True))
    assert all(s.messages[0].text() == o.messages[0].text() for s, o in zip(removed, spoken, strict=True))
    moved = permute_media(spoken, "image", 1)
    assert moved == permute_media(spoken, "image", 1)
    assert all(
        m.images() != s.images() and m.audios() == s.audios() for m, s in zip(moved, spoken, strict=True)
    )
    assert sorted(map(str, (m.images()[0] for m in moved))) == sorted(
        map(str, (s.images()[0] for s in spoken))
    )
    noisy = noise_media(spoken, "image", 2)
    all_pixels = np.concatenate([pixels(s).reshape(-1, 3) for s in spoken])
    noise = np.concatenate([pixels(s).reshape(-1, 3) for s in noisy])
    # the data set's moments, up to the clipping to 0..255 (these colours are far apart: σ ≈ 90)
    assert np.allclose(noise.mean(0), all_pixels.mean(0), atol=8) and np.allclose(
        noise.std(0), all_pixels.std(0), rtol=0.2
    )
    assert all(load_image(s.images()[0], s.id).size == (32, 32) for s in noisy)
    assert [s.audios() for s in noisy] == [s.audios() for s in spoken]  # the audio left alone
    heard = noise_media(spoken, "audio", 2)
    for h, s in zip(heard, spoken, strict=True):
        clip, original = load_clip(h.audios()[0], h.id), load_clip(s.audios()[0], s.id)
        assert len(clip) == len(original) and isinstance(h.messages[0].parts[1], AudioPart)
    rms = np.sqrt(np.mean(np.concatenate([load_clip(s.audios()[0], s.id) for s in spoken]) ** 2))
    assert np.std(np.concatenate([h.audios()[0] for h in heard])) == pytest.approx(rms, rel=0.05)


def _table(samples, engine, seed=0, **kw):
    cfg = GenerationConfig()
    intact = evaluate_vqa(engine, samples, cfg, 8, progress=False)
    settings = importance_settings(None, seed, True)
    return generate_importance(engine, samples, intact, cfg, 8, settings, progress=False, **kw)


def test_the_image_matters_to_an_engine_that_looks_and_the_audio_not_at_all(spoken):
    summary = _table(spoken, ColourEngine())
    rows = {(r["modality"], r["perturbation"]): r for r in summary["rows"]}
    assert list(rows) == [(m, p) for m in ("image", "audio") for p in PERTURBATIONS]
    for p in PERTURBATIONS:
        audio = rows["audio", p]
        assert audio["intact"] == audio["perturbed"] == 1.0 and audio["drop"] == 0.0
        assert audio["ci95"] == [0.0, 0.0] and audio["p_value"] == 1.0 and audio["lost"] == 0
        image = rows["image", p]
        assert image["n"] == 24 and image["drop"] > 0.4 and image["ci95"][0] > 0.2 and image["p_value"] < 0.01
    assert rows["image", "remove"]["perturbed"] == 0.0  # "none" without an image
    assert "## Modality importance" in importance_markdown(summary)
    assert _table(spoken, ColourEngine()) == summary  # seeded
    assert _table(spoken, ColourEngine(), seed=1)["rows"] != summary["rows"]


def test_the_blind_baseline_is_the_image_removal_and_text_only_data_is_refused(spoken):
    cfg = GenerationConfig()
    blind = evaluate_vqa(ColourEngine(), spoken, cfg, 8, blind=True, progress=False)
    blind.predictions[0]["score"] = 1.0  # marked: the row must come from this result
    summary = _table(spoken, ColourEngine(), blind=blind)
    assert summary["rows"][0]["perturbed"] == pytest.approx(1 / 24)
    with pytest.raises(OmnifuseError, match="hold no media"):
        _table(remove_media(remove_media(spoken, "image", 0), "audio", 0), ColourEngine())
    with pytest.raises(OmnifuseError, match="needs at least two; there are 1"):
        _table(spoken[:1], ColourEngine())


def test_a_video_gets_remove_and_permute_and_a_note_instead_of_noise(spoken):
    from dataclasses import replace

    from omnifuse.data.sample import Message, VideoPart

    def with_video(s, i):
        user = s.messages[0]
        return replace(
            s, messages=(Message("user", (*user.parts, VideoPart(f"clip{i}.mp4"))), *s.messages[1:])
        )

    samples = [with_video(s, i) for i, s in enumerate(spoken)]
    summary = _table(samples, ColourEngine())  # the engine never opens the videos
    video = [r for r in summary["rows"] if r["modality"] == "video"]
    assert [r["perturbation"] for r in video] == ["remove", "permute"] and all(
        r["drop"] == 0.0 for r in video
    )
    assert "noise: not measured for video (noise is drawn for images and audio only)" in summary["notes"]


def test_repeated_draws_average_each_samples_perturbed_score(spoken):
    settings = importance_settings("permute,noise,remove", 7, True, 3)
    assert settings.seeds(1, "permute")[0] == 8 and len(set(settings.seeds(1, "permute"))) == 3
    assert settings.seeds(1, "remove") == [8] and settings.seeds(0, "noise") == settings.seeds(0, "permute")
    with pytest.raises(
        OmnifuseError, match="--importance-repeats 0: draw each permutation and noise at least once"
    ):
        importance_settings(None, None, True, 0)
    with pytest.raises(OmnifuseError, match="--importance-repeats set"):
        importance_settings(None, None, False, 2)
    cfg, engine = GenerationConfig(), ColourEngine()
    intact = evaluate_vqa(engine, spoken, cfg, 8, progress=False)
    once = generate_importance(
        engine, spoken, intact, cfg, 8, importance_settings(None, 0, True), progress=False
    )
    thrice = generate_importance(
        engine, spoken, intact, cfg, 8, importance_settings(None, 0, True, 3), progress=False
    )
    assert thrice["repeats"] == 3 and "mean over 3 draws" in " ".join(explanation(thrice))
    first = {(r["modality"], r["perturbation"]): r for r in once["rows"]}
    for r in thrice["rows"]:
        if r["modality"] == "audio" or r["perturbation"] == "remove":  # nothing drawn, or nothing seen
            assert r["drop"] == first[r["modality"], r["perturbation"]]["drop"]
        else:  # the mean of three derangements / noise draws, the first of which is the single draw
            assert r["drop"] > 0.4 and r["ci95"][0] > 0.2
    permute = evaluate_vqa(engine, permute_media(spoken, "image", 0), cfg, 8, progress=False)
    assert first["image", "permute"]["perturbed"] == permute.accuracy
