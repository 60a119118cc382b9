"""SHAP, LIME and occlusion for fusion classifiers: feature groups, the modality the classifier relies
on gets the attribution, seeded determinism, additivity, and the command line's classifier path."""

from __future__ import annotations

import json
import shutil
from importlib import resources

import numpy as np
import pytest
import torch

from omnifuse.cli import main
from omnifuse.errors import OmnifuseError
from omnifuse.explain.classifier import explain_classifier, feature_groups
from omnifuse.explain.perturbation import PerturbationSettings
from omnifuse.models.classifier import build_classifier
from omnifuse.recipe import ClassifierModelSpec

CLASSES = ["no", "yes"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_only_classifier():
    """Concat fusion of image (20-d) and audio (12-d) features, trained on labels that depend on the
    image features only (the sign of their first 5 dimensions' sum)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny: one thread is much faster than two fighting over a busy machine
    torch.manual_seed(0)
    spec = ClassifierModelSpec.model_validate(
        {"encoders": {"image": {"type": "mobilenet_v2"}, "audio": {"type": "logmel"}},
         "fusion": {"type": "concat", "dim": 16}, "hidden": 16, "dropout": 0.0}
    )  # fmt: skip
    model = build_classifier(spec, {"image": (20,), "audio": (12,)}, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        x = {"image": torch.randn(64, 20), "audio": torch.randn(64, 12)}
        y = (x["image"][:, :5].sum(1) > 0).long()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def sample() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = {"image": torch.randn(1, 20, generator=g), "audio": torch.randn(1, 12, generator=g)}
    x["image"][0, :5] = 0.1  # "yes", not saturated (log p of a saturated class cannot move)
    return x


def test_feature_groups():
    assert feature_groups((20,), 16, 0).tolist() == [int(i * 16 / 20) for i in range(20)]
    assert feature_groups((20,), 16, 0).max() == 15 and feature_groups((3,), 16, 5).tolist() == [5, 6, 7]
    tokens = feature_groups((4, 8), 16, 10)
    assert tokens.shape == (4, 8) and tokens[:, 0].tolist() == [10, 11, 12, 13] and (tokens[2] == 12).all()
    with pytest.raises(OmnifuseError, match="shape"):
        feature_groups((2, 3, 4), 16, 0)


@pytest.mark.parametrize("method", ["shap", "lime", "occlusion"])
def test_the_modality_the_classifier_uses_gets_the_attribution(image_only_classifier, method):
    r = explain_classifier(
        image_only_classifier, sample(), CLASSES, method, PerturbationSettings(samples=400)
    )
    assert r.target == "yes" and r.class_probs["yes"] > 0.9
    mods = {m.modality: m for m in r.modalities}
    assert len(mods["image"].values) == 16 and len(mods["audio"].values) == 12
    # measured (400 samples): the image's share of Σ|value| 0.83 (shap), 0.84 (lime), 0.91 (occlusion); the
    # audio values are sampling noise and the saturating softmax's interactions
    assert r.abs_shares()["image"] > 0.7
    values = mods["image"].values + mods["audio"].values
    assert int(np.argmax(values)) in range(4)  # the first 5 dimensions are blocks 0-3
    obj = r.to_json()
    assert set(obj["modalities"]) == {"audio", "image"} and obj["class"] == "yes"
    if method == "shap":
        assert abs(obj["efficiency_gap"]) < 1e-3


def test_classifier_sampling_is_seeded(image_only_classifier):
    def values(seed):
        r = explain_classifier(
            image_only_classifier, sample(), CLASSES, "lime", PerturbationSettings(samples=60, seed=seed)
        )
        return [v for m in r.modalities for v in m.values]

    assert values(2) == values(2) and values(2) != values(3)


def test_classifier_refusals(image_only_classifier):
    with pytest.raises(OmnifuseError, match="does not apply to a classifier"):
        explain_classifier(image_only_classifier, sample(), CLASSES, "attention", PerturbationSettings())
    with pytest.raises(OmnifuseError, match="needs more samples than groups"):
        explain_classifier(image_only_classifier, sample(), CLASSES, "shap", PerturbationSettings(samples=10))
    with pytest.raises(OmnifuseError, match="not one of the classifier's classes"):
        explain_classifier(
            image_only_classifier, sample(), CLASSES, "occlusion", PerturbationSettings(), "maybe"
        )


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def classifier_run(tmp_path, monkeypatch, image_only_classifier):
    from omnifuse.tasks.classify import ClassifyTask

    run = tmp_path / "run"
    run.mkdir()
    recipe = resources.files("omnifuse.recipes").joinpath("classic/av-digits.yaml")
    shutil.copyfile(str(recipe), run / "recipe.yaml")
    (run / "model.safetensors").write_bytes(b"")
    seen = {}

    def fake_inputs(self, run_dir, question, image, audio, device=None, dtype=None):
        seen.update(question=question, audio=audio)
        return image_only_classifier, sample(), CLASSES

    monkeypatch.setattr(ClassifyTask, "explain_inputs", fake_inputs)
    return run, seen


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


def test_cli_explains_a_classifier_run(classifier_run, tmp_path, capsys):
    run, seen = classifier_run
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF")
    out = tmp_path / "ex"
    argv = ["explain", str(run), "seven", "--audio", str(clip), "--method", "shap,occlusion", "--samples", "60",
            "--out", str(out)]  # fmt: skip
    code, text, _ = run_cli(argv, capsys)
    assert code == 0, text
    assert seen == {"question": "seven", "audio": clip}
    assert "class: yes" in text and "per modality" in text
    saved = json.loads((out / "explain.json").read_text())
    assert saved["task"] == "classify" and saved["methods"] == ["shap", "occlusion"]
    assert saved["files"] == {"shap": "shap.png", "occlusion": "occlusion.png", "modality": "modality.png"}
    assert all((out / f).is_file() for f in saved["files"].values())
    shares = {m: v["abs_share"] for m, v in saved["perturbation"]["shap"]["modalities"].items()}
    assert shares["image"] > 0.55


def test_cli_refuses_map_methods_on_a_classifier_run(classifier_run, capsys):
    run, _ = classifier_run
    code, _, err = run_cli(["explain", str(run), "seven", "--method", "attention"], capsys)
    assert code == 2 and "does not apply to a classifier run" in " ".join(err.split())


def test_cli_on_a_trained_classifier_run(tmp_path, capsys, monkeypatch):
    """End to end: a toy classifier (8×8 pixels + log-mel statistics) trained by the classify task, then
    explained from an image file, a wav file and the question (which modality it relies on is checked on a
    controlled classifier above: 36 samples of noise audio are enough for this one to lean on the audio)."""
    import soundfile as sf
    from PIL import Image

    from omnifuse.data.jsonl import write_jsonl
    from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
    from omnifuse.recipe import parse_recipe
    from omnifuse.tasks.classify.trainer import train_classifier

    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    samples = []
    for i in range(36):
        k = i % 3
        pixels = rng.normal(0.3, 0.2, (12, 12))
        pixels[4 * k : 4 * k + 4] += 0.5  # a bright band at row group k
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(tmp_path / f"{i}.png")
        sf.write(tmp_path / f"{i}.wav", rng.normal(0, 0.3, 3200).astype(np.float32), 16000)  # noise only
        parts = (ImagePart(tmp_path / f"{i}.png"), AudioPart(tmp_path / f"{i}.wav"), TextPart("which class?"))
        samples.append(Sample(f"s{i}", (Message("user", parts), Message("assistant", (TextPart("abc"[k]),)))))
    data = str(write_jsonl(samples, tmp_path / "data.jsonl"))
    recipe = parse_recipe({
        "task": "classify", "name": "toy",
        "model": {"encoders": {"image": {"type": "pixels", "size": 8}, "audio": {"type": "logmel", "n_mels": 16}},
                  "fusion": {"type": "concat", "dim": 16}, "hidden": 16},
        "data": {"train": data, "eval": data}, "train": {"epochs": 30, "batch_size": 12, "lr": 1.0e-2},
    })  # fmt: skip
    train_classifier(recipe, tmp_path / "run", progress=False)
    out = tmp_path / "ex"
    argv = ["explain", str(tmp_path / "run"), "which class?", "--image", str(tmp_path / "0.png"), "--audio",
            str(tmp_path / "0.wav"), "--method", "occlusion,shap", "--samples", "80", "--out", str(out),
            "--no-progress"]  # fmt: skip
    code, text, _ = run_cli(argv, capsys)
    assert code == 0, text
    saved = json.loads((out / "explain.json").read_text())
    assert saved["class"] == "a" and set(saved["perturbation"]["shap"]["modalities"]) == {"audio", "image"}
    shap = saved["perturbation"]["shap"]
    assert len(shap["modalities"]["image"]["values"]) == 16 and abs(shap["efficiency_gap"]) < 1e-3
    code, _, err = run_cli([*argv[:5], "--method", "shap", "--no-progress"], capsys)  # no --audio
    assert code == 2 and "missing audio (--audio)" in err
