"""The CompressNAS search end to end: tables once, then one ILP per budget, plus baselines at equal size.

    model + calibration images
      -> searchable modules (every exact conv / linear some searchable type takes; the rest skipped, with why)
      -> capture each searchable module's input           (one forward pass)
      -> mode bases + one-pass MSE table per layer       (estimator.py)
      -> options with cost rows per layer                (options.py)
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
from . import baselines as bl
from .budgets import Budget
from ..layers import registry
from .estimator import (ErrorTable, LayerStats, capture_inputs, group_patch_moments, output_grad_moments, patch_moment,
                        rank_grid, sparse_loss, tucker2_error_table)
from .ilp import Option, solve, total_loss
from .options import LayerShape, admits, layer_options

METRICS = ("params", "flash", "macs", "ram")
BASELINES = ("uniform", "vbmf", "energy")


def decomposable_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Plain convs a Tucker-2 can replace (exact ``nn.Conv2d``, ungrouped), in model order."""
    return {n: m for n, m in model.named_modules() if type(m) is nn.Conv2d and m.groups == 1}


def searchable_modules(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Every conv and linear of ``model`` some searchable registered type can replace, in model order, and
    ``{name: reason}`` for each conv or linear left as it is (the search report lists them)."""
    found: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        base = nn.Conv2d if isinstance(m, nn.Conv2d) else nn.Linear
        if not any(admits(f, m) for f in registry.registered()):
            kind = f"{type(m).__module__}.{type(m).__qualname__}"
            skipped[name] = (f"{kind} subclasses {base.__name__}: its forward may differ, no type replaces it"
                             if type(m) is not base else "no searchable factorisation type replaces it")
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
    skipped: dict[str, str] = field(default_factory=dict)  # convs / linears no option fits: name -> why
    kinds: dict[str, str] = field(default_factory=dict)  # per layer: "conv" (ungrouped), "grouped" or "linear"

    def size(self, plan: Plan, metric: str = "params") -> float:
        """Total ``metric`` of ``plan`` under this space's analytic cost rows."""
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
            elif spec["type"] == "svd" and self.kinds.get(name) == "linear" and spec["rank"] in self.tables[name].in_grid:
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
) -> SearchSpace:
    """Capture calibration inputs and build every layer's options (the expensive, budget-free part).

    ``estimator``: ``"fisher"`` (default), output error weighted by the loss
    gradient (needs ``labels``), or ``"mse"``, output MSE normalised per layer
    (CompressNAS). Fisher is the default because it predicts measured zero-shot
    accuracy better (``stresnet check-estimator``: Spearman -0.87 vs -0.59 over
    20 random 8x plans of the Imagenette ResNet-18).

    ``cost_size`` (``(C, H, W)``) prices the options at another resolution than the
    calibration images' (e.g. an MCU budget stated at 224 px while calibrating at 128).
    """
    from ..cost import live_beside, profile

    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r} (expected one of {', '.join(ESTIMATORS)})")
    if estimator == "fisher" and labels is None:
        raise ValueError("the fisher estimator needs the calibration images' labels")
    t0 = time.perf_counter()
    found, skipped = searchable_modules(model)
    inputs = capture_inputs(model, found, images)
    for name in [n for n in found if n not in inputs]:
        skipped[name] = "its input could not be captured (not called exactly once per forward pass)"
        del found[name]
    grads = output_grad_moments(model, found, images, labels) if estimator == "fisher" else {}
    cost_hw = _input_sizes(model, found, cost_size) if cost_size is not None else {}
    shapes, bases, tables, options, kinds = {}, {}, {}, {}, {}
    for name, module in tqdm(found.items(), desc="estimator tables", disable=not progress, leave=False):
        x = inputs.pop(name)
        linear = isinstance(module, nn.Linear)
        calib_hw = tuple(x.shape[1:-1]) if linear else tuple(x.shape[-2:])
        shapes[name] = LayerShape.of(module, cost_hw.get(name, calib_hw))
        scale = 1.0 / (len(images) ** 2 * LayerShape.of(module, calib_hw).hw_out)  # calibration positions
        grad = grads.get(name)
        if linear or module.groups == 1:
            kinds[name] = "linear" if linear else "conv"
            weight = module.weight[:, :, None, None] if linear else module.weight
            bases[name] = dec.mode_bases(weight)
            tables[name] = tucker2_error_table(bases[name], patch_moment(module, x, max_patches),
                                               rank_grid(weight.shape[1], step), grad, scale)
            stats = LayerStats(table=tables[name])
        else:
            kinds[name] = "grouped"
            moments = group_patch_moments(module, x, max_patches)
            diag = torch.diagonal(grad) if grad is not None else None
            stats = LayerStats(sparse=lambda d, w=module.weight, m=moments, g=diag, k=scale: sparse_loss(w, m, d, g, k))
        options[name] = layer_options(shapes[name], stats, tied=tied, step=step, module=module)
    input_size = tuple(cost_size) if cost_size is not None else tuple(images.shape[1:])
    live = live_beside(model, input_size)
    # live beside each layer (a residual input waiting for the add), and, once the layer is factorised,
    # its input too if it outlives the layer (a bound: the input's first step counts it twice)
    beside = {n: live.get(n, (0, 0)) for n in options}
    for name, opts in options.items():
        options[name] = [Option(o.spec, o.loss, {**o.cost, "ram": o.cost["ram"] + _ram_beside(beside[name], o.spec)})
                         for o in opts]
    prof = profile(model, input_size)
    base_cost = {"params": prof.params, "flash": prof.flash_bytes, "macs": prof.macs, "ram": prof.peak_ram_bytes}
    fixed = {m: base_cost[m] - sum(s.full_cost()[m] for s in shapes.values()) for m in ("params", "flash", "macs")}
    fixed["ram"] = 0.0  # peak RAM is bounded layer by layer: each option's own working set + what lives beside it
    return SearchSpace(shapes, bases, tables, options, base_cost, fixed, step, time.perf_counter() - t0, input_size,
                       ram_beside=beside, skipped=skipped, kinds=kinds)


def _ram_beside(live: tuple[int, int], spec: Mapping) -> int:
    """Bytes live beside a layer with ``spec`` (see :func:`stresnet.cost.live_beside`)."""
    beside, kept = live
    return beside + (kept if spec["type"] != "full" else 0)


@torch.no_grad()
def _input_sizes(model: nn.Module, modules: Mapping[str, nn.Module], size: Sequence[int]) -> dict[str, tuple[int, int]]:
    """The spatial size of each module's input on one ``size`` sample (shapes only)."""
    from ..cost import _sample_input

    found: dict[str, tuple[int, int]] = {}

    def keep(name: str) -> Callable:
        def hook(_m: nn.Module, args: tuple) -> None:  # returns None: the input passes unchanged
            x = args[0]
            found.setdefault(name, tuple(x.shape[1:-1]) if isinstance(_m, nn.Linear) else tuple(x.shape[-2:]))
        return hook

    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        model(_sample_input(model, (1, *size)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def searched_plan(space: SearchSpace, budget: Budget) -> Plan:
    """The ILP's plan for one budget (raises InfeasibleBudget with the smallest achievable size)."""
    limits = budget.limits(space.base_cost)
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
        # a linear is a matrix: its two-factor SVD at the smaller of the two mode ranks
        spec = ({"type": "tucker2", "ranks": [r_out, r_in]} if kind == "conv"
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
    return {
        "method": plan.meta.get("method"),
        **totals,
        "ratio": space.base_cost["params"] / totals["params"],
        "estimated_loss": space.estimated_loss(plan),
        "layers": plan.layers,
    }


def space_report(space: SearchSpace) -> dict:
    """Per-layer tables (JSON-ready, compact): shape, and one row per option with its loss and costs."""
    columns = ["r_out", "r_in", "loss", *METRICS, "spec"]  # r_out, r_in: Tucker-2 ranks (None otherwise)
    out = {}
    for name, opts in space.options.items():
        rows = []
        for o in opts:
            r_out, r_in = o.spec.get("ranks", [None, None]) if o.spec["type"] == "tucker2" else (None, None)
            rows.append([r_out, r_in, float(f"{o.loss:.6g}"), *(int(o.cost[m]) for m in METRICS), o.spec])
        out[name] = {"shape": vars(space.shapes[name]), "columns": columns, "options": rows}
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy's), for estimator-vs-accuracy checks."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x), np.asarray(y)).statistic)
