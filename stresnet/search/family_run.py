"""`stresnet search-family`: the MCU family by search, at each ST variant's own four budgets, beside ST's ranks.

For every budget: the stem-aware search (:mod:`.stems`: one space per stem option, one
ILP per budget, the stem chosen on the selection split), then, with ``evaluate``, the
zero-shot top-1 of the searched plan and of the reference plan (ST's ranks, its narrowed
stem fitted the same way) on the selection split and on ``val``, with the four costs of
both at the budget's resolution. Budgets and reference plans come from the caller (the
CLI takes them from :mod:`stresnet.zoo.family`): the search knows no zoo.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..cost import profile
from ..data import calibration_images, selection_images
from ..evaluate import accuracy, tensor_top1
from ..plan import Plan, compress
from ..resolve import model_from_name
from ..stem_init import narrowed_stem
from .budgets import parse_budget
from .run import ESTIMATOR, STEP
from .stems import search_with_stems, stem_label

__all__ = ["search_family_and_write"]


def _measure(net: Any, plan: Plan, images: Any, select: tuple, val: Path | None, size: int,
             cost_size: Sequence[int]) -> dict:
    """Costs and zero-shot top-1 of ``plan`` on ``net``, its narrowed stem (if any) fitted on ``images``."""
    work = narrowed_stem(net, plan.surgery, images) if plan.surgery.get("stem", {}).get("proj") else net
    model = compress(copy.deepcopy(work), Plan(layers=plan.layers))
    prof = profile(model, tuple(cost_size))
    row = prof.budget_costs()
    row["selection_top1"] = tensor_top1(model, *select)
    if val is not None:
        row["top1"] = accuracy(model, val, size)["top1"]
    return row


def search_family_and_write(
    model: str,
    checkpoint: Path | None,
    data: Path,
    budgets: Mapping[str, str],
    references: Mapping[str, Plan],
    out: Path,
    stems: Sequence[Mapping[str, Any] | None],
    num_classes: int | None = None,
    size: int = 128,
    cost_size: int = 224,
    calib: int = 256,
    step: int = STEP,
    estimator: str = ESTIMATOR,
    evaluate: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Search every budget; write ``plan_<label>.json`` (searched, with its stem surgery) and ``report.json``."""
    parsed = {label: parse_budget(text) for label, text in budgets.items()}  # fail before any work
    t0 = time.perf_counter()
    net = model_from_name(model, num_classes=num_classes, checkpoint=checkpoint)
    images, labels = calibration_images(data / "train", calib, size, seed=seed)
    select = selection_images(data / "train", size)
    shape = (3, cost_size, cost_size)
    found = search_with_stems(net, images, labels, parsed, stems, select, cost_size=shape, estimator=estimator,
                              step=step, progress=progress)
    base = {"arch": model, **({"num_classes": num_classes} if num_classes else {})}
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for label, (best, trials) in found.items():
        row: dict = {"budget": budgets[label], "limits": parsed[label].absolute,
                     "trials": [t.to_dict() for t in trials], "chosen_stem": stem_label(best.stem) if best else None}
        if best is not None:
            best.plan.base = dict(base)
            best.plan.save(out / f"plan_{label}.json")
            row["plan"] = str(out / f"plan_{label}.json")
        if evaluate:
            val = data / "val"
            arms = {"reference": references[label], **({"searched": best.plan} if best else {})}
            row["zero_shot"] = {arm: _measure(net, plan, images, select, val, size, shape) for arm, plan in arms.items()}
        rows[label] = row
    report = {"base": base, "checkpoint": str(checkpoint) if checkpoint else None, "input_size": size,
              "cost_input_size": list(shape), "estimator": estimator, "grid_step": step,
              "stems": [stem_label(s) for s in stems],
              "calibration": {"images": len(images), "seed": seed}, "selection_images": len(select[0]),
              "seconds": time.perf_counter() - t0, "budgets": rows}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
