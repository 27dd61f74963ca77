"""Training stages: ``train_base`` (from random init), ``reinit`` (from-scratch arms), ``admm``, ``finetune``."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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


def finetune(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """KD fine-tune of the compressed model (``sparsity``: gradual pruning; ``teacher: none``: plain CE)."""
    from ...train.engine import finetune as train

    require(state, "compressed", "finetune")
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
