"""``omnifuse ls`` and ``omnifuse cp``: the recipes shipped with the package, and a copy to start from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from omnifuse.cli import console
from omnifuse.cli.common import app
from omnifuse.cli.render import print_shipped_recipes
from omnifuse.errors import OmnifuseError

# `base: ../quickstart.yaml` / `recipe: ../llava.yaml` in a sweep file: paths relative to the file itself.
_RELATIVE_REF = re.compile(r"^(\s*(?:-\s+)?(?:base|recipe):\s*)(['\"]?)([^'\"\s#]+\.ya?ml)\2", re.M)


@app.command("ls")
def ls() -> None:
    """List the recipes and sweep files shipped with omnifuse (start from one with `omnifuse cp`)."""
    import yaml

    from omnifuse.recipes import RECIPES_DIR, shipped_recipes

    rows = []
    for r in shipped_recipes():
        task = (
            "sweep" if r.is_sweep else (yaml.safe_load(r.path.read_text(encoding="utf-8")) or {}).get("task")
        )
        rows.append((r.name, task or "generate", r.summary))
    print_shipped_recipes(rows, RECIPES_DIR)


@app.command("cp")
def cp(
    recipe: Annotated[str, typer.Argument(help="a shipped recipe's name, as `omnifuse ls` lists it")],
    dest: Annotated[Path, typer.Argument(help="file to write, or an existing folder to write it into")],
) -> None:
    """Copy a shipped recipe or sweep file to DEST to edit it (never overwrites a file)."""
    from omnifuse.atomic import atomic_write_text
    from omnifuse.recipes import shipped_recipe

    shipped = shipped_recipe(recipe)
    target = _target(dest, shipped.path.name)
    text, rewritten = _absolute_refs(shipped.path.read_text(encoding="utf-8"), shipped.path.parent)
    atomic_write_text(target, text)
    console.out.print(f"copied {shipped.name} to {target}")
    if rewritten:
        console.err.print(
            f"the sweep's recipes ({', '.join(rewritten)}) now point at the shipped files by absolute path; "
            "copy those too to change them"
        )


def _target(dest: Path, filename: str) -> Path:
    target = dest / filename if dest.is_dir() else dest
    if target.suffix not in (".yaml", ".yml"):
        target = target.with_name(target.name + ".yaml")
    if target.exists() or target.is_symlink():
        raise OmnifuseError(
            f"{target} exists; omnifuse cp never overwrites a file: delete it or pick another DEST"
        )
    if not target.parent.is_dir():
        what = "is not a folder" if target.parent.exists() else "does not exist"
        raise OmnifuseError(f"cannot write {target}: {target.parent} {what}")
    return target


def _absolute_refs(text: str, folder: Path) -> tuple[str, list[str]]:
    """A sweep file's relative recipe paths, made absolute so that the copy still finds the shipped files."""
    rewritten: list[str] = []

    def absolute(m: re.Match) -> str:
        ref = Path(m.group(3))
        if ref.is_absolute() or not (folder / ref).is_file():
            return m.group(0)
        rewritten.append(m.group(3))
        return f"{m.group(1)}{m.group(2)}{(folder / ref).resolve()}{m.group(2)}"

    return _RELATIVE_REF.sub(absolute, text), rewritten
