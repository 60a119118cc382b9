"""The classic fusion pipeline on a small slice of the real av-digits with the real MobileNetV2 and
log-mel features: fusion beats each modality alone."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from omnifuse.audio.tts import espeak_available
from omnifuse.cli import main
from omnifuse.data.av_digits import export_av_digits
from omnifuse.models import features
from omnifuse.recipes import RECIPES_DIR

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng")]
RECIPE = str(RECIPES_DIR / "classic" / "av-digits.yaml")


def test_av_digits_slice_trains_and_reports(tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Weights from the prepared asset cache; this slice's features in a folder of its own.
    monkeypatch.setattr(features, "features_cache_dir", lambda: tmp_path / "features")
    files = export_av_digits(tmp_path / "avd", progress=False, limit=400)
    common = [f"data.train={files['train']}", f"data.eval={files['test']}", "train.epochs=30"]
    accuracies = {}
    for name, extra in {
        "fused": [],
        "image": [
            "model.encoders={image: {type: mobilenet_v2, image_size: 64, crop: false}}",
            "model.normalize={}",
        ],
        "audio": ["model.encoders={audio: {type: logmel}}", "model.normalize={}"],
    }.items():
        args = ["train", RECIPE, "--out", str(tmp_path / name), "--no-progress"]
        assert main([*args, *(x for s in [*common, *extra] for x in ("--set", s))]) == 0
        accuracies[name] = json.loads((tmp_path / name / "eval.json").read_text())["accuracy"]
    torch.set_num_threads(threads)
    assert accuracies["fused"] > max(accuracies["image"], accuracies["audio"]), accuracies
    assert yaml.safe_load((tmp_path / "fused" / "recipe.yaml").read_text())["task"] == "classify"
    assert (tmp_path / "fused" / "robustness.json").is_file()
