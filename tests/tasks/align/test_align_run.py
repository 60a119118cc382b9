"""``task: align`` recipes: validation errors, and every method end to end on a tiny synthetic
image–audio set (weight-free encoders: pixels and log-mel) into a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from PIL import Image
from safetensors.torch import load_file

from omnifuse.cli import main
from omnifuse.errors import OmnifuseError
from omnifuse.recipe import parse_recipe
from omnifuse.tasks.align.run import train_align

RATE = 16_000


def write_av_set(folder: Path, per_class: int, seed: int) -> Path:
    """4 classes: a bright block in quadrant k of a noisy 12×12 image, paired with a noisy tone of
    300·(k+1) Hz; the answer is the class."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(4 * per_class):
        k = i % 4
        img = rng.normal(0.3, 0.1, (12, 12))
        r, c = divmod(k, 2)
        img[6 * r : 6 * r + 6, 6 * c : 6 * c + 6] += 0.5
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.png")
        t = np.arange(int(0.25 * RATE)) / RATE
        wave = 0.5 * np.sin(2 * np.pi * 300 * (k + 1) * t + rng.uniform(0, 6)) + rng.normal(0, 0.05, t.size)
        sf.write(folder / f"{i}.wav", wave.astype(np.float32), RATE)
        content = [{"type": "image", "image": f"{i}.png"}, {"type": "audio", "audio": f"{i}.wav"}]
        lines.append(
            {
                "id": f"s{i}",
                "messages": [
                    {"role": "user", "content": content},
                    {"role": "assistant", "content": [{"type": "text", "text": str(k)}]},
                ],
            }
        )
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture(scope="module")
def av_set(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("av")
    return write_av_set(root / "train", 24, seed=0), write_av_set(root / "test", 8, seed=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))


def recipe_dict(method: dict, train: Path, test: Path, **train_args) -> dict:
    return {
        "task": "align",
        "name": f"tiny-{method['type']}",
        "seed": 0,
        "method": method,
        "model": {
            "encoders": {"image": {"type": "pixels", "size": 12}, "audio": {"type": "logmel", "n_mels": 16}},
        },
        "data": {"train": str(train), "eval": str(test)},
        "train": {"epochs": 40, "batch_size": 32, "lr": 3e-3, **train_args},
    }


METHODS = [
    {"type": "clip", "dim": 16, "hidden": 32},
    {"type": "clip", "dim": 16, "hidden": 32, "positives": "pair"},
    {"type": "siglip", "dim": 16, "hidden": 32},
    {"type": "cca", "components": 3, "pca": 16},
    {"type": "dcca", "dim": 3, "hidden": 32},
    {"type": "cycle", "latent": 8, "hidden": 32},
]


@pytest.mark.parametrize(
    "method", METHODS, ids=lambda m: "-".join(str(v) for k, v in m.items() if k in ("type", "positives"))
)
def test_every_method_writes_a_run_and_beats_chance(method, av_set, tmp_path):
    recipe = parse_recipe(recipe_dict(method, *av_set))
    result = train_align(recipe, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("recipe.yaml", "model.safetensors", "eval.json", "report.md", "metrics.jsonl"):
        assert (run / name).is_file(), name
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation == json.loads(json.dumps(result.evaluation))
    assert evaluation["gallery"] == {"image": 32, "audio": 32}  # no two inputs identical here
    for direction in ("image_to_audio", "audio_to_image"):
        r, chance = evaluation["retrieval"][direction], evaluation["chance"][direction]
        assert chance["R@1"] == pytest.approx(8 / 32)  # a class has 8 of the 32 items
        assert r["R@1"] > chance["R@1"] + 0.3, (direction, r)
    weights = load_file(str(run / "model.safetensors"))
    assert "normalize.image.mean" in weights and "normalize.audio.std" in weights
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    if method["type"] == "cca":
        assert (
            metrics == []
            and "cca.x_rotations" in weights
            and len(evaluation["canonical_correlations"]["eval"]) == 3
        )
    else:
        assert [m["epoch"] for m in metrics] == list(range(1, 41)) and (run / "loss.png").is_file()
        assert metrics[-1]["loss"] < metrics[0]["loss"]
    if method["type"] == "cycle":
        assert all(0 < v < 1 for v in evaluation["translation_relative_mse"].values())
        # The key-means oracle: within-class spread over total spread, also below 1.
        assert all(0 < v < 1 for v in evaluation["translation_relative_mse_key_means"].values())


def test_cli_trains_an_align_recipe_and_refuses_an_existing_run(av_set, tmp_path, capsys):
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(METHODS[0], *av_set), sort_keys=False))
    assert main(["validate", str(path)]) == 0
    assert (
        "valid alignment recipe 'tiny-clip'; method clip, image (pixels) ↔ audio (logmel)"
        in capsys.readouterr().out
    )
    out = tmp_path / "run"
    assert main(["train", str(path), "--out", str(out), "--tensorboard"]) == 2
    assert "--tensorboard is for LLM recipes" in capsys.readouterr().err and not out.exists()
    assert main(["train", str(path), "--out", str(out), "--no-progress", "--set", "train.epochs=2"]) == 0
    assert "image to audio R@1/5/10" in capsys.readouterr().out
    assert main(["train", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds files" in err and "Traceback" not in err


def bad(change) -> str:
    raw = recipe_dict({"type": "clip"}, Path("a.jsonl"), Path("b.jsonl"))
    change(raw)
    with pytest.raises(OmnifuseError) as exc:
        parse_recipe(raw, "r.yaml")
    return str(exc.value)


def test_bad_align_recipes_give_clear_errors():
    msg = bad(lambda r: r["method"].update(type="clipp"))
    assert "method" in msg and "'clip', 'siglip', 'cca', 'dcca', 'devise', 'cycle'" in msg
    msg = bad(lambda r: r["model"]["encoders"].update(text={"type": "minilm"}))
    assert "alignment pairs exactly two" in msg
    msg = bad(lambda r: r["model"]["encoders"].update(sound=r["model"]["encoders"].pop("audio")))
    assert "model.encoders.sound" in msg and "name it audio" in msg
    msg = bad(lambda r: r.update(method={"type": "dcca", "dim": 64}))
    assert "train.batch_size (32) must exceed method.dim (64)" in msg
    msg = bad(lambda r: r.update(method={"type": "devise", "heldout": ["3"]}))
    assert "needs one text encoder" in msg
    msg = bad(lambda r: r.update(method={"type": "devise"}))
    assert "method.devise.heldout: Field required" in msg
    msg = bad(lambda r: r["train"].update(epoch=3))
    assert "train.epoch: unknown key" in msg
    msg = bad(lambda r: r.update(task="aling"))
    assert "unknown task 'aling'" in msg and "align" in msg


def test_devise_needs_held_out_classes_that_exist(av_set, tmp_path):
    from omnifuse.assets import get_asset, is_installed

    if not is_installed(get_asset("all-minilm-l6-v2")):
        pytest.skip("needs the packaged MiniLM")
    raw = recipe_dict({"type": "devise", "heldout": ["7"]}, *av_set, epochs=2)
    raw["model"] = {"encoders": {"image": {"type": "pixels", "size": 12}, "text": {"type": "minilm"}},
                    "normalize": {"text": "none"}}  # fmt: skip
    with pytest.raises(OmnifuseError, match=r"\['7'\] have no sample in data.eval.*there are: 0, 1, 2, 3"):
        train_align(parse_recipe(raw), tmp_path / "bad", progress=False)
    raw["method"]["heldout"] = ["3"]
    result = train_align(parse_recipe(raw), tmp_path / "run", progress=False)
    z = result.evaluation["zero_shot"]
    assert z["n"] == 8 and z["chance_all"] == 0.25 and z["chance_heldout_only"] == 1.0
    assert z["zero_shot_accuracy_heldout_only"] == 1.0  # one candidate
    assert result.evaluation["seen_classes"]["n"] == 24
    assert result.evaluation["n_train_pairs"] == 72  # the 24 training pairs of class 3 left out
    assert "Zero-shot on 8 eval samples" in (tmp_path / "run" / "report.md").read_text()
