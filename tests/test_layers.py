"""The layer contract (pyproject.toml, [tool.importlinter]) holds for omnifuse, and it can fail: the same
layers over a fixture package with one import that runs back up make `lint-imports` exit non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(config: Path, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def layers_contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract


def test_omnifuse_keeps_its_layers():
    res = lint_imports(ROOT / "pyproject.toml", ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


def test_every_top_level_module_has_a_layer():
    declared = {
        name.strip().strip("()")
        for line in layers_contract()["layers"]
        for part in line.split("|")
        for name in part.split(":")
    }
    package = ROOT / "src" / "omnifuse"
    present = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert present <= declared, f"not placed in a layer: {sorted(present - declared)}"


def _fixture_package(root: Path, wrong_import: tuple[str, str] | None) -> Path:
    """A package ``layered`` with one empty module per layer of omnifuse's contract (a layer
    ``training`` → ``layered/training/__init__.py``), and optionally one import from ``importer`` to
    ``imported``; returns the config that applies omnifuse's layers to it."""
    contract = layers_contract()
    pkg = root / "layered"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for line in contract["layers"]:
        for part in line.split("|"):
            for name in part.split(":"):
                (pkg / name.strip().strip("()")).mkdir()
                (pkg / name.strip().strip("()") / "__init__.py").write_text("")
    if wrong_import is not None:
        importer, imported = wrong_import
        (pkg / importer / "__init__.py").write_text(f"import layered.{imported}  # runs back up\n")
    config = root / "layers.toml"
    layers = ",\n".join(f'  "{line}"' for line in contract["layers"])
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["layered"]\n\n[[tool.importlinter.contracts]]\n'
        f'name = "omnifuse layers"\ntype = "layers"\ncontainers = ["layered"]\nexhaustive = true\n'
        f"layers = [\n{layers}\n]\n"
    )
    return config


def test_the_fixture_package_alone_keeps_the_contract(tmp_path):
    res = lint_imports(_fixture_package(tmp_path, None), tmp_path, pythonpath=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("encoders", "training"),  # a component reaching for the training loop
        ("processing", "models"),  # what IGNORE_INDEX once did
        ("models", "generation"),
        ("training", "tasks"),
        ("serve", "sweep"),  # independent siblings
    ],
)
def test_an_import_that_runs_back_up_breaks_the_contract(tmp_path, importer, imported):
    res = lint_imports(_fixture_package(tmp_path, (importer, imported)), tmp_path, pythonpath=tmp_path)
    assert res.returncode != 0, res.stdout
    assert "BROKEN" in res.stdout and f"layered.{importer} -> layered.{imported}" in res.stdout, res.stdout


def test_the_architecture_doc_lists_the_layers_of_the_contract():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("## Layers", 1)[1].split("```", 2)[1]
    listed = [line.split("  ")[0].strip() for line in section.strip().splitlines()]
    assert listed == layers_contract()["layers"]
