"""One runner for every recipe task: stage folders with ``stage.json``, ``--resume``, arms, torchrun, results JSON.

A task (:mod:`.tasks`) supplies its stages, its state (what flows between stages), its
run context and a few hooks; this module owns the loop. Every finished stage writes
``<out_root>/<name>/[<arm>/]<id>/stage.json`` (result, state, provenance); with
``resume`` finished stages are skipped. The results JSON is rewritten after every
stage, so a run that stops early keeps what it measured. Under ``torchrun`` the
task's distributed stages run on every rank and the others on rank 0 only.
"""
from __future__ import annotations

import copy
import json
import os
import shlex
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..utils.io import atomic_write_json
from ..utils.provenance import data_fingerprint, provenance, utc_now
from .config import RecipeError, shared_dir, stage_list

__all__ = ["Run", "StageState", "Task", "run_task", "command_line", "portable"]


class StageState:
    """Base of a task's state dataclass: what flows from stage to stage, saved in every ``stage.json``."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass
class Run:
    """One run of a recipe: where it writes, what it measured so far; tasks subclass it with their helpers."""

    recipe: dict
    run_dir: Path
    results_path: Path
    resume: bool = False
    progress: bool = True
    results: dict = field(default_factory=dict)
    rank: int = 0
    world: int = 1
    started: str = ""
    t0: float = 0.0
    data_prints: list = field(default_factory=list)
    arm: str = ""  # the arm whose stages are running ('' for a recipe without arms)

    def arm_results(self) -> dict:
        """What the running arm measured so far (the whole results of a recipe without arms)."""
        return self.results["arms"][self.arm] if self.arm else self.results

    def provenance(self, started: str | None = None, seconds: float | None = None) -> dict:
        """This run's provenance (:mod:`stresnet.utils.provenance`); a stage passes its own start and seconds."""
        return provenance(started or self.started, time.perf_counter() - self.t0 if seconds is None else seconds,
                          checkpoint=self.recipe.get("base", {}).get("checkpoint"), data=self.data_prints)

    def save_results(self) -> None:
        if self.rank == 0:
            self.results["provenance"] = self.provenance()
            atomic_write_json(self.results_path, portable(self.results))



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


def portable(value: Any) -> Any:
    """Paths in committed results, machine-independent: relative to the current folder, ``${shared}/...``,
    ``~/...``."""
    if isinstance(value, str):
        for prefix, short in ((str(Path.cwd()) + os.sep, ""), (str(shared_dir()), "${shared}"),
                              (str(Path.home()), "~")):
            if value.startswith(prefix):
                return short + value[len(prefix):]
        return value
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    return value


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _run_arm(task: "Task", run: Run, arm: str, stages: list[tuple[str, dict]], log: Callable[[str], None],
             selected: bool = True, until: str | None = None) -> None:
    """Run one arm's stages; an arm not ``selected`` (``--arms``) only reports the stages it finished earlier;
    ``until``: stop after the stage of that id (the rest runs later with ``resume``)."""
    state = task.initial_state(run.recipe)
    run.arm = arm
    arm_dir = run.run_dir / arm if arm else run.run_dir
    rows: list[dict] = []
    arm_results: dict = {"stages": rows}
    if arm:
        run.results.setdefault("arms", {})[arm] = arm_results
    else:
        run.results.update(arm_results)
        arm_results = run.results
    for kind, params in stages:
        sid = params.pop("id", kind)
        out = arm_dir / sid
        done = out / "stage.json"
        label = f"{arm}/{sid}" if arm else sid
        if run.resume and done.is_file():
            saved = json.loads(done.read_text())
            result, state = saved["result"], task.state(**saved["state"])
            log(f"[{label}] done earlier: skipped (--resume)")
        elif not selected:
            break
        else:
            started, t0 = utc_now(), time.perf_counter()
            log(f"[{label}] running")
            if kind in task.distributed or run.rank == 0:
                try:
                    result = task.stages[kind](run, state, dict(params), out)
                except task.errors as e:
                    raise RecipeError(f"stage {sid}: {e}") from None
                seconds = time.perf_counter() - t0
                result["stage_seconds"] = round(seconds, task.seconds_digits)
            if run.rank == 0:
                atomic_write_json(done, {"result": result, "state": state.to_dict(),
                                         "provenance": run.provenance(started, seconds)})
            _barrier()
            if run.rank != 0:
                saved = json.loads(done.read_text())
                result, state = saved["result"], task.state(**saved["state"])
        rows.append({"id": sid, "type": kind, "params": params, "result": result})
        task.after_stage(run, arm, arm_results, kind, result)
        run.save_results()
        if sid == until:
            break


def run_task(task: Task, recipe: dict, out_root: str | Path, results_path: str | Path, resume: bool = False,
               progress: bool = True, command: str | None = None, log: Callable[[str], None] = print,
               arms: Sequence[str] | None = None, until: str | None = None) -> dict:
    """Run every stage (of every arm, or of the ``arms`` named) of a loaded recipe into ``out_root/<name>``;
    return the results dict, also written to ``results_path`` after every stage.

    Arms not named keep, with ``resume``, what they finished earlier, so that one comparison can be run arm
    by arm into one results file. ``until``: every arm stops after its stage of that id (a stage id no arm has
    is an error), e.g. the cheap zero-shot half of a comparison first, its fine-tunes later with ``resume``."""
    from ..utils.distributed import cleanup_distributed, dist_info, setup_distributed

    listed = recipe["arms"] if "arms" in recipe else {"": recipe["stages"]}
    unknown = [a for a in arms or () if a not in listed or not a]
    if unknown:
        raise RecipeError(f"recipe {recipe['_path']}: no arm {unknown[0]!r} (arms: {', '.join(listed) or 'none'})")
    if until is not None and not any(p.get("id", k) == until for stages in listed.values()
                                     for k, p in task.stage_list(copy.deepcopy(stages), "stages")):
        raise RecipeError(f"recipe {recipe['_path']}: no stage with id {until!r} to stop after")
    task.prepare(recipe)
    run_dir = Path(out_root) / recipe["name"]
    results_path = Path(results_path)
    _, own_pg = setup_distributed()
    rank, world = dist_info()
    if rank == 0 and run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise RecipeError(f"run folder {run_dir} already holds a run: pass --resume to continue it "
                          f"(or --out elsewhere); nothing was overwritten")
    _barrier()
    run = task.run_class(recipe, run_dir, results_path, resume, progress and rank == 0, rank=rank, world=world,
                         started=utc_now(), t0=time.perf_counter())
    run.data_prints = [data_fingerprint(p) for p in task.data_folders(recipe)] if rank == 0 else []
    cmd = command or f"stresnet recipe run {recipe['_path']}"
    run.results = {**task.header(run, cmd), "provenance": None}  # filled by every save
    say = log if rank == 0 else (lambda _: None)
    restored: set[str] = set()
    if arms is not None:  # every arm's finished stages first, so that a run stopped early loses none of them
        earlier = json.loads(results_path.read_text()).get("arms", {}) if results_path.is_file() else {}
        for arm, stages in listed.items():
            _run_arm(task, run, arm, task.stage_list(copy.deepcopy(stages), arm or "stages"), lambda _: None,
                     selected=False)
            if arm not in arms and not run.results["arms"][arm]["stages"] and (earlier.get(arm) or {}).get("stages"):
                run.results["arms"][arm] = earlier[arm]  # finished in another run folder (another machine)
                restored.add(arm)
    for arm, stages in listed.items():
        if arm not in restored:
            _run_arm(task, run, arm, task.stage_list(copy.deepcopy(stages), arm or "stages"), say,
                     selected=arms is None or arm in arms, until=until)
    run.save_results()
    _barrier()
    if rank != 0 and results_path.is_file():  # rank 0 ran the eval stages: every rank returns its results
        run.results = json.loads(results_path.read_text())
    cleanup_distributed(own_pg)
    task.finish(run, say)
    return run.results


def command_line(argv: Sequence[str]) -> str:
    """The exact command to quote in results and cards."""
    return " ".join(shlex.quote(a) for a in argv)
