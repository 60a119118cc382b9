"""`omnifuse serve` checks its options before it loads the model: one paragraph, exit 2, in a second."""

from __future__ import annotations

import socket

import pytest

from omnifuse import tasks
from omnifuse.cli import main
from omnifuse.errors import OmnifuseError


@pytest.fixture
def no_loading(monkeypatch):
    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(tasks, "load_language_model", load_model)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--port", "70000"], "--port 70000: a TCP port is a number from 1 to 65535 (or 0 for any free one)"),
        (["--port", "-1"], "--port -1: a TCP port"),
        (["--port", "65536"], "--port 65536: a TCP port"),
        (
            ["--log-level", "chatty"],
            "--log-level 'chatty': choose one of critical, error, warning, info, debug",
        ),
        (["--host", "no-such-host.invalid"], "not an address of this machine"),
        (["--device", "tpu"], "--device: device 'tpu' is not one of auto, cpu, cuda"),
        (["--dtype", "int8"], "--dtype: dtype 'int8' is not one of auto, fast, float32, bfloat16, float16"),
        (["--device", "cpu", "--dtype", "float16"], "float16 training and inference run on CUDA GPUs only"),
    ],
)
def test_bad_options_fail_before_the_model_loads(tmp_path, capsys, no_loading, args, needle):
    code = main(["serve", str(tmp_path), *args])
    captured = capsys.readouterr()
    assert code == 2, captured
    text = " ".join((captured.err + captured.out).split())  # rich wraps long lines
    assert needle in text and "Traceback" not in text


def test_log_level_is_case_insensitive(tmp_path, capsys, monkeypatch):
    loaded = []

    def load_model(*args, **kwargs):
        loaded.append(1)
        raise OmnifuseError("stop here")

    monkeypatch.setattr(tasks, "load_language_model", load_model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["serve", str(tmp_path), "--log-level", "WARNING", "--port", str(port)]) == 2
    assert loaded == [1] and "stop here" in capsys.readouterr().err
