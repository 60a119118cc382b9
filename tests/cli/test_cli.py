"""The command line: help on every verb, and bad input as one clear paragraph (no traceback)."""

from __future__ import annotations

import pytest

from omnifuse.cli import main
from omnifuse.recipes import RECIPES_DIR

QUICKSTART = RECIPES_DIR / "quickstart.yaml"
VERBS = [
    ["train"], ["eval"], ["compare"], ["report"], ["explain"], ["chat"], ["validate"], ["assets"],
    ["assets", "prepare"], ["data", "easy-vqa"], ["data", "spoken-easy-vqa"], ["data", "convert"], ["quickstart"], ["serve"], ["sweep"],
]  # fmt: skip


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_help_on_every_verb(verb, capsys):
    assert main([*verb, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


def test_validate_good_recipe(capsys):
    code, out, _ = run(["validate", str(QUICKSTART)], capsys)
    assert code == 0 and "valid recipe 'quickstart'" in out


def test_validate_bad_recipe(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(QUICKSTART.read_text().replace("type: pool", "type: qformerx"))
    code, _, err = run(["validate", str(bad)], capsys)
    assert code == 2 and "model.connectors.image" in err and "'linear', 'mlp', 'pool'" in err


def test_validate_override_type_error(capsys):
    code, _, err = run(["validate", str(QUICKSTART), "--set", "stages.0.steps=many"], capsys)
    assert code == 2 and "stages.0.steps" in err


def test_eval_missing_run_dir(tmp_path, capsys):
    code, _, err = run(["eval", str(tmp_path / "nope")], capsys)
    assert code == 2 and "does not exist" in err and "omnifuse train" in err


def test_eval_on_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run(["eval", str(tmp_path)], capsys)
    assert code == 2 and "not an omnifuse run directory" in err


def test_debug_shows_traceback(tmp_path, capsys):
    assert main(["--debug", "eval", str(tmp_path / "nope")]) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, says",
    [
        (["frobnicate"], "No such command"),
        (["eval", "--limt", "3", "runs/x"], "No such option: --limt"),
        (["train"], "Missing argument"),
        (["eval", "runs/x", "--limit", "many"], "Invalid value for '--limit'"),
    ],
)
def test_usage_errors_are_usage_errors_not_bugs(argv, says, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2 and says in err and "internal error" not in err


def test_serve_refuses_a_missing_run_and_a_busy_port(tmp_path, capsys):
    import socket

    code, _, err = run(["serve", str(tmp_path / "nope"), "--port", "0"], capsys)
    assert code == 2 and "does not exist" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(["serve", str(tmp_path / "nope"), "--port", str(port)], capsys)
    assert code == 2 and f"127.0.0.1:{port}" in err and "--port" in err


def test_transformers_bars_are_off_under_the_cli():
    # The weight-loading bar of transformers ignored --no-progress; the CLI turns the library's bars off
    # before transformers is imported (a user can still set HF_HUB_DISABLE_PROGRESS_BARS=0).
    import os
    import subprocess
    import sys

    code = (
        "from omnifuse.cli import main; main(['--help']); "
        "from transformers.utils import logging; print(logging.is_progress_bar_enabled())"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("debug", [False, True])
def test_library_warnings_only_with_debug(debug, monkeypatch, capsys):
    # e.g. transformers' FutureWarning on past_key_values during `omnifuse chat`: noise for a user, shown
    # with --debug; omnifuse's own notices (an old recipe spelling) always show, as one line.
    import warnings

    import omnifuse.cli as cli
    from omnifuse.recipe import RecipeDeprecation

    def verb(args, prog_name, standalone_mode):
        warnings.warn("`past_key_values` as a tuple is deprecated", FutureWarning, stacklevel=1)
        warnings.warn(
            "`lr: 1e-3` is an old spelling; write lr: {connectors: 1e-3}", RecipeDeprecation, stacklevel=1
        )
        return 0

    monkeypatch.setattr(cli, "app", verb)
    assert cli.main(["train", *(["--debug"] if debug else [])]) == 0
    err = capsys.readouterr().err
    assert ("past_key_values" in err) == debug
    assert "old spelling" in err
