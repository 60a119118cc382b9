"""Sweeps on tiny random parts: the runs, the statistics, skipping, resuming and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from omnifuse.cli import main
from omnifuse.errors import OmnifuseError
from omnifuse.sweep import load_sweep, mean_ci, run_sweep, write_report
from omnifuse.sweep import run as sweep_run
from omnifuse.tasks.generate import sweep as generate_sweep
from omnifuse.training import loop
from tiny import make_parts, tiny_recipe_dict


def test_mean_ci_matches_a_hand_computation():
    mean, half = mean_ci([0.5, 0.6, 0.7])
    # t(0.975, df=2) = 4.3027; sd = 0.1; half-width = 4.3027 * 0.1 / sqrt(3)
    assert mean == pytest.approx(0.6) and half == pytest.approx(0.24841, abs=1e-4)
    assert mean_ci([0.8]) == (0.8, 0.0)
    assert mean_ci([0.7, 0.7, 0.7])[1] == 0.0


def test_paired_difference_uses_common_seeds():
    from omnifuse.sweep.report import paired_difference

    mean, half, wins, n = paired_difference({0: 0.8, 1: 0.7, 2: 0.9, 5: 0.1}, {0: 0.6, 1: 0.7, 2: 0.6})
    assert (wins, n) == (2, 3) and mean == pytest.approx((0.2 + 0.0 + 0.3) / 3)
    assert half == pytest.approx(mean_ci([0.2, 0.0, 0.3])[1])
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def write_sweep(tmp_path: Path, color_data: Path, **extra) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_recipe_dict(color_data)))
    spec = {
        "name": "tiny",
        "base": "base.yaml",
        "seeds": [0, 1, 2],
        "eval": {"limit": 12, "latency_samples": 2},
        "variants": [{"name": "mlp"}, {"name": "linear", "set": ["model.connectors.image={type: linear}"]}],
        **extra,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_sweep_trains_every_variant_and_seed_and_compares_them(tmp_path, color_data, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path, color_data))
    out = tmp_path / "out"
    records = run_sweep(sweep, out, progress=False, parts_factory=make_parts)
    # Seed by seed: an interrupted sweep has compared every variant on the first seeds.
    assert [(r["variant"], r["seed"]) for r in records] == [
        ("mlp", 0), ("linear", 0), ("mlp", 1), ("linear", 1), ("mlp", 2), ("linear", 2)
    ]  # fmt: skip
    for r in records:
        assert (out / r["variant"] / f"seed-{r['seed']}" / "eval.json").is_file()
        assert 0.0 <= r["accuracy"] <= 1.0 and r["n_eval"] == 12 and r["latency_s"] > 0
        assert r["training_samples"] == 4 * 4 + 4 * 4 * 2  # steps × batch × accumulation, both stages
        steps = (out / r["variant"] / f"seed-{r['seed']}" / "metrics.jsonl").read_text().splitlines()
        assert r["train_seconds"] == pytest.approx(sum(json.loads(x)["seconds"] for x in steps), abs=0.01)
    by = {r["variant"]: r for r in records}
    assert by["linear"]["trainable_params"] < by["mlp"]["trainable_params"]  # + the same LoRA adapters
    assert by["mlp"]["image_tokens"] == {"image": 16}
    # Seeds change the data order and initialisation: the three mlp runs are not copies of each other.
    losses = {
        json.loads((out / "mlp" / f"seed-{s}" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        for s in (0, 1, 2)
    }
    assert len(losses) == 3

    rows = write_report(out, "tiny", records, "omnifuse sweep sweep.yaml")
    summary = json.loads((out / "summary.json").read_text())
    assert [v["variant"] for v in summary["variants"]] == ["mlp", "linear"]
    mean, ci = mean_ci([r["accuracy"] for r in records if r["variant"] == "mlp"])
    assert rows[0].accuracy == pytest.approx(mean) and rows[0].ci == pytest.approx(ci)
    report = (out / "report.md").read_text()
    assert "| mlp |" in report and "accuracy_vs_params.png" in report
    assert "Paired differences against `mlp`" in report and "| linear |" in report
    for png in ("accuracy_vs_params.png", "accuracy_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Run again: everything is finished, nothing trains.
    monkeypatch.setattr(
        generate_sweep, "train", lambda *a, **k: pytest.fail("a finished run was trained again")
    )
    again = run_sweep(sweep, out, progress=False, parts_factory=make_parts)
    assert again == records


def test_an_interrupted_run_resumes(tmp_path, color_data, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path, color_data, seeds=[0], allow_few_seeds=True))
    out = tmp_path / "out"
    real_save = loop.save_checkpoint

    def crash(folder, model, names, optimizer, progress, **kw):
        real_save(folder, model, names, optimizer, progress, **kw)
        if "linear" in str(folder) and (progress["stage"], progress["step"]) == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, out, progress=False, parts_factory=make_parts)
    assert [r["variant"] for r in sweep_run.read_results(out)] == ["mlp"]  # the finished run was kept
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    records = run_sweep(sweep, out, progress=False, parts_factory=make_parts)
    assert [(r["variant"], r["resumed"]) for r in records] == [("mlp", False), ("linear", True)]
    metrics = (out / "linear" / "seed-0" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 8  # the steps of both attempts, each once


def test_a_run_of_another_recipe_is_never_overwritten(tmp_path, color_data):
    path = write_sweep(tmp_path, color_data, seeds=[0], allow_few_seeds=True, variants=[{"name": "mlp"}])
    out = tmp_path / "out"
    run_sweep(load_sweep(path), out, progress=False, parts_factory=make_parts)
    weights = (out / "mlp" / "seed-0" / "model.safetensors").read_bytes()
    changed = write_sweep(tmp_path, color_data, seeds=[0], allow_few_seeds=True,
                          variants=[{"name": "mlp", "set": ["stages.1.steps=5"]}])  # fmt: skip
    with pytest.raises(OmnifuseError, match="another recipe"):
        run_sweep(load_sweep(changed), out, progress=False, parts_factory=make_parts)
    assert (out / "mlp" / "seed-0" / "model.safetensors").read_bytes() == weights


def test_budget_mismatch_names_the_variants_and_counts(tmp_path, color_data):
    sweep = load_sweep(write_sweep(tmp_path, color_data, budget={"samples": 48},
                                   variants=[{"name": "mlp"}, {"name": "long", "set": ["stages.1.steps=8"]}]))  # fmt: skip
    with pytest.raises(OmnifuseError, match=r"long: 80 .*steps × batch_size × grad_accum"):
        run_sweep(sweep, tmp_path / "out", progress=False, parts_factory=make_parts)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_grid_expands_to_one_variant_per_combination(tmp_path, color_data):
    sweep = load_sweep(write_sweep(tmp_path, color_data, variants=[],
                                   grid={"stages.1.lr.connectors": [0.001, 0.002], "lora.r": [2, 4]}))  # fmt: skip
    names = [v.name for v in sweep.variants]
    assert names == [
        "connectors=0.001,r=2",
        "connectors=0.001,r=4",
        "connectors=0.002,r=2",
        "connectors=0.002,r=4",
    ]
    assert (
        sweep.variants[3].recipe.lora.r == 4 and sweep.variants[3].recipe.stages[1].lr["connectors"] == 0.002
    )


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"seeds": [0, 1]}, "at least 3 seeds"),
        ({"seeds": [0, 0, 1]}, "distinct"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"variants": [{"name": "x", "set": ["stages.0.stepz=3"]}]}, "variant 'x'"),
        ({"colour": 1}, "colour: unknown key"),
    ],
)
def test_bad_sweeps_are_refused_clearly(tmp_path, color_data, extra, needle):
    with pytest.raises(OmnifuseError, match=needle):
        load_sweep(write_sweep(tmp_path, color_data, **extra))


def test_cli_plan_and_errors(tmp_path, color_data, capsys):
    path = write_sweep(tmp_path, color_data)
    assert main(["sweep", str(path), "--plan", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "mlp" in err and "linear" in err and "48" in err
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and "Traceback" not in captured.err


def test_finished_runs_are_matched_as_recipes_not_text(color_data):
    from omnifuse.recipe import dump_recipe, parse_recipe

    recipe = parse_recipe(tiny_recipe_dict(color_data))
    raw = yaml.safe_load(dump_recipe(recipe))
    raw["model"].pop("tiling")  # written before an optional field existed: the same recipe
    assert sweep_run._same_recipe(yaml.safe_dump(raw), recipe)
    raw["stages"][0]["steps"] = 99
    assert not sweep_run._same_recipe(yaml.safe_dump(raw), recipe)
    assert not sweep_run._same_recipe("{not: [valid", recipe) and not sweep_run._same_recipe(None, recipe)


@pytest.mark.parametrize(
    "line, says",
    [("[1, 2]", "a JSON list, not an object"), ('{"variant": "mlp", "seed": "0"}', "seed"), ("{", "line 1")],
)
def test_a_damaged_results_file_is_named_not_a_crash(tmp_path, line, says):
    (tmp_path / "results.jsonl").write_text(line + "\n")
    with pytest.raises(OmnifuseError, match="sweep results") as exc:
        sweep_run.read_results(tmp_path)
    assert says in str(exc.value) and "delete the damaged lines" in str(exc.value)
