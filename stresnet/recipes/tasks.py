"""The recipe tasks the one runner knows: ``classify`` (the default) and ``detect`` (``task: detect``).

A :class:`Task` is everything task-specific: the stages, the state that flows between
them, the run context handed to them, which stages run on every torchrun rank, and
the hooks that shape the results JSON. Adding a task is adding one entry to
:data:`TASKS`; the runner (:mod:`.runner`) does not change.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import RecipeError, stage_list
from .runner import Run, StageState

__all__ = ["Task", "TASKS", "task_of"]

StageFn = Callable[[Any, Any, dict, Path], dict]


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class Task:
    """One recipe task: its stages and the hooks the runner calls (defaults: do nothing)."""

    name: str
    stages: Mapping[str, StageFn]
    state: type[StageState]
    check: Callable[[dict, str], None]
    initial_state: Callable[[dict], StageState]
    header: Callable[[Run, str], dict]
    run_class: type[Run] = Run
    distributed: tuple[str, ...] = ()          # stages that run on every torchrun rank
    stage_label: str = "stage"                 # in "unknown <label> 'x'" errors
    errors: tuple[type[Exception], ...] = ()   # exceptions a stage raises that become "stage <id>: ..." lines
    seconds_digits: int = 3                    # rounding of each stage's ``stage_seconds``
    prepare: Callable[[dict], None] = _nothing                       # before anything is written
    after_stage: Callable[[Run, str, dict, str, dict], None] = _nothing  # (run, arm, arm results, kind, result)
    finish: Callable[[Run, Callable[[str], None]], None] = _nothing
    data_folders: Callable[[dict], list[str]] = field(default=lambda recipe: [str(recipe["data"])])

    def stage_list(self, stages: Any, where: str) -> list[tuple[str, dict]]:
        return stage_list(stages, where, self.stages, self.stage_label)


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
