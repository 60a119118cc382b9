from omnifuse.recipe.load import dump_recipe, load_recipe, parse_recipe
from omnifuse.recipe.schema import AlignRecipe, ClassifierRecipe, Recipe, StageSpec

__all__ = [
    "AlignRecipe",
    "ClassifierRecipe",
    "Recipe",
    "StageSpec",
    "dump_recipe",
    "load_recipe",
    "parse_recipe",
]
