"""The recipe tasks the one runner knows: ``classify`` (the default) and ``detect`` (``task: detect``).

A :class:`~stresnet.recipes.runner.Task` is everything task-specific: the stages, the state that flows between
them, the run context handed to them, which stages run on every torchrun rank, and
the hooks that shape the results JSON. Adding a task is adding one entry to
:data:`TASKS`; the runner (:mod:`.runner`) does not change.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .config import RecipeError, read_recipe
from .runner import Task, run_task

__all__ = ["TASKS", "task_of", "load_recipe", "run_recipe"]

def _classify() -> Task:
    from .stages import classify

    return classify.TASK


def _detect() -> Task:
    from .stages import detect

    return detect.TASK


TASKS: dict[str, Callable[[], Task]] = {"classify": _classify, "detect": _detect}


def task_of(recipe: Mapping[str, Any], source: str) -> Task:
    """The task a recipe names (``task:``, default ``classify``); one line naming it when unknown."""
    name = str(recipe.get("task", "classify"))
    if name not in TASKS:
        raise RecipeError(f"{source}: unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]()


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """Read, override (``key.sub=value``), substitute variables and check a recipe (its task's checks too)."""
    recipe = read_recipe(path, overrides)
    task_of(recipe, str(path)).check(recipe, str(path))
    return recipe


def run_recipe(recipe: dict, out_root: str | Path, results_path: str | Path, **kwargs: Any) -> dict:
    """Run a loaded recipe with its task (:func:`stresnet.recipes.runner.run_task` says how)."""
    return run_task(task_of(recipe, recipe["_path"]), recipe, out_root, results_path, **kwargs)
