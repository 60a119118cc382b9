"""`omnifuse report` and `omnifuse explain` draw progress bars on stderr, and `--no-progress` turns them off
(a tiny trained run; the model comes from the tiny parts instead of the packaged assets)."""

from __future__ import annotations

import pytest

from omnifuse.cli import main
from omnifuse.eval.runner import evaluate_run
from omnifuse.recipe import parse_recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.generate.load import load_model
from omnifuse.training.loop import train
from tiny import make_parts, tiny_recipe_dict, write_color_dataset


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    data = write_color_dataset(root / "colors")
    train(parse_recipe(tiny_recipe_dict(data)), root / "run", parts=make_parts(), progress=False)
    run = RunDir(root / "run")
    loaded = load_model(run, progress=False, parts=make_parts())
    evaluate_run(run, progress=False, loaded=loaded)  # report needs eval.json
    return run, loaded, data


@pytest.fixture
def tiny_loaded(tiny_run, monkeypatch):
    import omnifuse.tasks
    import omnifuse.tasks.generate.load

    run, loaded, data = tiny_run
    monkeypatch.setattr(omnifuse.tasks, "load_language_model", lambda run, progress=True, **_: loaded)
    monkeypatch.setattr(
        omnifuse.tasks.generate.load, "load_model", lambda run, progress=True, **_: loaded
    )  # report
    return run, data


@pytest.mark.parametrize("flag, shown", [([], True), (["--no-progress"], False)])
def test_report_shows_a_bar_for_the_explained_samples(tiny_loaded, flag, shown, capsys):
    run, _ = tiny_loaded
    assert main(["report", str(run.path), "--samples", "2", "--explain", "2", *flag]) == 0
    err = capsys.readouterr().err
    assert ("explaining samples" in err) is shown, err


@pytest.mark.parametrize("flag, shown", [([], True), (["--no-progress"], False)])
def test_explain_shows_a_bar(tiny_loaded, flag, shown, tmp_path, capsys):
    from PIL import Image

    run, _ = tiny_loaded
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    argv = [
        "explain",
        str(run.path),
        "what color is it?",
        "--image",
        str(image),
        "--out",
        str(tmp_path / "ex"),
    ]
    assert main([*argv, *flag]) == 0
    err = capsys.readouterr().err
    assert ("explaining" in err) is shown, err
