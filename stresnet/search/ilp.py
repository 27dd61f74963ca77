"""Global rank selection as a 0/1 integer linear program.

Every layer offers a few options (keep it full, or Tucker-2 at some ranks),
each with an estimated accuracy loss and a cost.  Choosing ranks layer by layer
cannot trade a cheap layer against an expensive one; an ILP over all layers
finds the plan with the smallest total loss that fits the whole budget.

Metrics:

* ``params``, ``flash``, ``macs`` (and any other name) are *additive*: the model
  total is ``fixed_cost[m] + sum of the chosen options' cost[m]``.
* ``ram`` is the *peak* working memory, a max over layers, not a sum.  A max
  constraint ``max_l ram_l <= R`` is the same as ``ram_l <= R`` for every layer,
  so it is enforced by forbidding (upper bound 0) every option above the limit.

Determinism and ties: the problem is solved lexicographically.  Stage 1
minimises the total loss.  Stage 2 keeps the loss within a hair (1e-9
relative) of that optimum and minimises ``total params + position / (P + 1)``,
where ``position`` is the option's place in its layer when sorted by
(params, flash, macs, ram, index) and ``P`` bounds the sum of positions: among
equally good plans the one with fewest params wins, and among those the
cheaper / earlier options (the position term is worth less than one parameter).
Layers are processed in sorted-name order, so the answer does not depend on
the mapping's insertion order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

__all__ = ["Option", "InfeasibleBudget", "solve", "total_cost", "total_loss"]

MAX_METRICS = frozenset({"ram"})
"""Metrics whose model value is the max over layers instead of the sum."""

_TIE_ORDER = ("params", "flash", "macs", "ram")
_METRIC_ORDER = ("ram", "params", "flash", "macs")  # ram first: it filters options
_LOSS_TOL = 1e-9  # relative slack on the stage-1 optimum allowed in stage 2


@dataclass(frozen=True)
class Option:
    """One choice for one layer."""

    spec: dict
    loss: float
    cost: Mapping[str, float] = field(default_factory=dict)


class InfeasibleBudget(ValueError):
    """No choice of options satisfies the requested limits."""


def _fmt(metric: str, value: float) -> str:
    """Human-readable value: bytes in KiB/MiB, counts in K/M/G, latency in ms."""
    if metric == "latency":
        return f"{value:.4g}ms"
    if metric in ("flash", "ram"):
        for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{unit}"
        return f"{value:.0f}B"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"


def _metric_order(limits: Mapping[str, float]) -> list[str]:
    known = [m for m in _METRIC_ORDER if m in limits]
    return known + sorted(m for m in limits if m not in _METRIC_ORDER)


def _cost(option: Option, metric: str, layer: str) -> float:
    try:
        return float(option.cost[metric])
    except KeyError:
        raise ValueError(
            f"layer {layer!r}: option {option.spec} has no cost for limited metric {metric!r}"
        ) from None


def total_loss(layers: Mapping[str, Sequence[Option]], choice: Mapping[str, int]) -> float:
    """Sum of the chosen options' losses."""
    return float(sum(layers[name][idx].loss for name, idx in choice.items()))


def total_cost(
    layers: Mapping[str, Sequence[Option]],
    choice: Mapping[str, int],
    fixed_cost: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Model cost of a choice: additive metrics summed, ``ram`` as a max."""
    totals: dict[str, float] = {k: float(v) for k, v in (fixed_cost or {}).items()}
    for name in sorted(choice):
        for metric, value in layers[name][choice[name]].cost.items():
            if metric in MAX_METRICS:
                totals[metric] = max(totals.get(metric, -math.inf), float(value))
            else:
                totals[metric] = totals.get(metric, 0.0) + float(value)
    return totals


def _allowed_options(
    names: list[str], layers: Mapping[str, Sequence[Option]], limits: Mapping[str, float]
) -> list[list[int]]:
    """Indices of the options of each layer that respect the per-layer (max) limits."""
    allowed = []
    for name in names:
        ok = [
            i
            for i, opt in enumerate(layers[name])
            if all(_cost(opt, m, name) <= limits[m] for m in MAX_METRICS if m in limits)
        ]
        allowed.append(ok)
    return allowed


def _check_feasible(
    names: list[str],
    layers: Mapping[str, Sequence[Option]],
    limits: Mapping[str, float],
    fixed: Mapping[str, float],
    allowed: list[list[int]],
) -> None:
    """Raise InfeasibleBudget naming the first metric that no choice can meet on its own."""
    for metric in _metric_order(limits):
        limit = float(limits[metric])
        base = float(fixed.get(metric, 0.0))
        if metric in MAX_METRICS:
            per_layer = [min(_cost(o, metric, n) for o in layers[n]) for n in names]
            smallest = max([base, *per_layer])
            if smallest > limit:
                worst = names[int(np.argmax(per_layer))] if per_layer and max(per_layer) >= base else None
                where = f"layer {worst!r}" if worst is not None else "the fixed part of the model"
                raise InfeasibleBudget(
                    f"budget {metric}<={_fmt(metric, limit)} is infeasible: the smallest achievable "
                    f"is {_fmt(metric, smallest)} ({where} needs at least that)"
                )
            continue
        smallest = base + sum(
            min(_cost(layers[n][i], metric, n) for i in ok) for n, ok in zip(names, allowed)
        )
        if smallest > limit:
            raise InfeasibleBudget(
                f"budget {metric}<={_fmt(metric, limit)} is infeasible: the smallest achievable "
                f"is {_fmt(metric, smallest)} (fixed {_fmt(metric, base)} + cheapest option of "
                f"every layer)"
            )


def _tie_break_weights(options: Sequence[Option], allowed: list[int]) -> dict[int, float]:
    """Position of each allowed option when sorted by (cost..., index): cheaper/earlier first."""
    key = lambda i: (*(float(options[i].cost.get(m, 0.0)) for m in _TIE_ORDER), i)  # noqa: E731
    return {i: float(pos) for pos, i in enumerate(sorted(allowed, key=key))}


def _undominated(
    options: Sequence[Option], allowed: list[int], metrics: list[str], tie_pos: dict[int, float]
) -> list[int]:
    """Drop options that another option beats on loss, every limited cost and tie order.

    Swapping a dominated option for its dominator keeps a plan feasible and
    never makes it worse, so pruning is exact; it shrinks the MILP a lot on
    rank grids where many (r_out, r_in) pairs cost the same.
    """
    idx = np.array(allowed)
    loss = np.array([float(options[i].loss) for i in idx])
    cost = np.array([[float(options[i].cost[m]) for m in metrics] for i in idx]).reshape(len(idx), -1)
    pos = np.array([tie_pos[i] for i in idx])
    # dom[a, b]: option a dominates option b
    dom = (
        (loss[:, None] <= loss[None, :])
        & np.all(cost[:, None, :] <= cost[None, :, :], axis=2)
        & (pos[:, None] < pos[None, :])
    )
    return [int(i) for i in idx[~dom.any(axis=0)]]


def solve(
    layers: Mapping[str, Sequence[Option]],
    limits: Mapping[str, float],
    fixed_cost: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Pick one option per layer minimising total loss within ``limits``.

    Additive metrics: ``fixed_cost[m] + sum(chosen cost[m]) <= limits[m]``.
    ``ram``: every chosen option's ram (and ``fixed_cost["ram"]``) ``<= limits["ram"]``.
    Returns ``{layer_name: option_index}``; raises InfeasibleBudget if nothing fits.
    """
    fixed = dict(fixed_cost or {})
    names = sorted(layers)
    for name in names:
        if not layers[name]:
            raise ValueError(f"layer {name!r} has no options")
    if not names:
        _check_feasible(names, layers, limits, fixed, [])
        return {}

    allowed = _allowed_options(names, layers, limits)
    _check_feasible(names, layers, limits, fixed, allowed)
    additive = [m for m in _metric_order(limits) if m not in MAX_METRICS]
    tie_pos = [_tie_break_weights(layers[n], ok) for n, ok in zip(names, allowed)]
    allowed = [
        _undominated(layers[n], ok, additive, pos) for n, ok, pos in zip(names, allowed, tie_pos)
    ]

    # Variables: one binary per allowed (layer, option), in sorted-layer order.
    var_layer = np.array([li for li, ok in enumerate(allowed) for _ in ok], dtype=int)
    var_option = np.array([oi for ok in allowed for oi in ok], dtype=int)
    opts = [layers[names[li]][oi] for li, oi in zip(var_layer, var_option)]
    n_vars = len(opts)

    one_hot = np.zeros((len(names), n_vars))
    one_hot[var_layer, np.arange(n_vars)] = 1.0
    budget_rows, budget_rhs = [], []
    for metric in _metric_order(limits):
        if metric in MAX_METRICS:
            continue
        # Rows are divided by the limit so that all budgets are O(1) for the solver.
        scale = max(abs(float(limits[metric])), 1e-12)
        budget_rows.append([_cost(o, metric, names[li]) / scale for o, li in zip(opts, var_layer)])
        budget_rhs.append((float(limits[metric]) - float(fixed.get(metric, 0.0))) / scale)
    a_ub = np.array(budget_rows).reshape(len(budget_rows), n_vars)
    b_ub = np.array(budget_rhs)

    loss = np.array([float(o.loss) for o in opts])
    # Losses are divided by the largest one: the solver's absolute tolerances and the stage-2
    # slack then mean the same thing whatever the estimator's units (Fisher losses can be ~1e-9).
    peak = float(np.abs(loss).max())
    if peak > 0:
        loss = loss / peak
    chosen = _milp(loss, one_hot, a_ub, b_ub, np.ones(n_vars))
    if chosen is None:
        pretty = ", ".join(f"{m}<={_fmt(m, float(limits[m]))}" for m in _metric_order(limits))
        raise InfeasibleBudget(
            f"budget combination {pretty} is infeasible: each limit can be met alone "
            f"but not all of them together"
        )

    # Stage 2: among (near-)optimal plans prefer fewer params, then cheaper / earlier options.
    best = float(loss @ chosen)
    slack = _LOSS_TOL * float(np.abs(loss).sum())
    upper = _reduced_cost_fixing(loss, one_hot, a_ub, b_ub, best + slack)
    upper[chosen] = 1.0  # the stage-1 optimum always stays available
    pos = np.array([tie_pos[li][oi] for li, oi in zip(var_layer, var_option)])
    params = np.array([float(o.cost.get("params", 0.0)) for o in opts])
    max_pos_sum = sum(max(p.values()) for p in tie_pos)
    tie = params + pos / (max_pos_sum + 1.0)
    stage2 = _milp(
        tie,
        one_hot,
        np.vstack([a_ub, loss[None, :]]),
        np.append(b_ub, best + slack),
        upper,
    )
    if stage2 is not None:
        chosen = stage2

    return {names[var_layer[v]]: int(var_option[v]) for v in np.flatnonzero(chosen)}


def _reduced_cost_fixing(
    loss: np.ndarray, a_eq: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, cap: float
) -> np.ndarray:
    """Upper bounds (0 or 1) after LP reduced-cost fixing against ``loss <= cap``.

    For any feasible x, ``loss @ x >= z_lp + r_j x_j`` for every variable with
    reduced cost ``r_j > 0``; if ``z_lp + r_j > cap`` that variable is 0 in every
    plan within the loss cap.  Pruning them makes stage 2 far smaller.
    """
    upper = np.ones(loss.size)
    res = linprog(
        loss,
        A_ub=a_ub if a_ub.size else None,
        b_ub=b_ub if a_ub.size else None,
        A_eq=a_eq,
        b_eq=np.ones(a_eq.shape[0]),
        bounds=(0.0, 1.0),
        method="highs",
    )
    if res.status != 0:
        return upper
    reduced = loss - a_eq.T @ res.eqlin.marginals
    if a_ub.size:
        reduced -= a_ub.T @ res.ineqlin.marginals
    margin = 1e-7 * max(1.0, abs(cap))
    upper[res.fun + reduced > cap + margin] = 0.0
    return upper


def _milp(
    objective: np.ndarray, a_eq: np.ndarray, a_ub: np.ndarray, b_ub: np.ndarray, upper: np.ndarray
) -> np.ndarray | None:
    """Solve a 0/1 program exactly (zero MIP gap); None when infeasible."""
    constraints = [LinearConstraint(a_eq, 1.0, 1.0)]
    if a_ub.size:
        constraints.append(LinearConstraint(a_ub, -np.inf, b_ub))
    res = milp(
        objective,
        constraints=constraints,
        integrality=np.ones(objective.size),
        bounds=Bounds(0.0, upper),
        options={"mip_rel_gap": 0.0},
    )
    if res.status == 2:  # infeasible
        return None
    if not res.success or res.x is None:
        raise RuntimeError(f"MILP solver failed: {res.message}")
    return np.round(res.x).astype(bool)
