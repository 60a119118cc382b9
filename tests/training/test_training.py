"""Stages, the loop, checkpoints and exact resume on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import parse_recipe
from omnifuse.training import loop
from omnifuse.training.loop import lr_factor, train
from tiny import make_parts, tiny_recipe_dict


def test_lr_schedule():
    assert lr_factor(0, 10, 2, 0.1) == pytest.approx(0.5)
    assert lr_factor(1, 10, 2, 0.1) == pytest.approx(1.0)
    assert lr_factor(9, 10, 2, 0.0) < 0.05
    assert all(lr_factor(s, 10, 0, 0.1) >= 0.1 - 1e-9 for s in range(10))


def test_train_writes_run_and_reduces_loss(tmp_path, color_data):
    overrides = ["stages.0.steps=12", "stages.0.trainable.llm=full", "stages.0.lr.llm=1e-2"]
    recipe = parse_recipe(tiny_recipe_dict(color_data), overrides=overrides)
    res = train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    run = tmp_path / "run"
    for name in ("recipe.yaml", "run.json", "model.safetensors", "metrics.jsonl", "checkpoint/state.json"):
        assert (run / name).is_file(), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 12 + 4 and res.steps == 16
    first, last = records[0]["loss"], min(r["loss"] for r in records[8:12])
    assert last < first * 0.8, (first, last)
    # Trained fully in stage 0, so the whole LLM is stored (but never the frozen encoder).
    saved = load_file(str(run / "model.safetensors"))
    assert "llm.model.embed_tokens.weight" in saved and not any(k.startswith("encoders.") for k in saved)


def test_resume_continues_exactly(tmp_path, color_data, monkeypatch):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    train(recipe, tmp_path / "full", parts=make_parts(), progress=False)

    real_save = loop.save_checkpoint

    def crash_after(folder, model, names, optimizer, progress, **kw):
        real_save(folder, model, names, optimizer, progress, **kw)
        if (progress["stage"], progress["step"]) == (1, 2):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", crash_after)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "resumed", parts=make_parts(), progress=False)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    train(recipe, tmp_path / "resumed", resume=True, parts=make_parts(), progress=False)

    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    # Only what training changed is stored: the connector and the LoRA adapters.
    assert all(k.startswith("connectors.") or "lora_" in k for k in a) and any("lora_" in k for k in a)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(x)["loss"] for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_existing_run_is_never_overwritten(tmp_path, color_data):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    with pytest.raises(OmnifuseError, match="--resume"):
        train(recipe, run, parts=make_parts(), progress=False)
    assert (run / "notes.txt").read_text() == "keep me"


def test_resume_with_another_recipe_is_refused(tmp_path, color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data))
    train(recipe, tmp_path / "run", parts=make_parts(), progress=False)
    other = parse_recipe(tiny_recipe_dict(color_data), overrides=["stages.1.steps=9"])
    with pytest.raises(OmnifuseError, match="differs"):
        train(other, tmp_path / "run", resume=True, parts=make_parts(), progress=False)


def test_balanced_order_draws_groups_equally():
    from omnifuse.training.loop import sample_order

    groups = [[0, 1, 2, 3, 4, 5, 6, 7], [8], [9, 10]]
    order = sample_order(11, seed=0, stage_index=0, groups=groups)
    drawn = [order(p) for p in range(60)]
    counts = [sum(i in g for i in drawn) for g in groups]
    assert counts == [20, 20, 20]
    assert sorted(drawn[0:24:3]) == groups[0]  # the big group is walked as a permutation
    assert drawn == [sample_order(11, 0, 0, groups)(p) for p in range(60)]  # reproducible


def test_nested_balance_makes_the_answer_uninformative_given_the_prompt():
    from collections import Counter

    from omnifuse.data.sample import Message, Sample, TextPart
    from omnifuse.training.order import balance_groups, sample_order

    def qa(i: int, kind: str, q: str, a: str) -> Sample:
        turns = (Message("user", (TextPart(q),)), Message("assistant", (TextPart(a),)))
        return Sample(f"s{i}", turns, {"kind": kind})

    # the wording predicts the answer: "is there a circle?" is mostly "no", "is there not a circle?" mostly "yes"
    rows = [("yn", "is there a circle?", "no")] * 9 + [("yn", "is there a circle?", "yes")] * 2
    rows += [("yn", "is there not a circle?", "yes")] * 6 + [("yn", "is there not a circle?", "no")]
    rows += [("shape", "what shape?", "circle")] * 5 + [("shape", "what shape?", "square")]
    samples = [qa(i, *r) for i, r in enumerate(rows)]
    groups = balance_groups(samples, ["kind", "prompt", "answer"])
    order = sample_order(len(samples), seed=3, stage_index=1, groups=groups)
    drawn = [samples[order(p)] for p in range(240)]
    kinds = Counter(s.meta["kind"] for s in drawn)
    assert kinds == {"yn": 120, "shape": 120}
    pairs = Counter((s.messages[0].text(), s.answer()) for s in drawn if s.meta["kind"] == "yn")
    assert set(pairs.values()) == {30}  # each (question, answer) a quarter of the yes/no draws
    shapes = Counter(s.answer() for s in drawn if s.meta["kind"] == "shape")
    assert shapes == {"circle": 60, "square": 60}
    again = sample_order(len(samples), seed=3, stage_index=1, groups=groups)
    assert [again(p) for p in range(240)] == [order(p) for p in range(240)]  # a pure function: resumable
    other = sample_order(len(samples), seed=4, stage_index=1, groups=groups)
    assert [other(p) for p in range(240)] != [order(p) for p in range(240)]


def test_balance_by_needs_the_meta_key(tmp_path, color_data):
    recipe = parse_recipe(tiny_recipe_dict(color_data), overrides=["stages.0.balance_by=topic"])
    with pytest.raises(OmnifuseError, match="meta.topic"):
        train(recipe, tmp_path / "run", parts=make_parts(), progress=False)


def test_atomic_writes_keep_normal_permissions_and_leave_no_temp_files(tmp_path):
    import os

    import torch

    from omnifuse.atomic import atomic_write_text
    from omnifuse.models.weights import save_weights

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "<p>hi</p>")
        model = torch.nn.Linear(2, 2)
        save_weights(model, ["weight"], tmp_path / "model.safetensors")
    finally:
        os.umask(umask)
    for name in ("report.html", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "report.html"]
    assert (tmp_path / "report.html").read_text() == "<p>hi</p>"
