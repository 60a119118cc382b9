from omnifuse.recipe.load import dump_recipe, load_recipe, parse_recipe
from omnifuse.recipe.schema import Recipe, StageSpec

__all__ = ["Recipe", "StageSpec", "dump_recipe", "load_recipe", "parse_recipe"]
