from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from omnifuse.data.jsonl import load_jsonl
from omnifuse.errors import OmnifuseError
from omnifuse.eval.probes import blank, derangement, noise, run_probes, shuffled, token_dropout
from omnifuse.eval.vqa import evaluate_vqa
from omnifuse.generation.engine import GenerationConfig
from omnifuse.processing.processor import load_image
from tiny import COLORS


def pixels(sample) -> np.ndarray:
    return np.asarray(load_image(sample.images()[0], sample.id), dtype=np.float32)


class ColourEngine:
    """Looks at the image: answers the colour nearest to the image's mean, 'none' without an image."""

    model = None
    processor = SimpleNamespace(speech_to_text=None)  # hears nothing: no ASR cascade

    def generate(self, prompts, cfg):
        out = []
        for p in prompts:
            if not p.images():
                out.append("none")
                continue
            mean = pixels(p).reshape(-1, 3).mean(0)
            out.append(min(COLORS, key=lambda c: float(np.sum((mean - np.array(COLORS[c])) ** 2))))
        return out


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_moves_every_item(n):
    perm = derangement(n, seed=n)
    assert sorted(perm) == list(range(n))
    assert all(perm[i] != i for i in range(n))
    assert derangement(n, seed=n) == perm  # seeded


def test_blank_and_noise_change_only_the_pixels(color_data):
    samples = load_jsonl(color_data)[:6]
    for s, b in zip(samples, blank(samples, 0), strict=True):
        assert b.id == s.id and b.answer() == s.answer() and b.messages[0].text() == s.messages[0].text()
        assert (pixels(b) == 128).all() and pixels(b).shape == pixels(s).shape
    noisy = noise(0.1)(samples, 0)
    diff = np.concatenate([(pixels(n) - pixels(s)).ravel() for s, n in zip(samples, noisy, strict=True)])
    # Clipping at 0 and 255 shrinks the spread a little; unclipped it would be 25.5.
    assert 15 < diff.std() < 26
    assert samples[0].images()[0] == load_jsonl(color_data)[0].images()[0]  # the data is left alone


def test_shuffled_gives_each_question_another_samples_image(color_data):
    samples = load_jsonl(color_data)
    moved = shuffled(samples, 3)
    by_pixels = [pixels(s) for s in samples]
    for i, m in enumerate(moved):
        donors = [j for j, p in enumerate(by_pixels) if np.array_equal(p, pixels(m))]
        assert donors and m.answer() == samples[i].answer()
    with pytest.raises(OmnifuseError, match="two samples"):
        shuffled(samples[:1], 0)


def test_probes_show_how_much_the_answers_depend_on_the_image(color_data):
    samples = load_jsonl(color_data)
    engine, cfg = ColourEngine(), GenerationConfig()
    clean = evaluate_vqa(engine, samples, cfg, 8, progress=False)
    assert clean.accuracy == 1.0
    from omnifuse.eval.probes import DEFAULT_PROBES

    probed = run_probes(engine, samples, clean, cfg, 8, probes=DEFAULT_PROBES[:4], progress=False)
    rows = {r.probe: r for r in probed}
    # A grey image is nearest to one colour: a third of the answers stay right, the rest change.
    assert rows["blank"].result.accuracy == pytest.approx(1 / 3)
    assert rows["blank"].changed == pytest.approx(2 / 3)
    assert rows["noise-0.1"].result.accuracy == 1.0 and rows["noise-0.1"].changed == 0.0
    # Shuffled: right only where the donor happens to have the same colour (1 in 3 by chance).
    assert rows["shuffled"].result.accuracy < 0.6
    assert rows["shuffled"].changed == pytest.approx(1 - rows["shuffled"].result.accuracy)


def test_token_dropout_zeroes_about_p_of_the_tokens_and_goes_away():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.connectors = torch.nn.ModuleDict({"image": torch.nn.Identity()})

    model = Model()
    x = torch.ones(50, 16, 8)
    with token_dropout(model, 0.5, seed=0):
        y = model.connectors["image"](x)
    zeroed = (y.abs().sum(-1) == 0).float().mean().item()
    assert 0.4 < zeroed < 0.6
    kept = y.abs().sum(-1) > 0
    assert torch.equal(y[kept], x[kept])  # whole tokens: kept ones are untouched
    assert torch.equal(model.connectors["image"](x), x)  # hook removed
