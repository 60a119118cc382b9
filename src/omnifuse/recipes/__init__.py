"""The recipes and sweep files shipped with omnifuse, installed as package data.

``omnifuse ls`` lists them and ``omnifuse cp NAME DEST`` copies one to start from (torchtune's ``tune ls`` /
``tune cp``). A shipped recipe is named by its path below this folder without ``.yaml``: ``quickstart``,
``classic/av-digits``, ``sweeps/fusion``. The files are plain YAML: nothing here imports the recipe schema;
``omnifuse validate`` checks them (and a test validates every one).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from omnifuse.errors import OmnifuseError

RECIPES_DIR = Path(__file__).resolve().parent
QUICKSTART = RECIPES_DIR / "quickstart.yaml"
SWEEPS = "sweeps"  # the folder of sweep files (`omnifuse sweep`); everything else is a recipe


@dataclass(frozen=True)
class ShippedRecipe:
    name: str  # e.g. "classic/av-digits"
    path: Path
    summary: str  # the first line of the file's leading comment ("" when it has none)

    @property
    def is_sweep(self) -> bool:
        return self.name.startswith(SWEEPS + "/")


def _summary(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            return ""
        text = line.lstrip("#").strip()
        if text and not text.startswith(("omnifuse ", "`omnifuse ")):  # skip "#   omnifuse train ..." lines
            return text
    return ""


def shipped_recipes() -> list[ShippedRecipe]:
    """Every shipped recipe and sweep file, recipes first, each group sorted by name."""
    found = [
        ShippedRecipe(p.relative_to(RECIPES_DIR).with_suffix("").as_posix(), p, _summary(p))
        for p in RECIPES_DIR.rglob("*.yaml")
    ]
    return sorted(found, key=lambda r: (r.is_sweep, r.name))


def shipped_recipe(name: str) -> ShippedRecipe:
    """The shipped recipe called ``name`` (``classic/av-digits``; a trailing ``.yaml`` is allowed)."""
    wanted = name.removesuffix(".yaml").strip("/")
    recipes = {r.name: r for r in shipped_recipes()}
    if wanted in recipes:
        return recipes[wanted]
    close = difflib.get_close_matches(wanted, recipes, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise OmnifuseError(
        f"{name!r} is not a shipped recipe; {hint}`omnifuse ls` lists them (names like 'quickstart', "
        "'classic/av-digits', 'sweeps/fusion')"
    )
