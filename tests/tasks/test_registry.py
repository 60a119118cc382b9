"""The task registry: one task per recipe kind, each satisfying the Task protocol."""

from __future__ import annotations

import pytest

from omnifuse.recipe import RECIPE_KINDS
from omnifuse.tasks import TASKS, Task, register, task_for
from omnifuse.tasks.base import Registry, TableData, percent


def test_every_recipe_kind_has_its_task():
    assert set(TASKS.tasks) == set(RECIPE_KINDS.values())
    for name, recipe_class in RECIPE_KINDS.items():
        task = TASKS.tasks[recipe_class]
        assert isinstance(task, Task) and task.name == name
        assert task.score_name and task.group_name and task.sweep_columns


def test_a_plugin_registers_its_own_task_and_a_non_task_is_refused():
    class MyRecipe:
        pass

    class MyTask:
        name, score_name, group_name, sweep_columns = "mine", "score", "group", ()

        def describe(self, recipe): ...
        def train(self, recipe, out, **kw): ...
        def evaluate(self, run, request): ...
        def report(self, run, samples, explained, progress): ...
        def load_language_model(self, run, progress=True, parts=None): ...
        def training_samples(self, recipe): ...
        def plan(self, recipe): ...
        def sweep_run(self, recipe, job): ...

    registry = Registry(dict(TASKS.tasks))
    registry.register(MyRecipe, MyTask())
    assert registry.of(MyRecipe()).name == "mine"
    with pytest.raises(TypeError, match="does not satisfy"):
        registry.register(MyRecipe, object())
    with pytest.raises(LookupError, match="no task is registered for str"):
        registry.of("a string")
    assert register is not None and task_for is not None


def test_printout_helpers():
    assert percent(0.857, (0.835, 0.878)) == "85.7 % [83.5, 87.8]" and percent(0.5) == "50.0 %"
    table = TableData("t", ("a", "b"), (("1", "2"),))
    assert table.left == (0,)


def test_the_registry_imports_without_torch():
    """`validate` asks the registry for a recipe's task: that must not load torch (seconds)."""
    import subprocess
    import sys

    code = (
        "import sys; import omnifuse.tasks; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
