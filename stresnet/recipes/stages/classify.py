"""The classification task (the default): a timm/zoo base compressed by plans, on an ImageFolder.

Stages (``stresnet recipe run``; see the package docstring for the YAML):

``train_base``  train the base from random init (label-smoothed CE, no teacher)
``search``      CompressNAS: estimator tables + ILP at ``budget``; sets the plan
``plan``        a fixed plan: ``file`` or a family ``variant``; or ``uniform: {step: 4}``,
                the smallest uniform-rank plan with at least the current plan's params
``lrs_plan``    an LR+S (``method: lrs``) or magnitude-pruning (``method: prune``) plan with the
                current (Tucker-2) plan's total params (``over: base``: prune the unmodified base)
``reinit``      random init (timm's, seeded) of the current architecture (the from-scratch arms)
``admm``        ADMM rank-constrained training of the dense weights towards the plan
``decompose``   apply the plan to the dense weights; zero-shot top-1
``finetune``    KD fine-tune of the current model (``sparsity``: gradual pruning; ``teacher: none``)
``eval``        top-1/top-5 on val, params, MACs, int8 flash and peak RAM
``publish``     a Hub-ready folder, its sha256 in the zoo registry, the local Hub cache
``reference``   the results of another recipe (its fine-tune config must equal ``expect_finetune``)
"""
from __future__ import annotations

from pathlib import Path

from ..config import RecipeError, check_header, stage_list
from ..runner import Run
from ..runner import Task
from . import compress, evaluate, publish, search, train
from .common import TRAIN_EXTRA, ClassifyRun, State, calibration_draw, check_same_draw, hardware, train_config

STAGES = {
    "train_base": train.train_base, "search": search.search, "plan": search.plan, "lrs_plan": search.lrs_plan,
    "admm": train.admm, "reinit": train.reinit, "decompose": compress.decompose, "finetune": train.finetune,
    "eval": evaluate.evaluate, "agreement": evaluate.agreement, "latency": evaluate.latency,
    "publish": publish.publish,
    "reference": publish.reference,
}
DISTRIBUTED_STAGES = ("train_base", "admm", "finetune")


def check(recipe: dict, source: str) -> None:
    """One line naming the field when a classification recipe cannot run."""
    check_header(recipe, source, ("name", "data", "base"))
    if "model" not in recipe["base"]:
        raise RecipeError(f"{source}: base.model is required")
    if ("stages" in recipe) == ("arms" in recipe):
        raise RecipeError(f"{source}: give either 'stages' or 'arms'")
    reading = recipe.get("reading")
    if reading is not None:
        from ...data import LABEL_SPACES

        if not isinstance(reading, dict) or set(reading) - {"preprocess", "labels"}:
            raise RecipeError(f"{source}: reading must be a mapping with preprocess and/or labels, got {reading!r}")
        if reading.get("preprocess", "default") not in ("default", "checkpoint"):
            raise RecipeError(f"{source}: reading.preprocess {reading['preprocess']!r} is not 'default' or "
                              f"'checkpoint'")
        if reading.get("labels") not in LABEL_SPACES:
            raise RecipeError(f"{source}: reading.labels {reading['labels']!r} is not one of "
                              f"{', '.join(str(x) for x in LABEL_SPACES)}")
    arms = recipe["arms"] if "arms" in recipe else {"": recipe["stages"]}
    if not isinstance(arms, dict) or not arms:
        raise RecipeError(f"{source}: 'arms' must map arm names to stage lists")
    for arm, stages in arms.items():
        where = f"{source}: arms.{arm}" if arm else f"{source}: stages"
        listed = stage_list(stages, where, STAGES)
        ids = [p.get("id", k) for k, p in listed]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise RecipeError(f"{where}: stage id {sorted(dup)[0]!r} used twice (give one an 'id')")
        searched_draw = None  # a calibrated search's draw, which a later calibrated decompose must share
        for kind, params in listed:
            if kind == "search" and "family" not in params:
                searched_draw = calibration_draw(params) if params.get("calibrated") else None
            if kind == "decompose" and params.get("calibrated"):
                check_same_draw(calibration_draw(params), searched_draw, f"{where}.decompose")
                searched_draw = calibration_draw(params)
            if kind in ("finetune", "admm", "train_base"):
                train_config({k: v for k, v in params.items() if k not in TRAIN_EXTRA}, f"{where}.{kind}")
            if kind == "finetune" and params.get("compare_start") and params.get("choose") is None:
                raise RecipeError(f"{where}.finetune: compare_start needs choose (it is one more candidate)")
            if kind == "finetune" and params.get("choose") is not None:
                if params.get("train_on") != "fit":
                    raise RecipeError(f"{where}.finetune: choose needs train_on: fit (the choice is made on the "
                                      f"selection split, which training must then leave out)")
                for values in train.candidates(params["choose"], f"{where}.finetune"):
                    train_config({**{k: v for k, v in params.items() if k not in TRAIN_EXTRA}, **values},
                                 f"{where}.finetune.choose")


def header(run: Run, command: str) -> dict:
    recipe = run.recipe
    return {"recipe": recipe["_path"], "command": command, "name": recipe["name"],
            "input_size": int(recipe.get("input_size", 224)), "world_size": run.world, "hardware": hardware(),
            "config": {k: v for k, v in recipe.items() if not k.startswith("_")}}


def after_stage(run: Run, arm: str, arm_results: dict, kind: str, result: dict) -> None:
    """``final``: the last eval of the arm (or of the recipe); a reference arm quotes the other recipe's."""
    if kind == "eval":
        arm_results["final"] = result
        evaluate.restore_base(run.results, result)
    elif kind == "reference" and arm:
        arm_results["final"] = result["final"]


def prepare(recipe: dict) -> None:
    """Before anything runs: a base checkpoint that is not there yet (another recipe makes it) is one line, not
    a failure after the first stages. Checked here, not in :func:`check`: a recipe loads before its base exists."""
    checkpoint = recipe["base"].get("checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise RecipeError(f"recipe {recipe['_path']}: base.checkpoint {checkpoint} does not exist (make it first, "
                          f"or point at another with --set base.checkpoint=PATH)")


TASK = Task(name="classify", stages=STAGES, state=State, check=check, header=header, run_class=ClassifyRun,
            initial_state=lambda recipe: State(weights=recipe["base"].get("checkpoint")),
            distributed=DISTRIBUTED_STAGES, prepare=prepare, after_stage=after_stage)
