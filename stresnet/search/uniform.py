"""Uniform-rank Tucker-2 plans sized to *at least* another plan's parameters: the fine-tuning baseline.

The search's own uniform baseline (:func:`stresnet.search.pipeline.baseline_plan`)
is the largest uniform plan with at most the searched plan's params and needs
the calibration tables; this one needs only the architecture and errs the
other way: the smallest uniform plan with at least as many params, so that a
searched plan that beats it after fine-tuning did not win by holding more
weights. Every plain conv (after the plan's surgery, which is kept) gets ranks
``round(ratio * C)`` on both channel modes, in multiples of ``step``; a conv
whose Tucker-2 would not be smaller than itself stays full.
"""
from __future__ import annotations

import copy

from torch import nn

from ..cost import plan_params
from ..layers import registry
from ..layers.registry import LayerGeometry
from ..plan import Plan
from ..surgery import apply_surgery
from . import baselines as bl
from .pipeline import decomposable_convs

__all__ = ["uniform_plan", "uniform_plan_at_least"]


def uniform_plan(model: nn.Module, ratio: float, step: int = 4, like: Plan | None = None,
                 kind: str = "tucker2") -> Plan:
    """``kind`` (Tucker-2 by default) at ``ratio`` of both channel dims on every plain conv of ``model``
    (after ``like``'s surgery), sized by the type's own :meth:`from_mode_ranks`."""
    fact = registry.get(kind)
    work = model
    surgery = copy.deepcopy(like.surgery) if like is not None else {}
    if surgery:
        work = apply_surgery(copy.deepcopy(model), surgery)
    layers = {}
    for name, conv in decomposable_convs(work).items():
        r_out = bl.uniform_rank(conv.out_channels, ratio, step)
        r_in = bl.uniform_rank(conv.in_channels, ratio, step)
        geometry = LayerGeometry.of(conv)
        spec = fact.from_mode_ranks(geometry, r_out, r_in)
        if spec is None:
            raise ValueError(f"uniform_plan: factorisation {kind!r} is not sized by per-mode ranks")
        if fact.cost(geometry, spec)["params"] < geometry.full_cost()["params"]:
            layers[name] = spec
    return Plan(layers=layers, base=copy.deepcopy(like.base) if like is not None else None, surgery=surgery,
                meta={"method": "uniform", "ratio": ratio, "step": step})


def uniform_plan_at_least(model: nn.Module, like: Plan, step: int = 4) -> Plan:
    """The smallest uniform plan (one ratio for every conv) with at least the params of ``compress(model, like)``."""
    target = plan_params(model, like)
    plan = bl.scale_to_at_least(lambda k: uniform_plan(model, k, step, like), lambda p: plan_params(model, p),
                                target, 1e-3, 1.0)
    plan.meta.update(params=plan_params(model, plan), params_target=target)
    return plan
