"""Training stages: ``train_base`` (from random init), ``reinit`` (from-scratch arms), ``admm``, ``finetune``."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RecipeError
from .common import ClassifyRun, State, hardware, require, summary, train_config, train_params


def train_base(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """Train the base from random init (label-smoothed CE, no teacher)."""
    from ...train.engine import finetune

    require(state, "dense", "train_base")
    cfg = train_config(train_params(p), "train_base", run.input_size)
    torch.manual_seed(cfg.seed)
    model = run.base_model()
    result = finetune(model, None, run.split("train"), run.split("val"), out, cfg, resume=run.resume,
                      progress=run.progress)
    state.weights = str(out / "model.safetensors")
    return summary(result)


def reinit(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """Random init (timm's, seeded) of the current architecture: the plan's when there is one, else the base's."""
    from ...plan import Plan, compress
    from ...zoo.hub import save_weights

    seed = int(p.get("seed", 0))
    torch.manual_seed(seed)
    model = run.architecture()
    if state.plan is not None:
        model = compress(model, Plan.load(state.plan), init="random")
    if hasattr(model, "init_weights"):  # timm's ResNet init, over the factor convs too; zero-init last BNs
        model.init_weights()
    else:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    state.weights, state.compressed = str(out / "model.safetensors"), state.plan is not None
    return {"seed": seed, "init": "random (timm init_weights)", "architecture": "plan" if state.plan else "base"}


def admm(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """ADMM rank-constrained training of the dense weights towards the plan."""
    from ...plan import Plan
    from ...train.admm import AdmmConfig, admm_train

    require(state, "plan", "admm")
    require(state, "dense", "admm")
    cfg = train_config(train_params(p), "admm", run.input_size)
    admm_cfg = AdmmConfig(**{k: p[k] for k in ("rho", "updates_per_epoch", "n_iter") if k in p})
    teacher = None if p.get("teacher", "base") == "none" else run.teacher()
    result = admm_train(run.model(state), teacher, Plan.load(state.plan), run.split("train"), run.split("val"), out,
                        cfg, admm_cfg, resume=run.resume, progress=run.progress)
    state.weights = str(out / "model.safetensors")
    return {**summary(result), "admm": result.get("admm")}


def candidates(choose: Any, where: str) -> list[dict]:
    """The training options a ``choose: {option: [values], ...}`` field tries: every combination, in the order
    written (the first one wins a tie)."""
    if not isinstance(choose, dict) or not choose or not all(isinstance(v, list) and v for v in choose.values()):
        raise RecipeError(f"{where}: choose must map training options to non-empty lists of values, "
                          f"e.g. choose: {{lr: [0.01, 0.001]}}")
    return [dict(zip(choose, values)) for values in itertools.product(*choose.values())]


def finetune(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """KD fine-tune of the compressed model (``sparsity``: gradual pruning; ``teacher: none``: plain CE).

    ``choose: {lr: [0.01, 0.001]}`` fine-tunes once per value (``train_on: fit``, each in its own folder) and
    keeps the run with the best top-1 on the selection split: the choice never sees val. ``compare_start: true``
    puts the starting weights (no fine-tune at all) among the candidates, last, so that a tie goes to a
    fine-tune: a start close to its base can lose accuracy in a short fine-tune, and then it is kept as it is."""
    require(state, "compressed", "finetune")
    if p.get("choose") is None:
        return _finetune_once(run, state, p, out)
    tried = candidates(p["choose"], "finetune")  # train_on: fit is checked with the recipe (classify.check)
    weights, runs = state.weights, []
    for values in tried:
        state.weights = weights
        label = "-".join(f"{k}={v}" for k, v in values.items())
        runs.append({"values": values, **_finetune_once(run, state, {**p, **values}, out / label)})
        runs[-1]["weights"] = state.weights
    if p.get("compare_start"):
        from ...data import selection_images
        from ...evaluate import tensor_top1

        state.weights = weights
        x, y = selection_images(run.split("train"), run.input_size)
        runs.append({"values": START, "selection_top1": tensor_top1(run.model(state), x, y), "epochs": 0,
                     "weights": weights})
    best = max(runs, key=lambda r: r["selection_top1"])  # max keeps the first of equals
    state.weights = best.pop("weights")
    for r in runs:
        r.pop("weights", None)
    return {**{k: v for k, v in best.items() if k != "values"}, "chosen": best["values"],
            "chosen_on": "selection split (top-1)", "candidates": runs}


START = "start (no fine-tune)"


def _finetune_once(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    from ...train.engine import finetune as train

    cfg = train_config(train_params(p), "finetune", run.input_size)
    hooks = []
    if p.get("sparsity") is not None:
        from ...train.sparsity import GradualSparsityHook

        hooks.append(GradualSparsityHook(**dict(p["sparsity"])))
    teacher = None if p.get("teacher", "base") == "none" else run.teacher()
    result = train(run.model(state), teacher, run.split("train"), run.split("val"), out, cfg, resume=run.resume,
                   progress=run.progress, hooks=hooks)
    if run.rank == 0 and state.plan:  # the weights travel with the plan that builds their architecture
        (out / "plan.json").write_text(Path(state.plan).read_text())
    state.weights = str(out / "model.safetensors")
    return {**summary(result), "hardware": hardware(),
            **({"sparsity": p["sparsity"]} if p.get("sparsity") is not None else {})}
