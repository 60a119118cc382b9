"""Classifier training on cached features: the run directory, robustness, DP-SGD, resume, bad recipes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from omnifuse.data.jsonl import write_jsonl
from omnifuse.data.sample import AudioPart, ImagePart, Message, Sample, TextPart
from omnifuse.errors import OmnifuseError
from omnifuse.models.classifier import build_classifier
from omnifuse.recipe import ClassifierModelSpec, parse_recipe
from omnifuse.tasks.classify import trainer as clf
from omnifuse.tasks.classify.trainer import check_private_compatible, modality_dropout_mask, train_classifier

CLASSES = ("a", "b", "c")
FUSIONS = ["concat", "attention", "gated", "tensor", "low_rank_tensor", "late_average", "late_weighted",
           "late_stacking"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread(monkeypatch, tmp_path):
    """Tiny models: one thread is much faster than two fighting over a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))
    yield
    torch.set_num_threads(threads)


def write_toy(folder, n: int, seed: int, audio: bool = True) -> str:
    """Class k: an image with a bright band at row group k, a tone at 300·(k+1) Hz; both noisy."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        k = i % 3
        pixels = rng.normal(0.3, 0.25, (12, 12))
        pixels[4 * k : 4 * k + 4] += 0.5
        image = folder / f"{i}.png"
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(image)
        parts = [ImagePart(image), TextPart("which class?")]
        if audio:
            t = np.arange(3200) / 16000
            wave = 0.3 * np.sin(2 * np.pi * 300 * (k + 1) * t) + rng.normal(0, 0.3, t.size)
            sf.write(folder / f"{i}.wav", wave.astype(np.float32), 16000)
            parts.insert(1, AudioPart(folder / f"{i}.wav"))
        msgs = (Message("user", tuple(parts)), Message("assistant", (TextPart(CLASSES[k]),)))
        samples.append(Sample(f"{folder.name}-{i}", msgs))
    return str(write_jsonl(samples, folder / "data.jsonl"))


def toy_recipe(tmp_path, **changes) -> dict:
    raw = {
        "task": "classify",
        "name": "toy",
        "model": {
            "encoders": {"image": {"type": "pixels", "size": 8}, "audio": {"type": "logmel", "n_mels": 16}},
            "fusion": {"type": "concat", "dim": 16},
            "hidden": 16,
        },
        "data": {"train": write_toy(tmp_path / "train", 48, 0), "eval": write_toy(tmp_path / "eval", 24, 1)},
        "train": {"epochs": 4, "batch_size": 16, "lr": 1.0e-2},
        "eval": {"robustness": {"noise_std": [0.5, 2.0]}},
    }
    for key, value in changes.items():
        raw[key] = value if not isinstance(value, dict) else {**raw.get(key, {}), **value}
    return raw


def test_training_writes_a_complete_run_directory(tmp_path, capsys):
    recipe = parse_recipe(toy_recipe(tmp_path))
    run = tmp_path / "run"
    res = train_classifier(recipe, run, progress=False)
    for name in ("recipe.yaml", "run.json", "model.safetensors", "normalization.safetensors", "metrics.jsonl",
                 "eval.json", "robustness.json", "confusion.png", "curves.png", "report.md"):  # fmt: skip
        assert (run / name).is_file(), name
    result = json.loads((run / "eval.json").read_text())
    assert result["accuracy"] > 0.8 and result["n"] == 24 and result["labels"] == list(CLASSES)
    assert np.array(result["confusion"]).sum() == 24 and set(result["per_class"]) == set(CLASSES)
    lo, hi = result["accuracy_ci95"]
    assert lo <= result["accuracy"] <= hi
    assert json.loads((run / "run.json").read_text())["classes"] == list(CLASSES)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert res.steps == 4 * 3  # 48 samples in batches of 16
    # The robustness table: both modalities missing two ways, every noise level on each modality and all.
    rob = json.loads((run / "robustness.json").read_text())
    assert set(rob["missing"]) == {"audio", "image"}
    assert all(set(v) == {"zeroed", "dropped"} for v in rob["missing"].values())
    assert set(rob["noise"]) == {"0.5", "2.0"}
    assert all(set(row) == {"audio", "image", "all"} for row in rob["noise"].values())
    assert rob["clean"] == pytest.approx(result["accuracy"])
    assert "## Robustness" in (run / "report.md").read_text()
    # `omnifuse eval` scores a classifier run again (its task's metrics, the same as training's);
    # the verbs for language-model runs refuse it clearly.
    from omnifuse.cli import main

    capsys.readouterr()
    assert main(["eval", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "concat fusion: accuracy" in out and "macro F1" in out and "confusion matrix" in out
    assert json.loads((run / "eval.json").read_text()) == result
    assert main(["chat", str(run), "which class?"]) == 2
    assert "has no language model to load" in capsys.readouterr().err


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    recipe = parse_recipe(toy_recipe(tmp_path, train={"modality_dropout": 0.3}))
    train_classifier(recipe, tmp_path / "straight", progress=False)

    saves = []
    real = clf.save_checkpoint

    def crash_after_two(*args, **kwargs):
        real(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(clf, "save_checkpoint", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_classifier(recipe, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(clf, "save_checkpoint", real)
    with pytest.raises(OmnifuseError, match="--resume"):
        train_classifier(recipe, tmp_path / "resumed", progress=False)
    train_classifier(recipe, tmp_path / "resumed", resume=True, progress=False)
    a, b = (
        load_file(tmp_path / "straight" / "model.safetensors"),
        load_file(tmp_path / "resumed" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "time")}  # noqa: E731
                       for x in p.read_text().splitlines()]  # fmt: skip
    assert strip(tmp_path / "straight" / "metrics.jsonl") == strip(tmp_path / "resumed" / "metrics.jsonl")


def test_dp_sgd_reports_a_finite_epsilon_within_the_target(tmp_path):
    recipe = parse_recipe(toy_recipe(tmp_path, privacy={"target_epsilon": 3.0, "delta": 1e-3}))
    train_classifier(recipe, tmp_path / "run", progress=False)
    privacy = json.loads((tmp_path / "run" / "eval.json").read_text())["privacy"]
    assert math.isfinite(privacy["epsilon"]) and 0 < privacy["epsilon"] <= 3.0
    assert privacy["target_epsilon"] == 3.0 and privacy["delta"] == 1e-3
    eps = [json.loads(x)["epsilon"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(privacy["epsilon"])  # spent grows with every epoch


@pytest.mark.parametrize("fusion", [*FUSIONS, "transformer", "data"])
def test_every_fusion_head_trains_under_dp_sgd(fusion):
    from opacus import PrivacyEngine

    tokens = fusion in ("transformer", "data")
    encoders = {"image": {"type": "pixels", "size": 4}, "audio": {"type": "logmel", "n_mels": 8, "tokens": 4}}
    spec = ClassifierModelSpec.model_validate({"encoders": encoders, "fusion": {"type": fusion}})
    shapes = {"image": (4, 4), "audio": (4, 4)} if tokens else {"image": (6,), "audio": (5,)}
    model = check_private_compatible(build_classifier(spec, shapes, 3), fusion)
    n = 32
    data = torch.utils.data.TensorDataset(torch.randn(n, *shapes["audio"]), torch.randn(n, *shapes["image"]),
                                          torch.randint(0, 3, (n,)))  # fmt: skip
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = PrivacyEngine()
    _, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                                         max_grad_norm=1.0)  # fmt: skip
    for audio, image, y in loader:
        if len(y):
            loss, _ = model.loss({"audio": audio, "image": image}, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and math.isfinite(engine.get_epsilon(1e-5))


class Scaled(nn.Module):
    """A trainable weight beside a buffer, and no per-sample gradient rule: Opacus cannot train it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        return x * self.w


def test_a_head_opacus_cannot_train_is_refused_by_name():
    with pytest.raises(OmnifuseError, match="the odd fusion head cannot be trained with DP-SGD.*Scaled"):
        check_private_compatible(nn.Sequential(nn.Linear(3, 3), Scaled()), "odd")


def test_modality_dropout_never_drops_every_modality():
    g = torch.Generator().manual_seed(0)
    mask = modality_dropout_mask(20000, 2, 0.4, g)
    assert (mask.sum(1) >= 1).all()
    # P(dropped) = p, minus the redraws of both-dropped samples: p − p²/2 = 0.32.
    assert abs(1 - mask.mean().item() - 0.32) < 0.01
    assert torch.equal(modality_dropout_mask(5, 2, 0.0), torch.ones(5, 2))


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda r: r["model"]["fusion"].update(type="magic"),
            ["model.fusion", "'concat'", "'late_stacking'"],
        ),
        (
            lambda r: r["model"].update(features="pooled", fusion={"type": "transformer"}),
            ["fusion transformer reads tokens features, not pooled"],
        ),  # fmt: skip
        (
            lambda r: r["model"]["encoders"].update(audio={"type": "pixels"}),
            ["model.encoders.audio", "reads the image, so name it image"],
        ),  # fmt: skip
        (
            lambda r: r["model"].update(fusion={"type": "data"}),
            ["data-level fusion stacks aligned raw input maps"],
        ),
        (
            lambda r: r["model"].update(fusion={"type": "transformer", "dim": 10, "heads": 4}),
            ["not divisible"],
        ),
        (lambda r: r.update(privacy={"target_epsilon": 0}), ["privacy.target_epsilon"]),
        (lambda r: r.update(task="detect"), ["unknown task 'detect'", "classify"]),
    ],
)
def test_bad_classifier_recipes_name_the_problem(tmp_path, change, expected):
    raw = toy_recipe(tmp_path)
    raw["model"]["encoders"]["image"] = {"type": "mobilenet_v2"}
    change(raw)
    with pytest.raises(OmnifuseError) as info:
        parse_recipe(raw, "bad.yaml")
    for part in expected:
        assert part in str(info.value), (part, str(info.value))


def test_data_without_a_modality_of_the_recipe_is_a_clear_error(tmp_path):
    raw = toy_recipe(tmp_path)
    raw["data"]["train"] = write_toy(tmp_path / "silent", 6, 2, audio=False)
    with pytest.raises(OmnifuseError, match="has 0 audio part.*remove the audio encoder"):
        train_classifier(parse_recipe(raw), tmp_path / "run", progress=False)


def test_eval_answers_unknown_to_training_are_a_clear_error(tmp_path):
    raw = toy_recipe(tmp_path)
    lines = (tmp_path / "eval" / "data.jsonl").read_text().replace('"text": "c"', '"text": "z"')
    (tmp_path / "eval" / "data.jsonl").write_text(lines)
    with pytest.raises(OmnifuseError, match="answers that no training sample has \\('z'\\)"):
        train_classifier(parse_recipe(raw), tmp_path / "run", progress=False)


def test_the_recipe_round_trips_through_the_run_directory(tmp_path):
    recipe = parse_recipe(toy_recipe(tmp_path, privacy={"target_epsilon": 1.0}))
    from omnifuse.recipe import dump_recipe

    assert parse_recipe(yaml.safe_load(dump_recipe(recipe))) == recipe


def test_a_sweep_compares_classifier_variants_and_plots_accuracy_against_epsilon(tmp_path):
    from omnifuse.sweep import load_sweep, run_sweep, write_report

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(toy_recipe(tmp_path)))
    spec = {
        "name": "toy",
        "base": "base.yaml",
        "seeds": [0, 1, 2],
        "variants": [
            {"name": "concat"},
            {"name": "late", "set": ["model.fusion={type: late_average, dim: 8}"]},
            {"name": "dp", "set": ["privacy={target_epsilon: 4.0, delta: 1.0e-3}"]},
        ],
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(tmp_path / "sweep.yaml")
    records = run_sweep(sweep, tmp_path / "out", progress=False)
    assert len(records) == 9 and {r["variant"] for r in records} == {"concat", "late", "dp"}
    for r in records:
        assert 0 <= r["accuracy"] <= 1 and r["training_samples"] == 4 * 48 and r["train_seconds"] > 0
        assert set(r["missing"]) == {"audio", "image"} and "latency_s" not in r
    assert all(0 < r["epsilon"] <= 4.0 for r in records if r["variant"] == "dp")
    rows = write_report(tmp_path / "out", "toy", records, "omnifuse sweep sweep.yaml")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| variant | accuracy (mean ± 95 % CI) | per seed | macro F1 |" in report
    assert "ε spent (target)" in report and "∞ (no DP)" in report and "audio missing" in report
    assert (tmp_path / "out" / "accuracy_vs_epsilon.png").read_bytes()[:4] == b"\x89PNG"
    assert [s.variant for s in rows] == ["concat", "late", "dp"] and rows[2].target_epsilon == 4.0


def test_a_cold_feature_cache_trains_the_same_model_as_a_warm_one(tmp_path):
    raw = toy_recipe(tmp_path)
    raw["model"]["encoders"]["image"] = {"type": "mobilenet_v2", "weights": None, "image_size": 32}
    recipe = parse_recipe(raw)
    train_classifier(recipe, tmp_path / "cold", progress=False)  # builds the encoder: random init drawn
    train_classifier(recipe, tmp_path / "warm", progress=False)  # features from the cache
    a, b = (
        load_file(tmp_path / "cold" / "model.safetensors"),
        load_file(tmp_path / "warm" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
