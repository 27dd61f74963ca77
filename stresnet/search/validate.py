"""Does the estimator predict accuracy? Random plans at one budget, estimated loss vs measured top-1.

Random plans draw a random importance per layer, take ranks proportional to it
and scale them (bisection) to the budget, so every plan has about the same size
and only the allocation differs: the question is whether the estimator ranks
allocations like accuracy does. Several estimators are scored on the same
plans, so the choice between them is measured, not assumed:

* ``mse``: sum over layers of the calibration output MSE normalised by the layer's
  output energy (the one the ILP minimises);
* ``mse_log``: sum of ``log(1 + mse)``, which damps one catastrophic layer;
* ``energy``: data-free, the singular-value energy each Tucker-2 drops
  (1 - kept fraction, summed over both modes).
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
from torch import nn

from ..plan import Plan, compress
from . import baselines as bl
from .pipeline import SearchSpace, _ranks_plan, spearman


def random_plan(space: SearchSpace, params_limit: float, seed: int) -> Plan:
    """A plan with random relative ranks, scaled to fit ``params_limit``."""
    rng = np.random.default_rng(seed)
    weights = {n: float(rng.uniform(0.05, 1.0)) for n in space.shapes}

    def make(k: float) -> Plan:
        return _ranks_plan(space, lambda n, s: (s.c_out * min(1.0, k * weights[n]), s.c_in * min(1.0, k * weights[n])),
                           f"random-{seed}", floor=0.0)

    return bl.scale_to_budget(make, space.size, params_limit, 1e-3, 1.0 / 0.05)


def estimators(space: SearchSpace, fisher: SearchSpace | None = None) -> dict[str, Callable[[Plan], float]]:
    """Candidate plan-level loss estimators from the tables computed once (``fisher``: a Fisher-table space)."""

    def mse_log(plan: Plan) -> float:
        return sum(math.log1p(space.tables[n](*s["ranks"])) for n, s in plan.layers.items())

    def energy(plan: Plan) -> float:
        return sum(2 - space.bases[n].energy(0, s["ranks"][0]) - space.bases[n].energy(1, s["ranks"][1])
                   for n, s in plan.layers.items())

    out = {"mse": space.estimated_loss, "mse_log": mse_log, "energy": energy}
    if fisher is not None:
        out["fisher"] = fisher.estimated_loss
    return out


def estimator_correlation(
    space: SearchSpace,
    model: nn.Module,
    measure: Callable[[nn.Module], float],
    params_limit: float,
    n_plans: int = 20,
    seed: int = 0,
    fisher: SearchSpace | None = None,
) -> dict:
    """Spearman correlation of each estimator with the measured zero-shot metric over ``n_plans`` random plans.

    A good estimator has a strongly NEGATIVE correlation (more estimated loss, less accuracy).
    """
    rows = []
    scorers = estimators(space, fisher)
    for i in range(n_plans):
        plan = random_plan(space, params_limit, seed + i)
        compressed = compress(copy.deepcopy(model), Plan(layers=plan.layers), bases=space.bases)
        rows.append({"seed": seed + i, "params": space.size(plan), "measured": measure(compressed),
                     **{k: f(plan) for k, f in scorers.items()}})
    measured = [r["measured"] for r in rows]
    return {
        "n_plans": n_plans,
        "params_limit": params_limit,
        "spearman": {k: spearman([r[k] for r in rows], measured) for k in scorers},
        "plans": rows,
    }
