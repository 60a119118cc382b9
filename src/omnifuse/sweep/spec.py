"""Sweep files: variants of a recipe compared on the same data, seeds and (optionally) budget.

::

    name: fusion
    base: ../quickstart.yaml          # the recipe variants start from (paths relative to this file)
    seeds: [0, 1, 2]                  # every variant trains once per seed (at least 3)
    set: ["stages.1.steps=200"]       # overrides applied to every variant
    eval: {data: easy-vqa:test, limit: 500}
    budget: {samples: 2400}           # optional: every variant must see exactly this many training samples
    variants:
      - {name: pooled-mlp}                                  # the base as it is
      - {name: perceiver, set: ["model.connectors.image={type: perceiver, num_latents: 8}"]}
      - {name: flamingo, recipe: ../flamingo.yaml}
    grid: {"stages.1.lr.connectors": [5.0e-4, 1.0e-3]}     # optional: one variant per value combination
"""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from omnifuse.errors import OmnifuseError
from omnifuse.recipe import Recipe, load_recipe
from omnifuse.untrusted import read_yaml

MIN_SEEDS = 3


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantSpec(_Spec):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.=+-]*$", description="also its folder name")
    recipe: str | None = Field(None, description="recipe file (relative to the sweep file); default: base")
    set: list[str] = Field(default_factory=list, description="dotted overrides for this variant")


class SweepEvalSpec(_Spec):
    data: str | None = Field(None, description="default: each recipe's eval data")
    limit: int | None = Field(None, ge=1, description="seeded subset size; default: each recipe's eval_limit")
    latency_samples: int = Field(20, ge=1, description="samples timed one at a time for inference latency")


class BudgetSpec(_Spec):
    samples: int = Field(ge=1, description="training samples every variant must see (steps × batch × accum)")


class SweepSpec(_Spec):
    name: str
    base: str | None = None
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    allow_few_seeds: bool = Field(False, description="permit fewer than 3 seeds (smoke runs only)")
    set: list[str] = Field(default_factory=list)
    eval: SweepEvalSpec = SweepEvalSpec()
    budget: BudgetSpec | None = None
    variants: list[VariantSpec] = Field(default_factory=list)
    grid: dict[str, list] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        if len(self.seeds) < MIN_SEEDS and not self.allow_few_seeds:
            raise ValueError(
                f"a comparison needs at least {MIN_SEEDS} seeds for a confidence interval (got {len(self.seeds)}); "
                "add seeds, or set allow_few_seeds: true for a smoke run"
            )
        if not self.variants and not self.grid:
            raise ValueError("list variants, a grid, or both")
        if any(not values for values in self.grid.values()):
            raise ValueError("every grid key needs at least one value")
        if (
            self.variants and any(v.recipe is None for v in self.variants) or self.grid
        ) and self.base is None:
            raise ValueError("variants without their own recipe, and grids, need a base recipe")
        return self


class Variant:
    """One resolved variant: its name and its recipe without the seed (the runner sets that)."""

    def __init__(self, name: str, recipe: Recipe) -> None:
        self.name, self.recipe = name, recipe

    def with_seed(self, seed: int) -> Recipe:
        return self.recipe.model_copy(update={"seed": seed})


class Sweep:
    def __init__(self, spec: SweepSpec, folder: Path, overrides: list[str] | None = None) -> None:
        self.spec, self.folder, self.overrides = spec, folder, list(overrides or [])
        # Every variant's recipe is resolved now: a bad one fails before hours of training.
        self.variants = self._resolve()

    def _resolve(self) -> list[Variant]:
        spec = self.spec
        entries = [(v.name, v.recipe, v.set) for v in spec.variants]
        keys = list(spec.grid)
        for combo in itertools.product(*(spec.grid[k] for k in keys)) if keys else ():
            sets = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                    for k, v in zip(keys, combo, strict=True)]  # fmt: skip
            name = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, combo, strict=True))
            entries.append((name, None, sets))
        names = [e[0] for e in entries]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise OmnifuseError(
                f"sweep {spec.name!r}: variant names must be unique ({', '.join(dupes)} repeat)"
            )
        out = []
        for name, recipe_ref, sets in entries:
            path = self.folder / (recipe_ref or spec.base or "")
            overrides = [*spec.set, *sets, *self.overrides]
            eval_sets = []
            if spec.eval.data is not None:
                eval_sets.append(f"data.eval={spec.eval.data}")
            if spec.eval.limit is not None:
                eval_sets.append(f"data.eval_limit={spec.eval.limit}")
            try:
                recipe = load_recipe(path, [*overrides, *eval_sets])
            except OmnifuseError as exc:
                raise OmnifuseError(f"sweep {spec.name!r}, variant {name!r}: {exc}") from None
            out.append(Variant(name, recipe))
        return out


def parse_sweep(raw: object, source: str, folder: Path, overrides: list[str] | None = None) -> Sweep:
    if not isinstance(raw, dict):
        raise OmnifuseError(f"{source} must hold a YAML mapping (name, base, seeds, variants, ...)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}")
        raise OmnifuseError(f"{source} is not a valid sweep:\n" + "\n".join(lines)) from None
    return Sweep(spec, folder, overrides)


def load_sweep(path: Path, overrides: list[str] | None = None) -> Sweep:
    path = Path(path)
    raw = read_yaml(path, "sweep file")
    return parse_sweep(raw, str(path), path.resolve().parent, overrides)
