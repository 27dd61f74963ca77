"""Low-rank + sparse (LR+S) and magnitude-pruning students at the parameter budget of a Tucker-2 plan.

Format
    An LR+S layer (plan spec ``{"type": "lrs", "ranks": [r_out, r_in],
    "density": d}``, :class:`~stresnet.layers.LowRankSparseConv2d`) computes
    ``conv(x, L) + conv(x, S * M)``: ``L`` is a Tucker-2 conv (three plain
    convs) and ``S * M`` a full-size kernel times a 0/1 mask buffer
    (:class:`~stresnet.layers.MaskedConv2d`). The magnitude-pruning baseline
    (spec ``{"type": "sparse", "density": d}``) is a lone ``MaskedConv2d``.
    The mask is unstructured (any kernel entry), so both deploy as CSR over
    output channels.

Budget accounting (``stresnet.cost``, the project's one definition)
    A Tucker-2 layer costs its three kernels (+ bias). A sparse part costs
    ``2 * nnz + C_out + 1``: one value and one column index per kept entry plus
    ``C_out + 1`` row pointers (+ bias for a standalone conv; inside LR+S the
    bias lives on the Tucker-2 part). Indices are counted as parameters, so a
    sparse entry costs twice a dense one: the comparison with the dense
    factorisations is honest, not flattering.

    :func:`lrs_plan_like` gives each ``tucker2`` layer of a plan the same
    param count as an LR+S layer: ``sparse_fraction`` of the layer's budget
    goes to the sparse part, the rest to Tucker-2 ranks shrunk by one common
    factor (rounded, >= 1); the density then takes up exactly what is left
    (``nnz = (budget - tucker(ranks') - C_out - 1) // 2``), so each layer is
    within one parameter of its budget. :func:`pruning_plan_like` prunes the
    same convs that the Tucker plan compresses, all at one uniform density
    chosen so that the whole model has the Tucker model's params (per-layer
    rounding: within a few params). Global magnitude pruning (one threshold
    over all layers, so per-layer densities differ) is the obvious
    alternative, left for later. Layers the plan does not touch stay as they
    are; non-``tucker2`` specs of the plan are kept as they are.

Schedule (:class:`GradualSparsityHook`)
    Zhu & Gupta (2017): the density of each sparse part follows
    ``d(t) = d_f + (d_0 - d_f) (1 - p)^3`` with ``p`` the progress through
    ``[begin, end]`` (fractions of all updates), constant outside. With
    ``d_0 = 1`` an LR+S student starts as ``L + (W - L) = W`` -- exactly the
    base model, since ``MaskedConv2d`` keeps the whole residual in its weight
    -- and a pruned one as the dense conv: fine-tuning starts from the
    teacher's accuracy and the cubic prunes fast while many small weights
    are redundant, slowly near the end. Every ``update_every`` updates (and at
    the update that reaches ``end``, at the last update, and at train start)
    each mask becomes the top-``round(d * numel)`` of ``|weight|``; pruned
    entries are set to zero, after every update too (momentum and weight
    decay would otherwise move them), so a weight that comes back starts from
    zero, never from a stale value. Training after ``end`` (half the run by
    default) fine-tunes at the final masks. The masks are model buffers and
    are checkpointed with the model; the hook's only state is the update
    count, so a resumed run has the same masks as an uninterrupted one.

Choosing the split
    :func:`tune_split` scores candidate sparse fractions by the zero-shot top-1
    of the one-shot LR+S model (decomposed, masks at the final density) on
    calibration images, which must be training images held out by the caller
    -- never the validation set, whose accuracy is what gets reported.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import decompose as dec
from ..cost import _static, plan_params, prepared_for_plan as _prepared
from ..evaluate import tensor_top1
from ..layers import LowRankSparseConv2d, MaskedConv2d, registry
from ..layers.common import topk_mask
from ..plan import Plan, PlanError, compress
from .engine import TrainHook

__all__ = [
    "cubic_density",
    "sparse_layers",
    "GradualSparsityHook",
    "lrs_plan_like",
    "pruning_plan_like",
    "dense_pruning_plan",
    "tune_split",
    "DEFAULT_FRACTIONS",
]

DEFAULT_FRACTIONS = (0.1, 0.25, 0.4, 0.55)


# ----------------------------------------------------------------------------- schedule

def cubic_density(step: int, total: int, start_density: float, final_density: float,
                  begin: float = 0.0, end: float = 0.5) -> float:
    """Zhu & Gupta's gradual schedule: ``d_f + (d_0 - d_f) * (1 - p)^3``.

    ``p = clip((step / total - begin) / (end - begin), 0, 1)``: the density is
    ``start_density`` up to ``begin * total`` updates, ``final_density`` from
    ``end * total`` on (``begin == end``: a step at that point).
    """
    if total < 1:
        raise ValueError(f"cubic_density: total must be >= 1, got {total}")
    if not 0.0 <= begin <= end <= 1.0:
        raise ValueError(f"cubic_density: need 0 <= begin <= end <= 1, got begin={begin}, end={end}")
    t = step / total
    if end > begin:
        p = min(max((t - begin) / (end - begin), 0.0), 1.0)
    else:
        p = 1.0 if t >= end else 0.0
    return final_density + (start_density - final_density) * (1.0 - p) ** 3


def sparse_layers(model: nn.Module) -> list[tuple[str, MaskedConv2d, float]]:
    """``(name, masked conv, target density)`` of every sparse part of ``model``.

    The target of the sparse part of a ``LowRankSparseConv2d`` is the layer's
    ``target_density``; that of a standalone ``MaskedConv2d`` its own
    ``target_density`` (the plan's density, set by ``from_conv`` / ``compress``).
    """
    found: list[tuple[str, MaskedConv2d, float]] = []
    inside: set[int] = set()
    for name, m in model.named_modules():
        if isinstance(m, LowRankSparseConv2d):
            found.append((f"{name}.sparse" if name else "sparse", m.sparse, float(m.target_density)))
            inside.add(id(m.sparse))
    for name, m in model.named_modules():
        if isinstance(m, MaskedConv2d) and id(m) not in inside:
            found.append((name, m, float(m.target_density)))
    return found


@torch.no_grad()
def _prune(layer: MaskedConv2d, density: float) -> None:
    """Mask = top-``round(density * numel)`` of ``|weight|`` (kept if it has that many already); zero the rest."""
    keep = int(round(density * layer.weight.numel()))
    if int(torch.count_nonzero(layer.mask)) != keep:
        layer.mask.copy_(topk_mask(layer.weight.detach(), density).to(layer.mask.dtype))
    layer.weight.mul_(layer.mask)


class GradualSparsityHook(TrainHook):
    """Prune every sparse part of the student by magnitude along :func:`cubic_density` (see the module docstring).

    Each layer goes from ``start_density`` to its own target density (see
    :func:`sparse_layers`), reached at ``end`` (fraction of all updates).
    Masks are recomputed every ``update_every`` updates, at the update that
    reaches ``end``, at the last update and at train start (for the last such
    update before the current one, so a resumed run continues with the masks
    of the uninterrupted run). Pruned weights are zeroed after every update.
    """

    def __init__(self, start_density: float = 1.0, begin: float = 0.0, end: float = 0.5,
                 update_every: int = 10) -> None:
        if not 0.0 < start_density <= 1.0:
            raise ValueError(f"GradualSparsityHook: start_density must be in (0, 1], got {start_density}")
        if not 0.0 <= begin <= end <= 1.0:
            raise ValueError(f"GradualSparsityHook: need 0 <= begin <= end <= 1, got begin={begin}, end={end}")
        if int(update_every) < 1:
            raise ValueError(f"GradualSparsityHook: update_every must be >= 1, got {update_every}")
        self.start_density, self.begin, self.end = float(start_density), float(begin), float(end)
        self.update_every = int(update_every)
        self.step = 0  # updates done so far (the engine's global step)
        self.total = 1

    # schedule
    def _end_step(self) -> int:
        return max(1, math.ceil(self.end * self.total - 1e-9))

    def _due(self, step: int) -> bool:
        return step % self.update_every == 0 or step == self._end_step() or step >= self.total

    def _last_due(self, step: int) -> int:
        """The last update at or before ``step`` where masks were recomputed (0: train start)."""
        cands = [step - step % self.update_every]
        cands += [s for s in (self._end_step(), self.total) if s <= step]
        return max(cands)

    def density_at(self, step: int, target: float) -> float:
        return cubic_density(step, self.total, self.start_density, target, self.begin, self.end)

    def apply(self, model: nn.Module, step: int) -> None:
        """Set every sparse part to its scheduled density at ``step``."""
        for _, layer, target in sparse_layers(model):
            _prune(layer, self.density_at(step, target))

    # TrainHook
    def on_train_start(self, model: nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        self.total = max(int(total_steps), 1)
        self.apply(model, self._last_due(self.step))

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.step = int(step)
        if self._due(self.step):
            self.apply(model, self.step)
        else:
            with torch.no_grad():
                for _, layer, _ in sparse_layers(model):
                    layer.weight.mul_(layer.mask)

    def state_dict(self) -> dict:
        return {"step": self.step, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state.get("step", 0))
        self.total = int(state.get("total", self.total))


# ----------------------------------------------------------------------------- budgets

def _bias(conv: nn.Conv2d) -> int:
    return conv.bias.numel() if conv.bias is not None else 0


def _tucker2_params(conv: nn.Conv2d, ranks: Sequence[int]) -> int:
    return registry.get("tucker2").params(conv, {"type": "tucker2", "ranks": list(ranks)})


def _derived(plan: Plan, layers: dict[str, dict], meta: dict) -> Plan:
    return Plan(layers=layers, base=copy.deepcopy(plan.base), surgery=copy.deepcopy(plan.surgery),
                meta={**{k: v for k, v in plan.meta.items() if k in ("name", "budget")}, **meta})


def _lrs_spec(conv: nn.Conv2d, ranks: Sequence[int], sparse_fraction: float, name: str) -> dict:
    """The LR+S spec with (within one param) the params of ``tucker2`` at ``ranks`` on ``conv``."""
    budget = _tucker2_params(conv, ranks)
    r_out, r_in = (int(r) for r in ranks)
    kh, kw = conv.kernel_size
    numel = conv.weight.numel()
    overhead = conv.out_channels + 1  # row pointers
    # Tucker-2 weights at ranks (s r_out, s r_in): a s^2 + b s
    a = r_out * r_in * kh * kw
    b = conv.in_channels * r_in + conv.out_channels * r_out
    target = (1.0 - sparse_fraction) * budget - _bias(conv)
    s = (-b + math.sqrt(b * b + 4 * a * max(target, 0.0))) / (2 * a)
    while True:
        new = [max(1, min(r_out, round(r_out * s))), max(1, min(r_in, round(r_in * s)))]
        nnz = (budget - _tucker2_params(conv, new) - overhead) // 2
        if nnz >= 1 or new == [1, 1]:
            break
        s *= 0.9
    if nnz < 1:
        raise PlanError(f"layer {name!r}: budget of {budget} params leaves no room for a sparse part")
    nnz = min(nnz, numel)
    density = nnz / numel
    assert int(round(density * numel)) == nnz
    return {"type": "lrs", "ranks": new, "density": density}


def lrs_plan_like(model: nn.Module, tucker_plan: Plan | Mapping[str, Any], sparse_fraction: float) -> Plan:
    """An LR+S plan with the params of ``compress(model, tucker_plan)`` (see the module docstring).

    Each ``tucker2`` layer becomes ``lrs``: ``sparse_fraction`` of its params
    go to the sparse part, the rest to Tucker-2 ranks shrunk by one factor;
    the density fills the layer's budget to within one param. Other specs stay.
    """
    if not 0.0 < sparse_fraction < 1.0:
        raise ValueError(f"lrs_plan_like: sparse_fraction must be in (0, 1), got {sparse_fraction}")
    work, plan = _prepared(model, tucker_plan)
    layers: dict[str, dict] = {}
    for name, spec in plan.layers.items():
        if spec["type"] == "tucker2":
            layers[name] = _lrs_spec(work.get_submodule(name), spec["ranks"], sparse_fraction, name)
        else:
            layers[name] = copy.deepcopy(dict(spec))
    return _derived(plan, layers, {"method": "lrs", "sparse_fraction": sparse_fraction,
                                   "params": plan_params(work, Plan(layers=layers))})


def pruning_plan_like(model: nn.Module, tucker_plan: Plan | Mapping[str, Any]) -> Plan:
    """Magnitude-pruning baseline with the params of ``compress(model, tucker_plan)``.

    Every conv the Tucker plan compresses becomes ``sparse`` at one uniform
    density, chosen so the model's total params match (per-layer rounding
    aside). Other factorised layers of the plan (an ``svd`` linear, say) keep
    their spec; layers outside the plan stay dense.
    """
    work, plan = _prepared(model, tucker_plan)
    target = plan_params(work, plan)
    convs = {name: work.get_submodule(name) for name in plan.factorised()
             if type(work.get_submodule(name)) is nn.Conv2d}
    if not convs:
        raise PlanError("pruning_plan_like: the plan compresses no conv")
    others = {name: spec for name, spec in plan.layers.items() if name not in convs}
    fixed = plan_params(work, Plan(layers=others))
    fixed -= sum(_static(c)[0] for c in convs.values())  # the pruned convs' dense params
    fixed += sum(c.out_channels + 1 + _bias(c) for c in convs.values())  # their row pointers and biases
    numel = sum(c.weight.numel() for c in convs.values())
    density = (target - fixed) / (2 * numel)
    if not 0.0 < density <= 1.0:
        raise PlanError(f"pruning_plan_like: the plan's {target} params need density {density:.4g}, "
                        "outside (0, 1]")
    layers = {name: ({"type": "sparse", "density": density} if name in convs else copy.deepcopy(dict(spec)))
              for name, spec in plan.layers.items()}
    return _derived(plan, layers, {"method": "magnitude-pruning", "density": density,
                                   "params": plan_params(work, Plan(layers=layers))})


def dense_pruning_plan(model: nn.Module, target_params: int, base: Mapping[str, Any] | None = None) -> Plan:
    """Every plain conv of the unmodified ``model`` magnitude-pruned to one density, ``target_params`` in all.

    The baseline a user would try first: the dense network, no surgery and no
    factorisation, pruned to the stored size (values + indices, cost.py's
    definition) of a compressed model -- unlike :func:`pruning_plan_like`,
    which prunes only the convs a Tucker plan compresses, after its surgery.
    """
    convs = {n: m for n, m in model.named_modules() if type(m) is nn.Conv2d and m.groups == 1}
    if not convs:
        raise PlanError("dense_pruning_plan: the model has no plain conv to prune")
    fixed = _static(model)[0] - sum(_static(c)[0] for c in convs.values())
    fixed += sum(c.out_channels + 1 + _bias(c) for c in convs.values())  # row pointers and biases
    numel = sum(c.weight.numel() for c in convs.values())
    density = (target_params - fixed) / (2 * numel)
    if not 0.0 < density <= 1.0:
        raise PlanError(f"dense_pruning_plan: {target_params} params need density {density:.4g}, outside (0, 1]")
    layers = {name: {"type": "sparse", "density": density} for name in convs}
    plan = Plan(layers=layers, base=copy.deepcopy(dict(base)) if base else None,
                meta={"method": "magnitude-pruning", "over": "base", "density": density})
    plan.meta["params"] = plan_params(model, plan)
    return plan


# ----------------------------------------------------------------------------- split

@torch.no_grad()
def tune_split(model: nn.Module, tucker_plan: Plan | Mapping[str, Any],
               fractions: Iterable[float] = DEFAULT_FRACTIONS, images: Tensor | None = None,
               labels: Tensor | None = None, *, batch_size: int = 64,
               bases: Mapping[str, dec.ModeBases] | None = None) -> dict:
    """Pick the LR+S sparse fraction by zero-shot top-1 of the one-shot LR+S model on calibration images.

    ``images`` / ``labels`` must be **training** images held out by the
    caller (never the validation set). For each fraction the model is
    compressed with :func:`lrs_plan_like` (``init="decompose"``, masks at the
    final density, no training) and evaluated in eval mode; ``model`` is not
    changed. Returns ``{"fraction": best, "top1": its accuracy,
    "accuracies": {fraction: top1}, "tucker2_top1": top-1 of the plain
    Tucker-2 model, "plan": the chosen plan as a dict}``. Ties go to the
    first (smallest listed) fraction.
    """
    if images is None or labels is None:
        raise ValueError("tune_split: pass calibration images and labels (held-out TRAIN images, never val)")
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise ValueError("tune_split: no fractions to try")
    _, plan = _prepared(model, tucker_plan)
    # the Tucker-2 bases of a layer do not depend on the ranks: compute them once (not after surgery,
    # which may create new layers)
    if bases is None and not plan.surgery:  # ``bases``: the caller's (calibrated ones, see build_space)
        bases = {name: dec.mode_bases(model.get_submodule(name).weight)
                 for name, spec in plan.layers.items() if spec["type"] == "tucker2"}

    def score(p: Plan) -> float:
        m = compress(copy.deepcopy(model), Plan(layers=p.layers, surgery=plan.surgery), init="decompose",
                     bases=bases)
        return tensor_top1(m, images, labels, batch_size)

    accuracies: dict[float, float] = {}
    plans: dict[float, Plan] = {}
    for f in fractions:
        plans[f] = lrs_plan_like(model, plan, f)
        accuracies[f] = score(plans[f])
    best = max(fractions, key=lambda f: (accuracies[f], -fractions.index(f)))
    return {"fraction": best, "top1": accuracies[best], "accuracies": accuracies,
            "tucker2_top1": score(plan), "plan": plans[best].to_dict()}
