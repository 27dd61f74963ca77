"""The zero-shot half of #17's LR+S comparison: data-free arms (no calibration, no training) of an ImageNet base at
equal stored params (values and indices counted, :func:`stresnet.cost.plan_params`), scored 1000-way on the
``ILSVRC2012_val_*`` images.

Built only from functions that already exist, so the numbers say what the toolkit does today on a network that
is not ResNet-18: magnitude pruning (:func:`~stresnet.train.sparsity.dense_pruning_plan`), uniform truncated SVD
and uniform Tucker-2 (:func:`~stresnet.search.uniform.uniform_plan`, largest ratio within the budget) and LR+S at
the Tucker-2 plan's per-layer params (:func:`~stresnet.train.sparsity.lrs_plan_like`, one row per sparse fraction:
choosing the fraction needs calibration images, which a data-free arm has none of). What those functions cannot
cover on the model is recorded, one line each, instead of worked around.

With ``calib`` images, two calibrated arms join them (:func:`searched_arms`): the search in its ``any`` space
(Tucker-2 for kxk convs, SVD for 1x1 convs and the classifier, magnitude-pruned sparse depthwise convs) and the
same space without the sparse options (low-rank only), each the ILP's plan at the budget's stored params. Their
calibration images come from the fit part of Imagenette's train/ (never its selection split, never an
``ILSVRC2012_val_*`` file), put through the checkpoint's own transform, with 1000-way labels."""
from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from .cost import plan_params
from .imagenet.evaluate import data_config, imagenet_accuracy
from .imagenet.run import base_model
from .imagenet.split import imagenet_val_samples
from .plan import Plan, PlanError, compress, validate
from .search.baselines import scale_to_budget
from .search.uniform import uniform_plan
from .train.sparsity import DEFAULT_FRACTIONS, dense_pruning_plan, lrs_plan_like
from .utils.provenance import data_fingerprint, provenance, utc_now

__all__ = ["arm_plans", "uncovered", "zero_shot_arms", "calibration_batch", "searched_arms"]

SEARCHED_ARMS = ("searched_lowrank", "searched_any")


def _uniform_within(model: nn.Module, kind: str, target: int) -> Plan:
    """``uniform_plan(kind)`` at the largest ratio whose params are at most ``target``."""
    plan = scale_to_budget(lambda k: uniform_plan(model, k, kind=kind), lambda p: plan_params(model, p),
                           target, 1e-3, 1.0, iters=20)
    plan.meta["params"] = plan_params(model, plan)
    return plan


def arm_plans(model: nn.Module, target: int,
              fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[dict[str, Plan], dict[str, str]]:
    """The plans of every arm at ``target`` params (``prune``, ``svd``, ``tucker2``, ``lrs_<fraction>``) and, per
    arm that could not be built, the one-line reason."""
    plans: dict[str, Plan] = {}
    failures: dict[str, str] = {}
    builders: dict[str, Callable[[], Plan]] = {
        "prune": lambda: dense_pruning_plan(model, target),
        "svd": lambda: _uniform_within(model, "svd", target),
        "tucker2": lambda: _uniform_within(model, "tucker2", target),
    }
    for arm, make in builders.items():
        try:
            plans[arm] = make()
        except (PlanError, ValueError) as e:
            failures[arm] = str(e).splitlines()[0]
    for f in fractions:
        arm = f"lrs_{f:g}"
        if "tucker2" not in plans:
            failures[arm] = "no tucker2 plan at this budget to take the per-layer params from"
            continue
        try:
            plans[arm] = lrs_plan_like(model, plans["tucker2"], f)
        except (PlanError, ValueError) as e:
            failures[arm] = str(e).splitlines()[0]
    return plans, failures


def uncovered(model: nn.Module) -> list[str]:
    """What the arms leave dense, one line per module kind, with the toolkit's own refusal where there is one."""
    from .search.pipeline import decomposable_convs

    plain = set(decomposable_convs(model))
    lines = []
    grouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n not in plain]
    if grouped:
        params = sum(p.numel() for n in grouped for p in model.get_submodule(n).parameters())
        lines.append(f"{len(grouped)} grouped/depthwise convs ({params} params) stay dense in every arm: "
                     "dense_pruning_plan and uniform_plan take only ungrouped convs (decomposable_convs)")
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            params = sum(p.numel() for p in m.parameters())
            reasons = []
            for spec in ({"type": "sparse", "density": 0.5}, {"type": "lrs", "ranks": [8, 8], "density": 0.5}):
                try:
                    validate(model, Plan(layers={name: spec}))
                except PlanError as e:
                    reasons.append(str(e).splitlines()[0])
            lines.append(f"Linear {name!r} ({params} params) stays dense in every arm: uniform_plan and "
                         f"dense_pruning_plan cover convs only" + (f"; {'; '.join(reasons)}" if reasons else ""))
    return lines


def calibration_batch(folder: str | Path, config: Mapping[str, Any], n: int, seed: int = 0):
    """``n`` images (fixed ``seed``) of the fit part of ``folder/train``, read as the checkpoint reads them
    (``config``, a timm data config) with ImageNet-1k labels: one ``(images, labels)`` batch."""
    from .data import Folder, Reading, calibration_images

    reading = Reading.of_config(dict(config), labels="imagenet-1k")
    return calibration_images(Folder(Path(folder) / "train", reading), n, int(config["input_size"][-1]), seed=seed)


def searched_arms(base: nn.Module, images, labels, targets: Mapping[str, int], estimator: str = "fisher",
                  step: int = 16, progress: bool = False) -> tuple[dict[str, dict[str, Plan]], dict[str, Any]]:
    """``{budget: {arm: plan}}`` of the calibrated arms (:data:`SEARCHED_ARMS`) at each budget's ``targets``
    stored params, from one search space (``any``); low-rank only is the same space without its sparse options.
    Also returns what the space left alone (``skipped``) and its build time."""
    from .search.budgets import parse_budget
    from .search.ilp import InfeasibleBudget
    from .search.pipeline import build_space, searched_plan

    space = build_space(base, images, labels, estimator=estimator, step=step, progress=progress, space="any")
    lowrank = replace(space, options={n: [o for o in opts if o.spec["type"] != "sparse"]
                                      for n, opts in space.options.items()})
    plans: dict[str, dict[str, Plan]] = {}
    failed: dict[str, dict[str, str]] = {}
    for label, target in targets.items():
        plans[label], failed[label] = {}, {}
        for arm, arm_space in (("searched_lowrank", lowrank), ("searched_any", space)):
            try:
                plans[label][arm] = searched_plan(arm_space, parse_budget(f"params<={target}"))
            except InfeasibleBudget as e:
                failed[label][arm] = str(e).splitlines()[0]
    return plans, {"skipped": dict(space.skipped), "seconds": space.seconds, "estimator": estimator, "step": step,
                   "failed": failed, "bases": space.bases}


def zero_shot_arms(arch: str, checkpoint: str | Path, folder: str | Path, budgets: Sequence[float],
                   fractions: Sequence[float] = DEFAULT_FRACTIONS, crop_pct: float | None = None,
                   limit: int | None = None, batch_size: int = 50, progress: bool = False,
                   calib: int = 0, seed: int = 0) -> dict[str, Any]:
    """Every arm at each budget (``budgets``: factors of fewer stored params than the base, e.g. 1.5 and 2),
    compressed by decomposing the base's weights (magnitude masks, truncated SVD / HOSVD; no data), scored on
    the 1000-way split of the Imagenette root ``folder`` (its first ``limit`` images when given). ``calib`` > 0
    adds the calibrated :func:`searched_arms` (``calib`` images drawn with ``seed``)."""
    started, t0 = utc_now(), time.perf_counter()
    base = base_model(arch, checkpoint)
    config = data_config(base, {"crop_pct": crop_pct})
    samples = imagenet_val_samples(folder)
    if limit is not None:
        samples = samples[:limit]

    def score(model: nn.Module) -> dict[str, float]:
        return imagenet_accuracy(model, samples, config, batch_size=batch_size, progress=progress)

    dense = plan_params(base, Plan(layers={}))
    targets = {f"{factor:g}x": int(dense / factor) for factor in budgets}
    searched, search_info, bases = {}, None, None
    if calib > 0:
        images, labels = calibration_batch(folder, config, calib, seed)
        searched, search_info = searched_arms(base, images, labels, targets, progress=progress)
        bases = search_info.pop("bases")
        search_info.update(calibration={"images": len(images), "seed": seed,
                                        "source": "train/ fit part (no selection split, no ILSVRC2012_val_*)"})
    rows: dict[str, Any] = {}
    for factor in budgets:
        target = targets[f"{factor:g}x"]
        plans, failures = arm_plans(base, target, fractions)
        plans.update(searched.get(f"{factor:g}x", {}))
        failures.update((search_info or {}).get("failed", {}).get(f"{factor:g}x", {}))
        arms: dict[str, Any] = {}
        for arm, plan in plans.items():
            model = compress(copy.deepcopy(base), plan, init="decompose",
                             **({"bases": bases} if arm in SEARCHED_ARMS else {}))
            arms[arm] = {"params": plan_params(base, plan), "layers": len(plan.layers),
                         "meta": {k: v for k, v in plan.meta.items() if k in ("method", "density", "ratio",
                                                                              "sparse_fraction")},
                         **score(model)}
        rows[f"{factor:g}x"] = {"target_params": target, "arms": arms, "failed": failures}
    return {"model": arch, "checkpoint": str(checkpoint), "data_config": config,
            "dense": {"params": dense, **score(base)}, "budgets": rows, "uncovered": uncovered(base),
            **({"search": {k: v for k, v in search_info.items() if k != "failed"}} if search_info else {}),
            "split": {"folder": str(folder), "images": len(samples)},
            "provenance": provenance(started, time.perf_counter() - t0, checkpoint, [data_fingerprint(folder)])}
