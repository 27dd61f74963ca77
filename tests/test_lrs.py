"""Low-rank + sparse and magnitude pruning at the params of a Tucker-2 plan: schedule, hook, budgets, resume.

Tiny models, one torch thread; the budget test uses timm resnet18 (10 classes) with the zoo's 8x plan at 32 px.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch import nn

from stresnet import Plan, compress, plan_of
from stresnet.cost import profile
from stresnet.layers import LowRankSparseConv2d, MaskedConv2d
from stresnet.train.engine import TrainConfig, finetune
from stresnet.train.sparsity import (GradualSparsityHook, cubic_density, lrs_plan_like, plan_params,
                                     pruning_plan_like, sparse_layers, tune_split)

REPO = Path(__file__).resolve().parents[1]
ZOO_8X = REPO / "stresnet" / "zoo" / "plans" / "stresnet18_8x.json"
CLASSES = 3
BASE = dict(batch_size=8, input_size=32, lr=0.02, warmup_epochs=0.5, seed=3, workers=0, log_every=100)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: one torch thread


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5),
    )
    with torch.no_grad():  # non-trivial BN statistics, so eval mode is not the identity
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


TINY_TUCKER = {"layers": {"3": {"type": "tucker2", "ranks": [8, 6]}, "6": {"type": "tucker2", "ranks": [8, 8]}}}


# ----------------------------------------------------------------------------- schedule

def test_cubic_density_endpoints_shape_and_monotone() -> None:
    assert cubic_density(0, 100, 1.0, 0.1) == 1.0
    assert cubic_density(50, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert cubic_density(100, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert cubic_density(25, 100, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 ** 3)
    # constant before begin and after end
    assert cubic_density(10, 100, 0.8, 0.2, begin=0.2, end=0.6) == 0.8
    assert cubic_density(70, 100, 0.8, 0.2, begin=0.2, end=0.6) == pytest.approx(0.2)
    values = [cubic_density(s, 100, 1.0, 0.05, begin=0.1, end=0.7) for s in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    # the cubic prunes fastest at the start: the first step of pruning removes more than the last
    drops = [a - b for a, b in zip(values, values[1:]) if a > b]
    assert drops[0] > drops[-1]
    with pytest.raises(ValueError):
        cubic_density(1, 10, 1.0, 0.1, begin=0.6, end=0.5)


# ----------------------------------------------------------------------------- plans and layers

def _tiny_mixed() -> Plan:
    return Plan.from_dict({"layers": {"3": {"type": "lrs", "ranks": [6, 4], "density": 0.1},
                                      "6": {"type": "sparse", "density": 0.2}}})


def test_hook_reaches_target_nnz_and_pruned_weights_are_zero() -> None:
    model = compress(_net(), _tiny_mixed())
    hook = GradualSparsityHook(start_density=1.0, end=0.5, update_every=3)
    hook.on_train_start(model, 5, 20)
    layers = sparse_layers(model)
    assert [name for name, _, _ in layers] == ["3.sparse", "6"]
    assert all(int(m.mask.sum()) == m.weight.numel() for _, m, _ in layers)  # start_density 1: dense
    previous = {name: m.mask.clone() for name, m, _ in layers}
    g = torch.Generator().manual_seed(0)
    for step in range(1, 21):
        with torch.no_grad():  # an optimizer step moves every weight, pruned ones included
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
        hook.on_step_end(model, step)
        for name, m, target in layers:
            assert torch.all(m.weight[m.mask == 0] == 0)
            assert torch.all(m.mask <= previous[name])  # masks only shrink
            previous[name] = m.mask.clone()
            if step >= 10:  # end = half of the 20 updates
                assert int(m.mask.sum()) == round(target * m.weight.numel())
    assert {name: t for name, _, t in layers} == {"3.sparse": 0.1, "6": 0.2}
    assert hook.state_dict() == {"step": 20, "total": 20}


def test_start_density_one_reproduces_the_dense_model() -> None:
    base = _net()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = base(x)
    for plan in (_tiny_mixed(), lrs_plan_like(base, TINY_TUCKER, 0.3), pruning_plan_like(base, TINY_TUCKER)):
        model = compress(copy.deepcopy(base), plan).eval()
        with torch.no_grad():
            assert not torch.allclose(model(x), ref, atol=1e-3)  # one-shot at the final density
            GradualSparsityHook().on_train_start(model, 10, 100)
            assert torch.allclose(model(x), ref, atol=1e-4)  # L + full residual = W


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=10).eval()


def test_plans_like_match_the_tucker_params(resnet18: nn.Module) -> None:
    tucker = Plan.load(ZOO_8X)
    size = (3, 32, 32)
    target = profile(compress(copy.deepcopy(resnet18), tucker, init="random"), size).params
    assert plan_params(resnet18, tucker) == target

    lrs = lrs_plan_like(resnet18, tucker, 0.25)
    assert lrs.layers.keys() == tucker.layers.keys() and {s["type"] for s in lrs.layers.values()} == {"lrs"}
    model = compress(copy.deepcopy(resnet18), lrs)
    got = profile(model, size).params
    assert abs(got - target) <= 1e-3 * target and got == plan_params(resnet18, lrs) == lrs.meta["params"]
    assert plan_of(model).layers == lrs.layers
    for name, spec in lrs.layers.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, LowRankSparseConv2d)
        conv = resnet18.get_submodule(name)
        numel = conv.weight.numel()
        nnz = int(layer.sparse.mask.sum())
        assert nnz == round(spec["density"] * numel) > 0
        assert all(r <= r0 for r, r0 in zip(spec["ranks"], tucker.layers[name]["ranks"]))
        # the layer's honest count: Tucker-2 kernels + CSR (value + index per nonzero, C_out + 1 row pointers)
        lowrank = sum(p.numel() for p in layer.lowrank.parameters())
        r_out, r_in = tucker.layers[name]["ranks"]
        budget = conv.in_channels * r_in + r_in * r_out * conv.weight[0, 0].numel() + r_out * conv.out_channels
        assert budget - 1 <= lowrank + 2 * nnz + conv.out_channels + 1 <= budget
        sparse_share = (2 * nnz + conv.out_channels + 1) / budget
        assert 0.15 < sparse_share < 0.35

    pruned_plan = pruning_plan_like(resnet18, tucker)
    assert pruned_plan.layers.keys() == tucker.layers.keys()
    densities = {s["density"] for s in pruned_plan.layers.values()}
    assert len(densities) == 1 and {s["type"] for s in pruned_plan.layers.values()} == {"sparse"}
    pruned = compress(copy.deepcopy(resnet18), pruned_plan)
    got = profile(pruned, size).params
    assert abs(got - target) <= 1e-3 * target and got == pruned_plan.meta["params"]
    masked = [m for m in pruned.modules() if isinstance(m, MaskedConv2d)]
    assert len(masked) == len(tucker.layers)
    assert sum(int(m.mask.sum()) for m in masked) == pytest.approx(
        densities.pop() * sum(m.weight.numel() for m in masked), abs=len(masked))


# ----------------------------------------------------------------------------- resume

RESUME_PLAN = {"layers": {"layer1.0.conv2": {"type": "lrs", "ranks": [8, 8], "density": 0.1},
                          "layer2.0.conv2": {"type": "lrs", "ranks": [12, 12], "density": 0.05},
                          "layer4.0.conv1": {"type": "sparse", "density": 0.1}}}


def _students():
    torch.manual_seed(0)
    base = timm.create_model("test_resnet", num_classes=CLASSES).eval()
    return compress(copy.deepcopy(base), RESUME_PLAN), base


def _hook() -> GradualSparsityHook:
    # 2 epochs x 4 updates: masks recomputed at 3, 6 (= end 0.75 * 8) and 8; the resume at 4 falls between
    return GradualSparsityHook(start_density=1.0, end=0.75, update_every=3)


def test_resume_matches_uninterrupted_run(tree: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, **BASE)
    student, teacher = _students()
    ref = finetune(student, teacher, tree / "train", tree / "val", tmp_path / "ref", cfg, progress=False,
                   hooks=[_hook()])
    ref_state = {k: v.clone() for k, v in student.state_dict().items()}
    for _, m, target in sparse_layers(student):
        assert int(m.mask.sum()) == round(target * m.weight.numel())
        assert torch.all(m.weight[m.mask == 0] == 0)

    out = tmp_path / "resumed"
    student, teacher = _students()
    first = finetune(student, teacher, tree / "train", tree / "val", out, cfg, progress=False,
                     stop_after_epoch=1, hooks=[_hook()])
    assert not first["finished"]
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["hooks"] == [{"step": 4, "total": 8}]
    student, teacher = _students()  # a fresh process: masks and step must come from last.pt
    summary = finetune(student, teacher, tree / "train", tree / "val", out, cfg, resume=True, progress=False,
                       hooks=[_hook()])
    state = student.state_dict()
    assert state.keys() == ref_state.keys()
    assert all(torch.equal(state[k], ref_state[k]) for k in ref_state)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(summary["metrics"]) == strip(ref["metrics"])


# ----------------------------------------------------------------------------- split

def test_tune_split_returns_the_argmax() -> None:
    base = _net()
    images = torch.randn(48, 3, 16, 16)
    with torch.no_grad():
        labels = base(images).argmax(1)  # the base is right on all of them: the split changes the score
    fractions = (0.1, 0.3, 0.5, 0.7)
    result = tune_split(base, TINY_TUCKER, fractions, images, labels, batch_size=16)
    acc = result["accuracies"]
    assert list(acc) == list(fractions) and all(0.0 <= a <= 1.0 for a in acc.values())
    assert result["fraction"] == max(fractions, key=lambda f: acc[f]) and result["top1"] == max(acc.values())
    assert 0.0 <= result["tucker2_top1"] <= 1.0
    assert Plan.from_dict(result["plan"]).layers == lrs_plan_like(base, TINY_TUCKER, result["fraction"]).layers
    with pytest.raises(ValueError, match="TRAIN"):
        tune_split(base, TINY_TUCKER, fractions)


@pytest.mark.parametrize("density", [0.0, 0.013, 0.1, 0.5, 0.97, 1.0])
def test_topk_mask_is_the_stable_sorts_mask_ties_included(density):
    """The magnitude mask keeps exactly the entries a stable descending sort keeps: the largest, ties at the
    threshold broken by index (quantised weights and all-zero residuals have many)."""
    from stresnet.layers.common import topk_mask

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, 3, 3, generator=g)
    for values in (w, torch.round(w * 2) / 2, torch.zeros(16, 8), -w[:5]):
        keep = int(round(density * values.numel()))
        order = torch.argsort(values.abs().flatten(), descending=True, stable=True)[:keep]
        expected = torch.zeros(values.numel(), dtype=values.dtype)
        expected[order] = 1
        mask = topk_mask(values, density)
        assert mask.dtype == values.dtype and torch.equal(mask, expected.reshape(values.shape))
