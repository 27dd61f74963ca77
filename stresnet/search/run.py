"""`stresnet search`: from a base checkpoint and a data folder to plans, a report and a plot."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

import torch

from ..data import calibration_images
from ..plan import Plan, compress
from ..resolve import model_from_name
from .budgets import parse_budget
from .pipeline import BASELINES, build_space, run_search
from .report import write_search


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
    step: int = 8,
    tied: bool = False,
    baselines: Sequence[str] = BASELINES,
    estimator: str = "fisher",
    evaluate: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Run the whole search; with ``evaluate`` also measure every plan's zero-shot top-1 on ``DATA/val``."""
    parsed = [parse_budget(b) for b in budgets]  # fail on a bad budget before any work
    torch.manual_seed(seed)
    net = model_from_name(model, num_classes=num_classes, checkpoint=checkpoint)
    t0 = time.perf_counter()
    images, labels = calibration_images(_split(data, "train"), calib, size, seed=seed)
    t_calib = time.perf_counter() - t0
    space = build_space(net, images, labels, estimator=estimator, step=step, tied=tied, progress=progress)
    result = run_search(space, parsed, baselines)
    measured: dict[str, dict[str, dict]] = {}
    extra: dict = {"estimator": estimator,
                   "calibration": {"images": len(images), "size": size, "seed": seed, "seconds": t_calib},
                   "checkpoint": str(checkpoint) if checkpoint else None}
    if evaluate:
        from ..evaluate import accuracy

        val = _split(data, "val")
        extra["base_top1"] = accuracy(net, val, size, progress=progress)["top1"]
        for label, plan in result.plans.items():
            measured[label] = {}
            for method, p in {"searched": plan, **result.baselines[label]}.items():
                compressed = compress(copy.deepcopy(net), Plan(layers=p.layers), bases=space.bases)
                measured[label][method] = accuracy(compressed, val, size, progress=progress)
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
    step: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Score every estimator against measured zero-shot top-1 of ``n_plans`` random plans at ``budget``."""
    import json

    from ..evaluate import accuracy
    from .validate import estimator_correlation

    parsed = parse_budget(budget)
    net = model_from_name(model, num_classes=num_classes, checkpoint=checkpoint)
    images, labels = calibration_images(_split(data, "train"), calib, size, seed=seed)
    space = build_space(net, images, labels, estimator="mse", step=step, progress=progress)
    fisher = build_space(net, images, labels, estimator="fisher", step=step, progress=progress)
    val = _split(data, "val")
    limit = parsed.limits(space.base_cost)["params"]
    result = estimator_correlation(space, net, lambda m: accuracy(m, val, size, progress=progress)["top1"],
                                   limit, n_plans=n_plans, seed=seed, fisher=fisher)
    result.update(budget=budget, model=model, checkpoint=str(checkpoint) if checkpoint else None,
                  calibration={"images": len(images), "size": size, "seed": seed})
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimator_check.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
