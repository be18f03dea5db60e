"""Deprecated path (until the next release): moved to repvit.train.recipe."""

from .train.recipe import (
                           DEIT_REGNETY160_URL,
                           PER_RUN_KEYS,
                           Recipe,
                           RecipeError,
                           TrainRecipe,
                           load_recipe,
                           option,
                           recipe_names,
)
from .utils.deprecation import warn_moved

__all__ = ["DEIT_REGNETY160_URL", "PER_RUN_KEYS", "Recipe", "RecipeError", "TrainRecipe", "load_recipe",
           "option", "recipe_names"]

warn_moved("repvit.recipe", "repvit.train.recipe")
