"""`omnifuse --version`, `ls`, `cp` (and its refusals), `validate` on a sweep file, `--debug` in `--help`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from omnifuse import __version__
from omnifuse.cli import main
from omnifuse.recipes import QUICKSTART, RECIPES_DIR, shipped_recipe, shipped_recipes


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.out, captured.err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"omnifuse {__version__}"


def test_debug_and_version_are_in_the_help(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "--debug" in out and "--version" in out and " ls " in out and " cp " in out


def test_python_m_omnifuse_is_the_same_command_line():
    done = subprocess.run([sys.executable, "-m", "omnifuse", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"omnifuse {__version__}"


def test_recipes_are_package_data_inside_the_package():
    import omnifuse

    assert RECIPES_DIR.parent == Path(omnifuse.__file__).resolve().parent
    names = {r.name for r in shipped_recipes()}
    assert {"quickstart", "llava", "classic/av-digits", "align/captions-clip", "sweeps/fusion"} <= names
    assert QUICKSTART == shipped_recipe("quickstart").path == shipped_recipe("quickstart.yaml").path


def test_ls_lists_every_shipped_recipe_with_its_task(capsys, monkeypatch):
    from rich.console import Console

    from omnifuse.cli import console

    monkeypatch.setattr(console, "out", Console(soft_wrap=True, width=200))
    code, out, _ = run(["ls"], capsys)
    assert code == 0
    lines = {
        line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if "│" in line
    }
    for r in shipped_recipes():
        assert r.name in lines
    assert lines["quickstart"] == "generate" and lines["classic/av-digits"] == "classify"
    assert lines["align/captions-clip"] == "align" and lines["sweeps/fusion"] == "sweep"


def test_cp_copies_a_recipe_that_validates(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    code, out, _ = run(["cp", "quickstart", str(dest)], capsys)
    assert code == 0 and dest.read_text() == QUICKSTART.read_text() and str(dest) in out
    code, out, _ = run(["validate", str(dest)], capsys)
    assert code == 0 and "valid recipe 'quickstart'" in out
    # into a folder, under the shipped file's name; a name without .yaml gets it
    assert run(["cp", "classic/av-digits", str(tmp_path)], capsys)[0] == 0
    assert (tmp_path / "av-digits.yaml").read_text() == shipped_recipe("classic/av-digits").path.read_text()
    assert run(["cp", "llava", str(tmp_path / "l")], capsys)[0] == 0 and (tmp_path / "l.yaml").is_file()


def test_cp_of_a_sweep_keeps_finding_its_recipes(tmp_path, capsys):
    code, _, err = run(["cp", "sweeps/stages", str(tmp_path)], capsys)
    assert code == 0 and "absolute path" in err
    copied = yaml.safe_load((tmp_path / "stages.yaml").read_text())
    assert copied["base"] == str(RECIPES_DIR / "llava.yaml") or (RECIPES_DIR / copied["base"]).is_file()
    code, out, _ = run(["validate", str(tmp_path / "stages.yaml")], capsys)
    assert code == 0 and "a sweep file" in out


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["cp", "quickstrt", "x.yaml"],
            ["'quickstrt' is not a shipped recipe", "did you mean 'quickstart'", "omnifuse ls"],
        ),
        (["cp", "nothing-like-it", "x.yaml"], ["not a shipped recipe", "omnifuse ls"]),
        (["cp", "quickstart", "{tmp}/no/such/folder/x.yaml"], ["does not exist"]),
        (["cp", "quickstart", "{tmp}/file.txt/x.yaml"], ["is not a folder"]),
    ],
)
def test_cp_refuses_with_one_clear_paragraph(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    code, _, err = run([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 2 and all(s in err for s in says), err
    assert not (tmp_path / "x.yaml").exists()


def test_cp_never_overwrites(tmp_path, capsys):
    dest = tmp_path / "mine.yaml"
    dest.write_text("my edits\n")
    code, _, err = run(["cp", "quickstart", str(dest)], capsys)
    assert code == 2 and "exists" in err and "never overwrites" in err
    assert dest.read_text() == "my edits\n"
    (tmp_path / "quickstart.yaml").write_text("mine too\n")
    assert run(["cp", "quickstart", str(tmp_path)], capsys)[0] == 2
    assert (tmp_path / "quickstart.yaml").read_text() == "mine too\n"


def test_validate_on_a_sweep_file_checks_it_as_a_sweep(tmp_path, capsys):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"name: tiny\nbase: {QUICKSTART}\nseeds: [0, 1, 2]\nbudget: {{samples: 3840}}\n"
        "variants:\n  - {name: as-is}\n  - {name: short, set: [stages.1.steps=300]}\n"
    )
    code, _, err = run(["validate", str(sweep)], capsys)
    # checked as a sweep (its budget), not refused as a recipe with unknown keys
    assert (
        code == 2 and "fixes the budget at 3840" in err and "short: 3200" in err and "unknown key" not in err
    )
    sweep.write_text(sweep.read_text().replace("budget: {samples: 3840}\n", ""))
    code, out, _ = run(["validate", str(sweep)], capsys)
    assert code == 0 and "a sweep file" in out and "'tiny'" in out and "2 variants" in out
    sweep.write_text(sweep.read_text().replace("stages.1.steps=300", "stages.1.stepz=300"))
    code, _, err = run(["validate", str(sweep)], capsys)
    assert code == 2 and "variant 'short'" in err and "stages.1.stepz" in err


def test_every_shipped_recipe_is_in_the_package_data():
    # a wheel (not an editable install) carries only what pyproject's package-data globs match
    root = Path(__file__).resolve().parents[2]
    pyproject = (root / "pyproject.toml").read_text()
    line = re.search(r"^\[tool\.setuptools\.package-data\]\nomnifuse = \[(.*)\]$", pyproject, re.M)
    globs = re.findall(r'"([^"]+)"', line.group(1))
    package = root / "src" / "omnifuse"
    shipped = {p for g in globs for p in package.glob(g)}
    assert {r.path for r in shipped_recipes()} <= shipped
