"""DP-SGD on the generative path (training/privacy.py) with tiny models: it trains, ε falls as the noise
grows, Opacus' per-sample gradients equal a manual one-sample-at-a-time loop, a DP run resumes exactly,
and what cannot be trained privately is refused with one paragraph before training."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from omnifuse.data.sources import load_data
from omnifuse.errors import OmnifuseError
from omnifuse.models.builders import build_model
from omnifuse.models.stages import apply_stage, prepare_lora
from omnifuse.recipe import GenerativePrivacySpec, parse_recipe
from omnifuse.runtime import World
from omnifuse.training import loop, privacy
from omnifuse.training.loop import train
from omnifuse.training.objectives import private_lm_step
from omnifuse.training.parallel import StepModule
from tiny import make_parts, tiny_recipe_dict

PRIVATE = ["privacy={noise_multiplier: 1.0, max_grad_norm: 0.5, delta: 1e-3}"]


def _recipe(data, *overrides):
    return parse_recipe(tiny_recipe_dict(data), overrides=[*PRIVATE, *overrides])


def test_dp_training_runs_and_reports_epsilon_per_stage(tmp_path, color_data):
    res = train(_recipe(color_data), tmp_path / "run", parts=make_parts(), progress=False)
    run = tmp_path / "run"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert res.steps == 8 and len(records) == 8
    eps = [r["epsilon"] for r in records]
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False)) and all("clipped" in r for r in records)
    report = json.loads((run / "privacy.json").read_text())
    assert report["noise_multiplier"] == 1.0 and report["delta"] == 1e-3
    assert [s["stage"] for s in report["stages"]] == ["align", "instruct"]
    assert report["epsilon_spent"] == pytest.approx(eps[-1], rel=1e-4)
    assert report["stages"][1]["epsilon_cumulative"] == pytest.approx(report["epsilon_spent"], rel=1e-3)
    saved = load_file(str(run / "model.safetensors"))
    assert any("lora_A" in k for k in saved) and not any(k.startswith("encoders.") for k in saved)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert sum(h[2] for h in state["privacy"]["history"]) == 8  # JSON, no pickle


def test_more_noise_spends_less_epsilon_and_calibration_hits_the_target():
    plans = [privacy.StagePlan("a", 1000, 10, 100), privacy.StagePlan("b", 1000, 20, 50)]
    eps = [privacy.plan_epsilon(s, plans, 1e-5) for s in (0.6, 0.8, 1.0, 1.5, 3.0)]
    assert all(b < a for a, b in zip(eps, eps[1:], strict=False)), eps
    spec = GenerativePrivacySpec(target_epsilon=2.0)
    sigma = privacy.calibrate(spec, plans)
    assert privacy.plan_epsilon(sigma, plans, 1e-5) == pytest.approx(2.0, abs=0.01)
    assert privacy.plan_epsilon(sigma, plans, 1e-5) <= 2.0


def test_per_sample_gradients_match_a_manual_loop(color_data):
    recipe = _recipe(color_data)
    stage = recipe.stages[1]  # connector (full) + LoRA on the LLM
    model, processor = build_model(recipe.model, progress=False, **make_parts())
    prepare_lora(model, recipe.lora_components(), recipe.lora)
    groups = apply_stage(model, stage, recipe.lora)
    params = [p for g in groups for p in g["params"]]
    samples = load_data(str(color_data))[:4]
    model.train()
    model.encoders.eval()

    manual = []
    for s in samples:  # each sample's backward alone
        for p in params:
            p.grad = None
        private_lm_step(model, processor, [s], stage).loss.backward()
        manual.append([p.grad.detach().clone() for p in params])
        for p in params:
            p.grad = None

    accounting = privacy.Accounting(recipe.privacy, [privacy.StagePlan("instruct", 24, 4, 4)])
    optimizer = torch.optim.AdamW(groups)
    private = privacy.PrivateStage(
        StepModule(model, private_lm_step, processor, stage), optimizer, stage, accounting,
        accounting.plans[0], seed=0, stage_index=1,
    )  # fmt: skip
    try:
        private.backward(samples[:3])  # two micro-batches (batch_size 4 → one of 3, then one of 1)
        private.backward(samples[3:])
        grads = private.per_sample_grads(4)
        assert len(grads) == len(params) > 2
        for k in range(len(params)):
            for i in range(4):
                torch.testing.assert_close(grads[k][i], manual[i][k], atol=1e-6, rtol=1e-4)
        # Clipped and summed as Opacus' DPOptimizer does it: compared with the manual clip.
        clip = recipe.privacy.max_grad_norm
        norms = [torch.sqrt(sum((g**2).sum() for g in m)) for m in manual]
        assert max(norms) > clip  # clipping is exercised
        private.optimizer.clip_and_accumulate()
        for k, p in enumerate(params):
            expected = sum(
                m[k] * min(1.0, clip / (float(n) + 1e-6)) for m, n in zip(manual, norms, strict=True)
            )
            torch.testing.assert_close(p.summed_grad, expected, atol=1e-6, rtol=1e-4)
    finally:
        private.close()
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in params)


def test_a_dp_run_resumes_exactly(tmp_path, color_data, monkeypatch):
    recipe = _recipe(color_data)
    train(recipe, tmp_path / "full", parts=make_parts(), progress=False)
    real_save = loop.save_checkpoint

    def crash_after(folder, model, names, optimizer, progress, **kw):
        real_save(folder, model, names, optimizer, progress, **kw)
        if (progress["stage"], progress["step"]) == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", crash_after)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "resumed", parts=make_parts(), progress=False)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    state_file = tmp_path / "resumed" / "checkpoint" / "state.json"
    good = state_file.read_text()
    state = json.loads(good)
    state["privacy"]["history"] = state["privacy"]["history"][:1]  # an accountant that lost steps
    state_file.write_text(json.dumps(state))
    with pytest.raises(OmnifuseError, match="the ε spent is unknown"):
        train(recipe, tmp_path / "resumed", resume=True, parts=make_parts(), progress=False)
    state_file.write_text(good)
    train(recipe, tmp_path / "resumed", resume=True, parts=make_parts(), progress=False)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    pa = json.loads((tmp_path / "full" / "privacy.json").read_text())
    pb = json.loads((tmp_path / "resumed" / "privacy.json").read_text())
    assert pa["epsilon_spent"] == pb["epsilon_spent"] and pa["history"] == pb["history"]


def _one_paragraph(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message and len(message) > 80


def test_an_unsupported_layer_is_refused_before_training(tmp_path, color_data):
    # The LLM trained fully: its RMSNorm layers have no per-sample gradient rule in Opacus.
    recipe = _recipe(color_data, "stages.0.trainable.llm=full", "stages.0.lr.llm=1e-3")
    with pytest.raises(OmnifuseError, match=r"LlamaRMSNorm.*no per-sample gradient rule") as info:
        train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    _one_paragraph(str(info.value))
    assert (
        not (tmp_path / "run" / "metrics.jsonl").exists()
        or not (tmp_path / "run" / "metrics.jsonl").read_text()
    )


def test_an_unreachable_epsilon_is_refused_before_training(tmp_path, color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data), overrides=["privacy={target_epsilon: 0.05}"])
    with pytest.raises(OmnifuseError, match="out of reach") as info:
        train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    _one_paragraph(str(info.value))
    assert "noise_multiplier" in str(info.value)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_several_processes_are_refused(color_data):
    with pytest.raises(OmnifuseError, match="trains in one") as info:
        privacy.check_launch(_recipe(color_data), World(rank=0, size=2, local_rank=0))
    _one_paragraph(str(info.value))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("runtime.distributed.strategy=fsdp", "shards the parameters"),
        ("stages.0.balance_by=question_type", "Poisson sampling"),
        ("runtime.dtype=bfloat16", "low precision"),
        ("runtime.gradient_checkpointing=[llm]", "record twice"),
        ("privacy={target_epsilon: 1.0, noise_multiplier: 1.0}", "exactly one"),
    ],
)
def test_the_recipe_refuses_what_dp_cannot_train(color_data, override, match):
    with pytest.raises(OmnifuseError, match=match):
        parse_recipe(tiny_recipe_dict(color_data), overrides=[*PRIVATE, override])


def test_auto_and_fast_dtypes_train_privately_in_float32():
    from omnifuse.recipe.runtime import RuntimeSpec
    from omnifuse.training.privacy import private_runtime

    for name in ("auto", "fast"):
        assert private_runtime(RuntimeSpec(dtype=name)).dtype == "float32"
    assert private_runtime(RuntimeSpec(dtype="bfloat16")).dtype == "bfloat16"  # refused by the recipe check
