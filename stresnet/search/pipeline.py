"""The CompressNAS search end to end: tables once, then one ILP per budget, plus baselines at equal size.

    model + calibration images
      -> searchable modules (every exact conv / linear some searchable type takes; the rest skipped, with why)
      -> capture each searchable module's input           (one forward pass)
      -> mode bases + one-pass MSE table per layer       (estimator.py)
      -> options with cost rows per layer                (options.py)
      -> measured latency per option, when a table is given (latency_costs.py; measured by deploy)
      -> ILP per budget                                   (ilp.py)
      -> plans; baselines (uniform / VBMF / energy) scaled to the searched plan's params
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .. import decompose as dec
from ..plan import Plan
from ..utils.modes import eval_mode
from . import baselines as bl
from ..layers import registry
from .budgets import Budget, BudgetError
from .estimator import (ErrorTable, LayerStats, as_kernel, capture_inputs, group_patch_moments, output_grad_moments,
                        patch_moment, rank_grid, sparse_loss, tucker2_error_table)
from .ilp import Option, solve, total_loss
from .latency_costs import LatencyCosts, LatencyError, LayerSignature
from .options import LayerShape, admits, layer_options
from .spaces import SPACES

METRICS = ("params", "flash", "macs", "ram")
BASELINES = ("uniform", "vbmf", "energy")


def decomposable_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Plain convs a Tucker-2 can replace (exact ``nn.Conv2d``, ungrouped), in model order."""
    return {n: m for n, m in model.named_modules() if type(m) is nn.Conv2d and m.groups == 1}


def layer_kind(module: nn.Module) -> str:
    """``linear``, ``grouped`` (a conv with groups > 1, depthwise included), ``pointwise`` (1x1) or ``conv``."""
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups > 1:
        return "grouped"
    return "pointwise" if tuple(module.kernel_size) == (1, 1) else "conv"


def _spatial(module: nn.Module, shape: Sequence[int]) -> tuple[int, ...]:
    """The spatial part of a module's input shape (batch excluded): a conv's ``(H, W)``, a linear's token dims."""
    return tuple(shape[:-1]) if isinstance(module, nn.Linear) else tuple(shape[-2:])


def searchable_modules(model: nn.Module, space: str = "compressnas") -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Every conv and linear of ``model`` the ``space`` (:data:`SPACES`) offers a type for, in model order, and
    ``{name: reason}`` for each conv or linear left as it is (the search report lists them)."""
    if space not in SPACES:
        raise ValueError(f"unknown search space {space!r} (expected one of {', '.join(SPACES)})")
    found: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        base = nn.Conv2d if isinstance(m, nn.Conv2d) else nn.Linear
        kind = layer_kind(m)
        types = [registry.get(t) for t in SPACES[space].get(kind, ())]
        if not types:
            skipped[name] = f"a {kind} layer: the {space!r} search space has no type for it"
        elif not any(admits(f, m) for f in types):
            cls = f"{type(m).__module__}.{type(m).__qualname__}"
            skipped[name] = (f"{cls} subclasses {base.__name__}: its forward may differ, no type replaces it"
                             if type(m) is not base else f"no type of the {space!r} space replaces it")
        elif base is nn.Conv2d and isinstance(m.padding, str):
            skipped[name] = f"string padding {m.padding!r}: the estimator unfolds patches with numeric padding"
        elif base is nn.Conv2d and m.padding_mode != "zeros":
            skipped[name] = f"padding_mode {m.padding_mode!r}: the estimator assumes zero padding"
        else:
            found[name] = m
    return found, skipped


@dataclass
class SearchSpace:
    """Everything computed once per (model, calibration set) and reused for every budget."""

    shapes: dict[str, LayerShape]
    bases: dict[str, dec.ModeBases]
    tables: dict[str, ErrorTable]
    options: dict[str, list[Option]]
    base_cost: dict[str, float]  # the uncompressed model
    fixed_cost: dict[str, float]  # what no option changes (BN, FC, ...)
    step: int
    seconds: float
    input_size: tuple[int, int, int]
    vbmf_ranks: dict[str, tuple[int, int]] = field(default_factory=dict)  # filled on first use
    ram_beside: dict[str, tuple[int, int]] = field(default_factory=dict)  # per layer: cost.live_beside
    signatures: dict[str, LayerSignature] = field(default_factory=dict)  # per layer, at input_size: latency keys
    latency: LatencyCosts | None = None  # measured per-option latency, only when a table was attached
    skipped: dict[str, str] = field(default_factory=dict)  # convs / linears the space leaves as they are: name -> why
    kinds: dict[str, str] = field(default_factory=dict)  # per layer: conv, pointwise, grouped or linear (LAYER_KINDS)
    types: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(SPACES["compressnas"]))  # kind -> types

    def size(self, plan: Plan, metric: str = "params") -> float:
        """Total ``metric`` of ``plan`` under this space's analytic cost rows (``latency``: the attached table)."""
        if metric == "latency":
            if self.latency is None:
                raise LatencyError("this search space has no latency table")
            return self.latency.total(plan.layers)
        total = self.fixed_cost[metric]
        for name, shape in self.shapes.items():
            spec = plan.layers.get(name, {"type": "full"})
            cost = shape.cost(spec)
            if metric == "ram":
                total = max(total, cost["ram"] + _ram_beside(self.ram_beside.get(name, (0, 0)), spec))
            else:
                total += cost[metric]
        return total

    def estimated_loss(self, plan: Plan) -> float:
        loss = 0.0
        for name, spec in plan.layers.items():
            if spec["type"] == "tucker2" and name in self.tables:
                loss += self.tables[name](*spec["ranks"])
            elif (spec["type"] == "svd" and self.kinds.get(name) in ("linear", "pointwise")
                  and spec["rank"] in self.tables[name].in_grid):
                loss += self.tables[name](spec["rank"], spec["rank"])  # a matrix: Tucker-2 at (r, r) is its SVD
            else:  # another type: the loss its search option carries
                loss += next((o.loss for o in self.options.get(name, ()) if o.spec == spec), 0.0)
        return loss


ESTIMATORS = ("mse", "fisher")


def build_space(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    estimator: str = "fisher",
    step: int = 8,
    tied: bool = False,
    max_patches: int = 16384,
    progress: bool = True,
    cost_size: Sequence[int] | None = None,
    space: str = "compressnas",
    calibrated: bool = False,
    factorise_all: bool = False,
) -> SearchSpace:
    """Capture calibration inputs and build every layer's options (the expensive, budget-free part).

    ``estimator``: ``"fisher"`` (default), output error weighted by the loss
    gradient (needs ``labels``), or ``"mse"``, output MSE normalised per layer
    (CompressNAS). Fisher is the default because it predicts measured zero-shot
    accuracy better (``stresnet check-estimator``: Spearman -0.87 vs -0.59 over
    20 random 8x plans of the Imagenette ResNet-18).

    ``cost_size`` (``(C, H, W)``) prices the options at another resolution than the
    calibration images' (e.g. an MCU budget stated at 224 px while calibrating at 128).

    ``space`` (:data:`SPACES`): which layer kinds are searched and with which types; modules it leaves
    alone are listed with the reason in ``SearchSpace.skipped`` (and the search report).

    ``calibrated``: each layer's output basis is fitted to its outputs on the calibration images
    (:func:`stresnet.decompose.mode_bases` with the input moment), so the tables score, and ``space.bases``
    builds, the data-aware truncations; the stages that decompose later recompute them with
    :func:`~.estimator.calibrated_bases` on the same images.

    ``factorise_all``: no layer the space searches may stay full (where it has a smaller option), as in a
    uniform plan. The zero-shot tables price a layer's error before any fine-tune, so the ILP keeps layers full
    whose error looks costly; at 8x it keeps ResNet-18's three strided 1x1 shortcuts full (172 k params, 12 % of
    the budget), which uniform plans, ahead there after the fine-tune, factorise. (Forcing them factorised did not
    close that gap on the selection split, weight-only or calibrated: ``recipes/select_8x_fitbase.yaml``,
    ``recipes/select_8x_fit40.yaml``.)
    """
    from ..cost import live_beside, profile

    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r} (expected one of {', '.join(ESTIMATORS)})")
    if estimator == "fisher" and labels is None:
        raise ValueError("the fisher estimator needs the calibration images' labels")
    t0 = time.perf_counter()
    found, skipped = searchable_modules(model, space)
    inputs = capture_inputs(model, found, images)
    for name in [n for n in found if n not in inputs]:
        skipped[name] = "its input could not be captured (not called exactly once per forward pass)"
        del found[name]
    grads = output_grad_moments(model, found, images, labels) if estimator == "fisher" else {}
    cost_hw = ({n: _spatial(found[n], s) for n, s in input_shapes(model, found, cost_size).items()}
               if cost_size is not None else {})
    shapes, bases, tables, options, signatures, kinds = {}, {}, {}, {}, {}, {}
    for name, module in tqdm(found.items(), desc="estimator tables", disable=not progress, leave=False):
        x = inputs.pop(name)
        kinds[name] = layer_kind(module)
        calib_hw = _spatial(module, tuple(x.shape[1:]))
        hw = tuple(cost_hw.get(name, calib_hw))
        shapes[name] = LayerShape.of(module, hw)
        if isinstance(module, nn.Conv2d):
            signatures[name] = LayerSignature.of(module, (module.in_channels, *hw))
        scale = 1.0 / (len(images) ** 2 * LayerShape.of(module, calib_hw).hw_out)  # calibration positions
        grad = grads.get(name)
        if kinds[name] != "grouped":
            weight, moment = as_kernel(module), patch_moment(module, x, max_patches)
            bases[name] = dec.mode_bases(weight, moment if calibrated else None)
            tables[name] = tucker2_error_table(bases[name], moment, rank_grid(weight.shape[1], step), grad, scale)
            stats = LayerStats(table=tables[name])
        else:
            moments = group_patch_moments(module, x, max_patches)
            diag = torch.diagonal(grad) if grad is not None else None
            stats = LayerStats(sparse=lambda d, w=module.weight, m=moments, g=diag, k=scale: sparse_loss(w, m, d, g, k))
        options[name] = layer_options(shapes[name], stats, tied=tied, step=step, module=module,
                                      types=SPACES[space][kinds[name]], keep_full=not factorise_all)
    input_size = tuple(cost_size) if cost_size is not None else tuple(images.shape[1:])
    live = live_beside(model, input_size)
    # live beside each layer (a residual input waiting for the add), and, once the layer is factorised,
    # its input too if it outlives the layer (a bound: the input's first step counts it twice)
    beside = {n: live.get(n, (0, 0)) for n in options}
    for name, opts in options.items():
        options[name] = [Option(o.spec, o.loss, {**o.cost, "ram": o.cost["ram"] + _ram_beside(beside[name], o.spec)})
                         for o in opts]
    prof = profile(model, input_size)
    base_cost = prof.budget_costs()
    fixed = {m: base_cost[m] - sum(s.full_cost()[m] for s in shapes.values()) for m in ("params", "flash", "macs")}
    fixed["ram"] = 0.0  # peak RAM is bounded layer by layer: each option's own working set + what lives beside it
    return SearchSpace(shapes, bases, tables, options, base_cost, fixed, step, time.perf_counter() - t0, input_size,
                       ram_beside=beside, signatures=signatures, skipped=skipped, kinds=kinds,
                       types=dict(SPACES[space]))


LatencySource = Callable[[nn.Module, SearchSpace], LatencyCosts]
"""Measures (or reads cached) latency for a space's options: ``source(model, space)``. The CLI passes
:func:`stresnet.deploy.latency_table.search_latency` bound to a cache file; tests pass a fake table."""


def attach_latency(space: SearchSpace, costs: LatencyCosts) -> None:
    """Give every option a ``latency`` cost (ms) and the space a fixed one (``rest_ms``), so that a
    ``latency<=`` budget is one more linear row of the ILP: sum of the chosen options' latency <= limit - rest."""
    missing = sorted(set(space.options) - set(costs.layers))
    if missing:
        raise LatencyError(f"the latency table has no row for layer {missing[0]!r} ({len(missing)} layers missing)")
    space.options = {name: [Option(o.spec, o.loss, {**o.cost, "latency": costs.of(name, o.spec)}) for o in opts]
                     for name, opts in space.options.items()}
    space.fixed_cost["latency"] = costs.rest_ms
    space.base_cost["latency"] = costs.total({})
    space.latency = costs


def _ram_beside(live: tuple[int, int], spec: Mapping) -> int:
    """Bytes live beside a layer with ``spec`` (see :func:`stresnet.cost.live_beside`)."""
    beside, kept = live
    return beside + (kept if spec["type"] != "full" else 0)


@torch.no_grad()
def input_shapes(model: nn.Module, modules: Mapping[str, nn.Module], size: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """The shape (batch excluded) of each module's input on one ``size`` sample (shapes only)."""
    from ..cost import _sample_input

    found: dict[str, tuple[int, ...]] = {}

    def keep(name: str) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> None:  # returns None: the input passes unchanged
            found.setdefault(name, tuple(args[0].shape[1:]))
        return hook

    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in modules.items()]
    try:
        with eval_mode(model):
            model(_sample_input(model, (1, *size)))
    finally:
        for h in hooks:
            h.remove()
    return found


def searched_plan(space: SearchSpace, budget: Budget) -> Plan:
    """The ILP's plan for one budget (raises InfeasibleBudget with the smallest achievable size)."""
    limits = budget.limits(space.base_cost)
    if "latency" in limits and space.latency is None:
        raise BudgetError(f"budget {budget.text!r}: a latency limit needs a measured latency table "
                          "(stresnet search --latency-cache PATH)")
    choice = solve(space.options, limits, space.fixed_cost)
    layers = {n: space.options[n][i].spec for n, i in choice.items() if space.options[n][i].spec["type"] != "full"}
    return Plan(layers=layers, meta={"method": "compressnas-ilp", "budget": budget.text,
                                     "estimated_loss": total_loss(space.options, choice)})


def _ranks_plan(space: SearchSpace, ranks: Callable[[str, LayerShape], tuple[float, float]], method: str,
                floor: float = 0.0, keep_stem: bool = False) -> Plan:
    """A Tucker-2 plan from per-layer real ranks, rounded up to the grid with :func:`baselines.baseline_rank`
    (``floor``: fraction of each mode); layers that would not shrink stay full. ``keep_stem``: a conv whose input
    mode is never cut (the stem reading the image) stays full: its Tucker-2 could only cut its output side, for
    under 0.1 % of a ResNet's params, and the image-facing filters are where a cut hurts most."""
    layers = {}
    for name, shape in space.shapes.items():
        kind = space.kinds.get(name, "conv")
        if kind == "grouped":
            continue  # no channel modes to size: the baseline leaves it full
        if keep_stem and shape.c_in <= bl.KEEP_MODE:
            continue
        a, b = ranks(name, shape)
        r_out = bl.baseline_rank(a, shape.c_out, space.step, floor)
        r_in = bl.baseline_rank(b, shape.c_in, space.step, floor)
        # where the space sizes a matrix (1x1 conv, linear) by SVD: its two factors at the smaller mode rank
        spec = ({"type": "tucker2", "ranks": [r_out, r_in]} if "tucker2" in space.types.get(kind, ("tucker2",))
                else {"type": "svd", "rank": min(r_out, r_in)})
        if shape.cost(spec)["params"] < shape.full_cost()["params"]:
            layers[name] = spec
    return Plan(layers=layers, meta={"method": method})


def _vbmf_ranks(space: SearchSpace) -> dict[str, tuple[int, int]]:
    """VBMF ranks of both mode unfoldings of every layer (computed once per space)."""
    if not space.vbmf_ranks:
        for name, b in space.bases.items():
            c_out, c_in = b.weight.shape[:2]
            w = b.weight.numpy()
            space.vbmf_ranks[name] = (bl.vbmf_rank(w.reshape(c_out, -1)),
                                      bl.vbmf_rank(w.transpose(1, 0, 2, 3).reshape(c_in, -1)))
    return space.vbmf_ranks


def baseline_plan(space: SearchSpace, method: str, params_limit: float) -> Plan:
    """The ``method`` plan (uniform rank ratio, VBMF ranks x a factor, energy threshold) with the most
    parameters that still fit ``params_limit``: baselines are compared at equal or fewer params.

    Every baseline is built the same sensible way at any grid (:func:`_ranks_plan`): the stem stays full,
    no mode goes below :data:`baselines.RANK_FLOOR` of its size; the floor is halved (down to none) only when
    a budget is too small for it, and the floor used is recorded in ``meta["rank_floor"]``.
    """
    if method == "uniform":
        ranks = lambda k: lambda n, s: (s.c_out * k, s.c_in * k)
        lo, hi = 1e-3, 1.0
    elif method == "energy":
        ranks = lambda k: lambda n, s: (bl.energy_rank(space.bases[n].s_out.numpy(), k),
                                        bl.energy_rank(space.bases[n].s_in.numpy(), k))
        lo, hi = 1e-4, 1.0
    elif method == "vbmf":
        vb = _vbmf_ranks(space)
        ranks = lambda k: lambda n, s: (vb[n][0] * k, vb[n][1] * k)
        # up to the factor that makes every mode full, so that tiny VBMF ranks (a noisy layer) can still fill a budget
        lo, hi = 1e-3, float(max(max(s.c_out, s.c_in) for s in space.shapes.values()))
    else:
        raise ValueError(f"unknown baseline {method!r} (expected one of {', '.join(BASELINES)})")
    floor = bl.RANK_FLOOR
    while True:
        make = lambda k: _ranks_plan(space, ranks(k), method, floor=floor, keep_stem=True)
        try:
            plan = bl.scale_to_budget(make, space.size, params_limit, lo, hi)
            break
        except ValueError:
            if floor == 0.0:
                raise
            floor = floor / 2 if floor > bl.RANK_FLOOR / 8 else 0.0
    plan.meta["rank_floor"] = floor
    plan.meta["estimated_loss"] = space.estimated_loss(plan)
    return plan


@dataclass
class SearchResult:
    space: SearchSpace
    plans: dict[str, Plan] = field(default_factory=dict)  # budget label -> searched plan
    baselines: dict[str, dict[str, Plan]] = field(default_factory=dict)  # budget label -> method -> plan
    seconds: float = 0.0


def run_search(
    space: SearchSpace,
    budgets: Sequence[Budget],
    baselines: Sequence[str] = BASELINES,
) -> SearchResult:
    """One ILP per budget, and each baseline scaled to the searched plan's parameter count."""
    t0 = time.perf_counter()
    result = SearchResult(space)
    for budget in budgets:
        plan = searched_plan(space, budget)
        result.plans[budget.label] = plan
        limit = space.size(plan)
        result.baselines[budget.label] = {m: baseline_plan(space, m, limit) for m in baselines}
    result.seconds = time.perf_counter() - t0
    return result


def plan_summary(space: SearchSpace, plan: Plan) -> dict:
    """Cost totals, compression ratio and estimated loss of a plan, for reports."""
    totals = {m: space.size(plan, m) for m in METRICS}
    if space.latency is not None and space.latency.covers(plan.layers):
        totals["predicted_latency_ms"] = space.latency.total(plan.layers)
    return {
        "method": plan.meta.get("method"),
        **totals,
        "ratio": space.base_cost["params"] / totals["params"],
        "estimated_loss": space.estimated_loss(plan),
        "layers": plan.layers,
    }


def space_report(space: SearchSpace) -> dict:
    """Per-layer tables (JSON-ready, compact): shape, and one row per option with its loss and costs."""
    timed = space.latency is not None
    # r_out, r_in: Tucker-2 ranks (None for full); another type's spec gets its own column
    typed = any(o.spec["type"] not in ("full", "tucker2") for opts in space.options.values() for o in opts)
    columns = ["r_out", "r_in", "loss", *METRICS, *(["latency_ms"] if timed else []), *(["spec"] if typed else [])]
    out = {}
    for name, opts in space.options.items():
        rows = []
        for o in opts:
            r_out, r_in = o.spec.get("ranks", [None, None]) if o.spec["type"] == "tucker2" else (None, None)
            rows.append([r_out, r_in, float(f"{o.loss:.6g}"), *(int(o.cost[m]) for m in METRICS),
                         *([float(f"{o.cost['latency']:.4g}")] if timed else []), *([o.spec] if typed else [])])
        out[name] = {"shape": vars(space.shapes[name]), "columns": columns, "options": rows}
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy's), for estimator-vs-accuracy checks."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x), np.asarray(y)).statistic)
