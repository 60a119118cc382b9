"""Tasks: one per kind of work a recipe declares (``task:`` — generate, classify, align), each owning how
its model is built, trained, evaluated, reloaded and described (:class:`Task`, in ``base.py``).

The registry maps the recipe class (``recipe.RECIPE_KINDS`` maps the YAML string to it, the only string
dispatch) to its task; ``train``, ``eval``, ``validate``, ``compare``, ``sweep`` and the loading verbs ask
:func:`task_for` / :func:`task_of_run` once instead of testing recipe classes. A plugin adds its own
kind with :func:`register`.
"""

from __future__ import annotations

from typing import Any

from omnifuse.recipe import AlignRecipe, ClassifierRecipe, Recipe
from omnifuse.rundir import RunDir
from omnifuse.tasks.align import ALIGN
from omnifuse.tasks.base import Registry, Task
from omnifuse.tasks.classify import CLASSIFY
from omnifuse.tasks.generate import GENERATE

TASKS = Registry()
TASKS.register(Recipe, GENERATE)
TASKS.register(ClassifierRecipe, CLASSIFY)
TASKS.register(AlignRecipe, ALIGN)


def register(recipe_class: type, task: Task) -> None:
    """Make ``task`` the one for recipes of ``recipe_class``."""
    TASKS.register(recipe_class, task)


def task_for(recipe: Any) -> Task:
    return TASKS.of(recipe)


def task_of_run(run: RunDir) -> Task:
    """The task of a run directory (by its recipe.yaml), after checking training finished intact."""
    return task_for(run.require_trained().recipe())


def load_language_model(
    run: RunDir,
    progress: bool = True,
    parts: dict | None = None,
    device: str | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
):
    """``(recipe, model, processor)`` of a run with a language model (chat, explain, report, serve), on
    ``device`` in ``dtype``, its LLM quantised as ``quantize`` says (None: the recipe's ``runtime``
    section); a classifier or alignment run is refused with what to do instead."""
    return task_of_run(run).load_language_model(
        run, progress=progress, parts=parts, device=device, dtype=dtype, quantize=quantize
    )


__all__ = ["TASKS", "Task", "load_language_model", "register", "task_for", "task_of_run"]
