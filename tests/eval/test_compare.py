"""`omnifuse compare RUN_A RUN_B` on synthetic run folders (predictions.jsonl only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from omnifuse.cli import app, console, main
from omnifuse.errors import OmnifuseError


def write_run(folder, correct, types=None, ids=None):
    folder.mkdir(parents=True)
    ids = ids or [f"q{i}" for i in range(len(correct))]
    types = types or ["all"] * len(correct)
    lines = [
        {"id": i, "question_type": t, "answer": "x", "prediction": "x" if c else "y", "correct": bool(c)}
        for i, t, c in zip(ids, types, correct, strict=True)
    ]
    (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


@pytest.fixture
def wide_console(monkeypatch):
    monkeypatch.setattr(console, "out", Console(soft_wrap=True, width=220))


def two_runs(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    a = rng.random(n) < 0.6
    b = a | (rng.random(n) < 0.5)  # B fixes about half of A's errors and breaks nothing
    types = ["color" if i % 2 else "shape" for i in range(n)]
    order = rng.permutation(n)  # B's file lists the samples in another order: pairing is by id
    ids = [f"q{i}" for i in range(n)]
    write_run(tmp_path / "a", a.tolist(), types, ids)
    write_run(tmp_path / "b", [bool(b[i]) for i in order], [types[i] for i in order], [ids[i] for i in order])
    return a, b, types


def test_compare_json(tmp_path):
    a, b, types = two_runs(tmp_path)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["n"] == 400 and s["mean_a"] == pytest.approx(a.mean()) and s["mean_b"] == pytest.approx(b.mean())
    assert s["difference"] == pytest.approx(b.mean() - a.mean())
    assert 0 < s["ci"][0] < s["difference"] < s["ci"][1] and s["p_value"] < 0.001
    assert s["only_a"] == 0 and s["only_b"] == int((~a & b).sum())
    assert set(s["per_type"]) == {"color", "shape"}
    color = np.array([t == "color" for t in types])
    assert s["per_type"]["color"]["mean_a"] == pytest.approx(a[color].mean())
    assert s["per_type"]["shape"]["n"] == 200


def test_compare_table(tmp_path, wide_console):
    a, b, _ = two_runs(tmp_path)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for header in ("accuracy A", "accuracy B", "B − A, points [95 % CI]", "only A right", "only B right"):
        assert header in text
    assert f"{100 * a.mean():.1f} %" in text and f"{100 * b.mean():.1f} %" in text
    assert f"{100 * (b.mean() - a.mean()):+.1f} [" in text
    assert all(t in text for t in ("all", "color", "shape")) and "< 0.001" in text


def test_identical_runs(tmp_path):
    write_run(tmp_path / "a", [1, 0, 1, 1])
    write_run(tmp_path / "b", [1, 0, 1, 1])
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    s = json.loads(result.stdout)
    assert s["difference"] == 0 and s["p_value"] == 1.0 and s["ci"] == [0.0, 0.0]
    assert s["per_type"] == {}  # one question type: the overall row says it all


def test_different_samples_are_refused(tmp_path):
    write_run(tmp_path / "a", [1, 0, 1], ids=["q1", "q2", "q3"])
    write_run(tmp_path / "b", [1, 0, 1, 1], ids=["q1", "q2", "q4", "q5"])
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert isinstance(result.exception, OmnifuseError)
    msg = str(result.exception)
    assert "1 ids only in" in msg and "2 only in" in msg and "omnifuse eval" in msg and "same data" in msg


def test_missing_predictions_say_to_run_eval(tmp_path, capsys):
    write_run(tmp_path / "a", [1])
    (tmp_path / "b").mkdir()
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "no predictions.jsonl" in err and f"omnifuse eval {tmp_path / 'b'}" in err
    code = main(["compare", str(tmp_path / "a"), str(tmp_path / "nope")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_malformed_and_duplicate_records(tmp_path, capsys):
    write_run(tmp_path / "a", [1, 0])
    b = write_run(tmp_path / "b", [1, 0], ids=["q0", "q0"])
    assert main(["compare", str(tmp_path / "a"), str(b)]) == 2
    assert "appears twice" in capsys.readouterr().err
    (b / "predictions.jsonl").write_text('{"id": "q0"}\n')
    assert main(["compare", str(tmp_path / "a"), str(b)]) == 2
    err = capsys.readouterr().err
    assert "predictions.jsonl line 1" in err and "correct is missing" in err


def test_partial_credit_scores_are_compared(tmp_path):
    # VQAv2-style records carry a score; right/wrong counts only make sense for 0/1 scores
    for name, scores in (("a", [0.3, 0.6, 1.0]), ("b", [0.9, 0.6, 1.0])):
        folder = tmp_path / name
        folder.mkdir()
        lines = [{"id": f"q{i}", "correct": s == 1.0, "score": s} for i, s in enumerate(scores)]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    s = json.loads(result.stdout)
    assert s["difference"] == pytest.approx(0.2) and "only_a" not in s
