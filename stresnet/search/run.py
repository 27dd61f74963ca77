"""`stresnet search`: from a base checkpoint and a data folder to plans, a report and a plot."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import torch

from ..data import SELECTION_PER_CLASS, calibration_images, selection_images
from ..evaluate import tensor_top1
from ..plan import Plan, compress
from ..resolve import model_from_name
from .budgets import BudgetError, parse_budget
from .neighbourhood import near_anchor
from .pipeline import BASELINES, LatencySource, attach_latency, build_space, run_search
from .report import write_search


STEP = 16  # default rank-grid step: chosen on the selection split (recipes/results/search_imagenette/selection.json)
ESTIMATOR = "fisher"  # default estimator: chosen there too


def _split(data: Path, name: str) -> Path:
    """``DATA/name`` when DATA holds splits, else DATA itself."""
    return data / name if (data / name).is_dir() else data


def search_and_write(
    model: str,
    checkpoint: Path | None,
    data: Path,
    budgets: Sequence[str],
    out: Path,
    num_classes: int | None = None,
    size: int = 128,
    calib: int = 256,
    step: int = STEP,
    tied: bool = False,
    baselines: Sequence[str] = BASELINES,
    estimator: str = ESTIMATOR,
    evaluate: bool = False,
    seed: int = 0,
    progress: bool = True,
    latency: LatencySource | None = None,
    cost_size: int | None = None,
    search_space: str = "compressnas",
    calibrated: bool = False,
    factorise_all: bool = False,
    around: Plan | None = None,
    radius: int = 1,
) -> dict:
    """Run the whole search; with ``evaluate`` also measure every plan's zero-shot top-1 on the selection split
    of ``DATA/train`` (``selection_top1``, what choices are made on) and on ``DATA/val`` (``top1``, reported only).

    Calibration images come from the ``fit`` part of ``DATA/train`` (see :func:`stresnet.data.split_indices`).
    ``latency`` (a measured table, see :data:`~stresnet.search.pipeline.LatencySource`) prices every option's
    latency, for ``latency<=`` budgets and the plans' predicted latency in the report. All costs (params aside)
    are priced at ``cost_size`` px when given (e.g. latency at 224 px while calibrating at 128), else at ``size``.
    ``search_space`` (:data:`~stresnet.search.pipeline.SPACES`): which layer kinds are searched, with which types.
    ``calibrated``: score (and, with ``evaluate``, build) the calibrated decompositions (see
    :func:`~stresnet.search.pipeline.build_space`). ``factorise_all``: no searched layer stays full (ditto).
    ``around``: search only within ``radius`` grid steps of this plan's ranks (:mod:`.neighbourhood`).
    """
    parsed = [parse_budget(b) for b in budgets]  # fail on a bad budget before any work
    timed = next((b for b in parsed if "latency" in b.metrics), None)
    if timed is not None and latency is None:
        raise BudgetError(f"budget {timed.text!r}: a latency limit needs a measured latency table "
                          "(stresnet search --latency-cache PATH)")
    torch.manual_seed(seed)
    net = model_from_name(model, num_classes=num_classes, checkpoint=checkpoint)
    t0 = time.perf_counter()
    images, labels = calibration_images(_split(data, "train"), calib, size, seed=seed)
    t_calib = time.perf_counter() - t0
    space = build_space(net, images, labels, estimator=estimator, step=step, tied=tied, progress=progress,
                        cost_size=None if cost_size is None else (3, cost_size, cost_size), space=search_space,
                        calibrated=calibrated, factorise_all=factorise_all)
    neighbourhood = None
    if around is not None:
        space.options = near_anchor(space.options, around, radius, step)
        neighbourhood = {"radius": radius, "anchor_method": around.meta.get("method"),
                         "anchor_params": space.size(around), "anchor_macs": space.size(around, "macs"),
                         "anchor_estimated_loss": space.estimated_loss(around)}
    if latency is not None:
        attach_latency(space, latency(net, space))
    result = run_search(space, parsed, baselines)
    measured: dict[str, dict[str, dict]] = {}
    extra: dict = {"estimator": estimator, "search_space": search_space, "calibrated": calibrated, "tied_ranks": tied,
                   "factorise_all": factorise_all, "around": neighbourhood,
                   "calibration": {"images": len(images), "size": size, "seed": seed, "seconds": t_calib,
                                   "source": "train/ fit part (no selection split, no ILSVRC2012_val_*)"},
                   "checkpoint": str(checkpoint) if checkpoint else None}
    if space.latency is not None:
        extra["latency"] = {"rest_ms": space.latency.rest_ms, "dense_ms": space.base_cost["latency"],
                            "threads": space.latency.threads, "table": space.latency.source}
    if evaluate:
        from ..evaluate import accuracy

        t0 = time.perf_counter()
        val = _split(data, "val")
        sel_x, sel_y = selection_images(_split(data, "train"), size)
        extra["selection"] = {"images": len(sel_x), "per_class": SELECTION_PER_CLASS,
                              "source": "train/, stresnet.data.split_indices"}
        extra["base_top1"] = accuracy(net, val, size, progress=progress)["top1"]
        extra["base_selection_top1"] = tensor_top1(net, sel_x, sel_y)
        for label, plan in result.plans.items():
            measured[label] = {}
            for method, p in {"searched": plan, **result.baselines[label]}.items():
                compressed = compress(copy.deepcopy(net), Plan(layers=p.layers), bases=space.bases)
                measured[label][method] = {**accuracy(compressed, val, size, progress=progress),
                                           "selection_top1": tensor_top1(compressed, sel_x, sel_y)}
        extra["eval_seconds"] = time.perf_counter() - t0
    base = {"arch": model, **({"num_classes": num_classes} if num_classes else {})}
    return write_search(result, out, base, measured, extra)


def check_estimator(
    model: str,
    checkpoint: Path | None,
    data: Path,
    budget: str,
    out: Path,
    num_classes: int | None = None,
    n_plans: int = 20,
    size: int = 128,
    calib: int = 256,
    step: int = STEP,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Score every estimator against measured zero-shot top-1 of ``n_plans`` random plans at ``budget``, measured
    on the selection split of ``DATA/train`` (a configuration choice: never on ``val``)."""
    import json

    from .validate import estimator_correlation

    parsed = parse_budget(budget)
    net = model_from_name(model, num_classes=num_classes, checkpoint=checkpoint)
    images, labels = calibration_images(_split(data, "train"), calib, size, seed=seed)
    space = build_space(net, images, labels, estimator="mse", step=step, progress=progress)
    fisher = build_space(net, images, labels, estimator="fisher", step=step, progress=progress)
    sel_x, sel_y = selection_images(_split(data, "train"), size)
    limit = parsed.limits(space.base_cost)["params"]
    result = estimator_correlation(space, net, lambda m: tensor_top1(m, sel_x, sel_y),
                                   limit, n_plans=n_plans, seed=seed, fisher=fisher)
    result.update(budget=budget, model=model, checkpoint=str(checkpoint) if checkpoint else None, step=step,
                  calibration={"images": len(images), "size": size, "seed": seed},
                  measured_on={"split": "selection", "images": len(sel_x), "per_class": SELECTION_PER_CLASS})
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimator_check.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
