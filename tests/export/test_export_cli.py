"""`omnifuse export` refuses bad input with one paragraph (exit 2, no traceback, nothing half-written),
replaces an existing folder only with --force, and reports an unreachable hub as such."""

from __future__ import annotations

import shutil

import pytest

from omnifuse.cli import main


def _err(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())


def _export(run, out, *extra) -> int:
    fmt = [] if "--format" in extra else ["--format", "llm"]
    return main(["export", str(run), "--out", str(out), "--no-progress", *fmt, *extra])


def test_hf_is_the_default_format(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    assert main(["export", str(run), "--out", str(tmp_path / "x"), "--no-progress"]) == 0
    assert f"as hf to {tmp_path / 'x'}" in " ".join(capsys.readouterr().out.split())
    card = (tmp_path / "x" / "README.md").read_text()
    assert "import omnifuse.hf" in card and "--format hf" in card


def test_unknown_format_is_refused(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    assert _export(run, tmp_path / "x", "--format", "onnx") == 2
    err = _err(capsys)
    assert "unknown export format 'onnx'; choose one of hf, llava, llm" in err
    assert "import omnifuse.hf" in err
    assert not (tmp_path / "x").exists()


def test_unknown_dtype_is_refused(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    assert _export(run, tmp_path / "x", "--dtype", "int4") == 2
    assert "--dtype 'int4' is not one of float32, bfloat16, float16" in _err(capsys)


def test_unknown_shard_size_is_refused(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    assert _export(run, tmp_path / "x", "--max-shard-size", "big") == 2
    assert "--max-shard-size 'big' is not a size such as 500MB" in _err(capsys)


@pytest.mark.parametrize("fmt", ["hf", "llm"])
def test_run_without_weights_is_refused(cnn_run, tmp_path, capsys, fmt):
    run, _ = cnn_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    (broken / "model.safetensors").unlink()
    assert _export(broken, tmp_path / "x", "--format", fmt) == 2
    assert "holds no trained weights yet" in _err(capsys)
    assert not (tmp_path / "x").exists()


def test_missing_run_is_refused(tmp_path, capsys):
    assert _export(tmp_path / "nope", tmp_path / "x") == 2
    assert "does not exist; train one with" in _err(capsys)


@pytest.mark.parametrize("fmt", ["hf", "llm"])
def test_non_empty_out_needs_force(cnn_run, tmp_path, capsys, fmt):
    run, _ = cnn_run
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export(run, out, "--format", fmt) == 2
    err = _err(capsys)
    assert "already exists and is not empty" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "mine"
    assert _export(run, out, "--format", fmt, "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_out_that_is_a_file_is_refused(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    (tmp_path / "file").write_text("x")
    assert _export(run, tmp_path / "file") == 2
    assert "is a file; give a folder" in _err(capsys)


def test_unreachable_hub_is_one_paragraph(cnn_run, tmp_path, capsys, monkeypatch):
    run, _ = cnn_run
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without a hub, without waiting for a timeout
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "pushed"
    assert _export(run, out, "--format", "llm", "--push-to-hub", "me/tiny") == 2
    err = _err(capsys)
    assert "could not push" in err and "me/tiny" in err and f"complete in {out}" in err
    assert (out / "config.json").is_file()  # the export itself stays


@pytest.mark.parametrize("fmt", ["llava"])
def test_format_that_does_not_fit_is_refused_before_loading(cnn_run, tmp_path, capsys, fmt):
    run, _ = cnn_run
    assert _export(run, tmp_path / "x", "--format", fmt) == 2
    err = _err(capsys)
    assert "encoders.image (mobilenet_v2" in err and "--format llm" in err
    assert not (tmp_path / "x").exists()


def test_hf_needs_lora_merged(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    assert _export(run, tmp_path / "x", "--format", "hf", "--no-merge-lora") == 2
    err = _err(capsys)
    assert "--format hf stores the LoRA adapters merged" in err and "--format llm --no-merge-lora" in err
    assert not (tmp_path / "x").exists()


def test_run_with_damaged_weights_is_refused(cnn_run, tmp_path, capsys):
    run, _ = cnn_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    assert _export(broken, tmp_path / "x", "--format", "hf") == 2
    assert "model.safetensors changed since training finished" in _err(capsys)
    assert not (tmp_path / "x").exists()
