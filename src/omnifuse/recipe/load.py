"""Load a recipe: YAML → dotted overrides → validated, immutable recipe of the kind its ``task`` names
(absent: a multimodal LLM :class:`Recipe`; ``classify``: a :class:`ClassifierRecipe`; ``align``: an
:class:`AlignRecipe`)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from omnifuse.errors import OmnifuseError
from omnifuse.recipe.align import AlignRecipe
from omnifuse.recipe.classify import ClassifierRecipe
from omnifuse.recipe.components import PLUGIN
from omnifuse.recipe.generate import Recipe
from omnifuse.recipe.plugins import DOCS
from omnifuse.recipe.schema import Spec
from omnifuse.recipe.stages import RecipeDeprecation
from omnifuse.untrusted import parse_yaml, read_yaml

# `task:` at the top of a recipe → its class (absent = generate, the multimodal LLM recipe).
RECIPE_KINDS: dict[str, type[Spec]] = {"generate": Recipe, "classify": ClassifierRecipe, "align": AlignRecipe}


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p != PLUGIN) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid" and PLUGIN in e["ctx"]["expected_tags"]:
            names = e["ctx"]["expected_tags"].replace(f", '{PLUGIN}'", "")
            msg = (
                f"unknown type {e['ctx']['tag']!r}; use one of {names}, or a dotted path to your own class "
                f"(package.module.ClassName, see {DOCS})"
            )
        elif e["type"] == "union_tag_not_found":
            msg = (
                "missing key type: name the component, e.g. type: mlp (or a dotted path to your own class)"
                if isinstance(e.get("input"), dict)
                else "must be a mapping with a type, e.g. {type: mlp}"
            )
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
            lines.append(f"  {loc}: {msg}; remove it or check its spelling (see docs/recipes.md)")
            continue
        got = e.get("input")
        shown = (
            f" (got {got!r})" if e["type"] not in ("missing",) and not isinstance(got, dict | list) else ""
        )
        lines.append(f"  {loc}: {msg}{shown}")
    return f"{source} is not a valid recipe:\n" + "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides to a raw recipe dict (values parsed as YAML scalars/lists)."""
    for item in overrides:
        key, sep, value_text = item.partition("=")
        if not sep or not key:
            raise OmnifuseError(
                f"override {item!r} is not of the form dotted.key=value (e.g. stages.0.steps=20)"
            )
        value = parse_yaml(value_text, f"override {item!r}: the value")
        node: Any = raw
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise OmnifuseError(
                        f"override {item!r}: {where} is not an index of a list of {len(node)} items"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise OmnifuseError(f"override {item!r}: {'.'.join(parts[:depth])} is a value, not a section")
    return raw


def parse_recipe(raw: Any, source: str = "recipe", overrides: Sequence[str] = ()) -> Spec:
    if not isinstance(raw, dict):
        raise OmnifuseError(
            f"{source}: a recipe must be a YAML mapping (key: value), got {type(raw).__name__}"
        )
    raw = apply_overrides(raw, overrides)
    task = raw.get("task", "generate")
    if task not in RECIPE_KINDS:
        raise OmnifuseError(
            f"{source} is not a valid recipe:\n  task: unknown task {task!r}; use one of "
            f"{', '.join(RECIPE_KINDS)} (absent = generate)"
        )
    kind = RECIPE_KINDS[task]
    if kind is Recipe:  # the LLM recipe has no task field: `task: generate` is its default spelled out
        raw = {k: v for k, v in raw.items() if k != "task"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecipeDeprecation)
        try:
            recipe = kind.model_validate(raw)
        except ValidationError as err:
            raise OmnifuseError(_format_errors(source, err)) from None
    for w in caught:  # old spellings: said once per recipe, naming the file rather than our code
        if issubclass(w.category, RecipeDeprecation):
            warnings.warn_explicit(str(w.message), w.category, source, 0)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return recipe


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    path = Path(path)
    if not path.exists():
        raise OmnifuseError(
            f"recipe file {path} does not exist; pass the path of a YAML recipe (`omnifuse ls` lists the shipped ones, `omnifuse cp` copies one)"
        )
    return parse_recipe(read_yaml(path, "recipe"), str(path), overrides)


def dump_recipe(recipe: Spec) -> str:
    """The fully resolved recipe (defaults filled in) as YAML: what a run directory keeps."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
