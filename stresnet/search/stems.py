"""The search over the network's *structure* as well as its ranks: one ILP per stem option, chosen on held-out images.

The ILP (:mod:`.ilp`) picks one option per layer of a fixed architecture. A stem option
changes the architecture itself (ST's narrowed stem: ``C_stem`` channels and a ``1x1``
projection back to 64 after the max-pool, which lowers peak RAM), so each stem option
gets its own space, built on the base with that stem *fitted to the base*
(:func:`stresnet.stem_init.narrowed_stem`), and its own ILP under the same budget.
Estimated losses of different architectures are not comparable, so the stem is then
chosen by measured zero-shot top-1 on a selection split held out from calibration (and
from every reported split). Every plan is checked against the whole budget with
:func:`stresnet.cost.profile` at the budget's resolution: the ILP bounds peak RAM layer
by layer, and a stem's max-pool is no layer of the space.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from ..cost import profile
from ..evaluate import tensor_top1
from ..plan import Plan, compress
from ..stem_init import narrowed_stem
from .budgets import Budget
from .ilp import InfeasibleBudget
from .pipeline import build_space, searched_plan

__all__ = ["StemTrial", "search_with_stems", "stem_label"]


def stem_label(stem: Mapping[str, Any] | None) -> str:
    return "base" if not stem else f"width{stem['width']}" + ("+proj" if stem.get("proj") else "")


@dataclass
class StemTrial:
    """One stem option: its plan (None when the budget is out of its reach), cost, zero-shot top-1, why not."""

    stem: dict | None
    plan: Plan | None = None
    cost: dict = field(default_factory=dict)
    top1: float | None = None
    note: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"stem": self.stem, "label": stem_label(self.stem), "cost": self.cost, "select_top1": self.top1,
                "note": self.note, "seconds": self.seconds, "plan": self.plan.to_dict() if self.plan else None}


def search_with_stems(
    base: nn.Module,
    images: Tensor,
    labels: Tensor,
    budgets: Mapping[str, Budget],
    stems: Sequence[Mapping[str, Any] | None],
    select: tuple[Tensor, Tensor],
    cost_size: Sequence[int] = (3, 224, 224),
    estimator: str = "fisher",
    step: int = 8,
    tied: bool = False,
    progress: bool = False,
) -> dict[str, tuple[StemTrial | None, list[StemTrial]]]:
    """Search ranks under each budget for every stem option (one space per stem, one ILP per budget);
    per budget, the best feasible trial (by top-1 on ``select``) and all trials. ``None`` in ``stems``
    is the base's own stem."""
    trials: dict[str, list[StemTrial]] = {label: [] for label in budgets}
    for stem in stems:
        t0 = time.perf_counter()
        surgery = {"stem": dict(stem)} if stem else {}
        net = narrowed_stem(base, surgery, images) if stem else copy.deepcopy(base)
        space = build_space(net, images, labels, estimator=estimator, step=step, tied=tied, progress=progress,
                            cost_size=cost_size)
        shared = (time.perf_counter() - t0) / len(budgets)  # the space's time, split over the budgets
        for label, budget in budgets.items():
            t1 = time.perf_counter()
            trials[label].append(_trial(net, space, budget, surgery, select, cost_size))
            trials[label][-1].seconds = shared + time.perf_counter() - t1
    out = {}
    for label, tried in trials.items():
        feasible = [t for t in tried if t.plan is not None]
        out[label] = (max(feasible, key=lambda t: t.top1) if feasible else None, tried)
    return out


def _trial(net: nn.Module, space: Any, budget: Budget, surgery: dict, select: tuple[Tensor, Tensor],
           cost_size: Sequence[int]) -> StemTrial:
    trial = StemTrial(copy.deepcopy(surgery.get("stem")))
    try:
        found = searched_plan(space, budget)
    except InfeasibleBudget as e:
        trial.note = f"infeasible: {e}"
        return trial
    plan = Plan(layers=found.layers, surgery=copy.deepcopy(surgery), meta=found.meta)
    model = compress(copy.deepcopy(net), Plan(layers=plan.layers), bases=space.bases)
    prof = profile(model, tuple(cost_size))
    trial.cost = prof.budget_costs()
    limits = budget.limits(space.base_cost)
    over = [f"{m} {trial.cost[m]} > {limits[m]:.0f}" for m in limits if trial.cost[m] > limits[m]]
    if over:
        trial.note = "over budget when profiled: " + ", ".join(over)
        return trial
    trial.plan = plan
    trial.top1 = 100.0 * tensor_top1(model, *select)
    return trial
