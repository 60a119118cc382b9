"""An alignment run honours ``runtime.device`` / ``runtime.dtype``: nothing is created off the model's
device (the meta-device check of tests/runtime/test_placement.py), bf16 autocast trains on the CPU as well
as float32, and a GPU this machine lacks is refused with one paragraph."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from omnifuse.cli import main
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.align import methods, zero_shot
from omnifuse.tasks.align.run import evaluate_align_run, train_align
from tasks.align.test_align_eval import _close
from tasks.align.test_align_run import recipe_dict, write_av_set
from tasks.classify.test_classifier_placement import NO_SUCH_GPU, error_paragraph

METHODS = [
    {"type": "clip", "dim": 8, "hidden": 16},
    {"type": "siglip", "dim": 8, "hidden": 16},
    {"type": "cca", "components": 3, "pca": 12},
    {"type": "dcca", "dim": 3, "hidden": 16},
    {"type": "cycle", "latent": 6, "hidden": 16},
]
DEVISE = {"type": "devise", "heldout": ["3"]}


@pytest.fixture(scope="module")
def av_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("av")
    return write_av_set(root / "train", 8, seed=0), write_av_set(root / "test", 4, seed=1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIFUSE_CACHE", str(tmp_path / "cache"))


def _raw(method: dict, av_set, **runtime) -> dict:
    raw = recipe_dict(method, *av_set, epochs=4, batch_size=16) | {"runtime": {"device": "cpu", **runtime}}
    if method["type"] == "devise":
        from omnifuse.assets import get_asset, is_installed

        if not is_installed(get_asset("all-minilm-l6-v2")):
            pytest.skip("needs the packaged MiniLM")
        raw["model"] = {"encoders": {"image": {"type": "pixels", "size": 12}, "text": {"type": "minilm"}},
                        "normalize": {"text": "none"}}  # fmt: skip
    return raw


def _built_on_the_cpu(monkeypatch) -> None:
    """Modules are built with torch's default device (as every nn.Module is) and then placed: build them
    on the CPU, so that under a meta default device only what training and evaluation create is meta."""
    for owner in (
        methods.DualEncoderMethod,
        methods.DeepCCAMethod,
        methods.CycleMethod,
        zero_shot.DeViSEMethod,
    ):
        build = owner._build

        def on_cpu(*args, _build=build, **kwargs):
            with torch.device("cpu"):
                return _build(*args, **kwargs)

        monkeypatch.setattr(owner, "_build", on_cpu)


def _files(run) -> tuple[dict, list[dict], str]:
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    return (
        json.loads((run / "eval.json").read_text()),
        [json.loads(x) for x in metrics],
        (run / "predictions.jsonl").read_text(),
    )


@pytest.mark.parametrize("method", [*METHODS, DEVISE], ids=lambda m: m["type"])
def test_training_and_eval_create_nothing_off_the_model_device(method, av_set, tmp_path, monkeypatch):
    """Pairs, key ids, shuffled orders, labels, class embeddings, retrieval scores: a tensor made without
    a device would be a meta tensor here and fail (or, read as garbage, change the scores, compared)."""
    _built_on_the_cpu(monkeypatch)
    recipe = parse_recipe(_raw(method, av_set))
    train_align(
        recipe, tmp_path / "plain", progress=False
    )  # fills the feature cache (see the extraction test)
    with torch.device("meta"):
        train_align(recipe, tmp_path / "meta", progress=False)
        assert _files(tmp_path / "meta") == _files(tmp_path / "plain")
        again = evaluate_align_run(RunDir(tmp_path / "meta"), progress=False)  # restored and placed
    assert _close(json.loads(json.dumps(again)), _files(tmp_path / "plain")[0])  # CCA: float32 storage


@pytest.mark.parametrize("method", [METHODS[0], METHODS[3], METHODS[4]], ids=lambda m: m["type"])
def test_bf16_autocast_trains_as_well_as_float32_on_the_cpu(method, av_set, tmp_path):
    """``--dtype bfloat16`` on the CPU: forward passes under bf16 autocast (deep CCA's covariances and
    eigendecompositions in float32), the stored weights float32. Loss per epoch within 0.02 of float32,
    the score (mean R@1) within 0.1; measured on this CPU, 4 epochs: loss within 2.7e-3 (clip), 3.6e-3
    (dcca), 1.8e-4 (cycle), the scores equal (1.0, 0.9375, 0.5625)."""
    from safetensors.torch import load_file

    from omnifuse.tasks.align.evaluation import score

    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        runs[dtype] = train_align(parse_recipe(_raw(method, av_set, dtype=dtype)), out, progress=False)
        runs[dtype + " losses"] = [
            json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
        ]
    ref, got = runs["float32"].evaluation, runs["bfloat16"].evaluation
    diff = max(abs(a - b) for a, b in zip(runs["float32 losses"], runs["bfloat16 losses"], strict=True))
    print(method["type"], "max loss diff", diff, "score", score(ref), score(got))
    assert diff < 0.02 and abs(score(ref) - score(got)) <= 0.1 and score(got) > 0.4
    weights = load_file(str(tmp_path / "bfloat16" / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_cli_refuses_a_gpu_this_machine_lacks_in_one_paragraph(av_set, tmp_path, capsys):
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(METHODS[0], *av_set), sort_keys=False))
    code = main(
        ["train", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--device", NO_SUCH_GPU]
    )
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code != 0 and "Traceback" not in text and "internal error" not in text, text
    message = error_paragraph(captured.err)
    assert message and "\n\n" not in message and NO_SUCH_GPU in message, captured.err
    assert not (tmp_path / "run").exists()
