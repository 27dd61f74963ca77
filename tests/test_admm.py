"""ADMM rank-constrained training (stresnet.train.admm): projections, the Z/U updates, effect, resume.

Tiny and single-threaded: timm's ``test_resnet`` at 32 px on the conftest
ImageFolder (3 classes x 12 train images -> 4 updates of 8 per epoch).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from stresnet import decompose as dec
from stresnet.plan import Plan, PlanError, compress
from stresnet.train.admm import (AdmmConfig, AdmmHook, admm_train, project_weight, projected_copy,
                                 relative_distance)
from stresnet.train.engine import TrainConfig, finetune

# plain momentum SGD (timm's "sgd" is Nesterov and refuses momentum=0): with so few updates a large rho
# and no momentum keep the inexact W-steps stable
BASE = dict(batch_size=8, input_size=32, lr=0.02, warmup_epochs=0.5, seed=3, workers=0, log_every=100,
            optimizer="momentum", momentum=0.0)
PLAN = Plan(layers={"layer1.0.conv2": {"type": "tucker2", "ranks": [8, 8]},
                    "layer2.0.conv2": {"type": "tt", "ranks": [12, 12]},
                    "layer4.0.conv1": {"type": "svd", "rank": 16},
                    "layer3.0.conv2": {"type": "full"}})


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest: one torch thread


def _base() -> nn.Module:
    import timm

    torch.manual_seed(0)
    # zero_init_last=False: otherwise every residual branch starts switched off and its convs do not matter
    return timm.create_model("test_resnet", num_classes=3, zero_init_last=False)


def _rank(m: torch.Tensor) -> int:
    return int(torch.linalg.matrix_rank(m.double(), rtol=1e-6))


def _x() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def _zero_shot_gap(model: nn.Module, plan: Plan) -> float:
    """Relative change of the logits when ``model`` is decomposed with ``plan`` (eval mode)."""
    model = copy.deepcopy(model).eval()
    compressed = compress(copy.deepcopy(model), plan, init="decompose").eval()
    x = _x()
    a = model(x)
    return float((compressed(x) - a).norm() / a.norm())


# ----------------------------------------------------------------------------- (1) projections

def test_projections_have_the_planned_ranks_and_are_idempotent():
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(12, 10, 3)
    lin = nn.Linear(20, 7)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
    w = conv.weight.detach()

    p = project_weight(conv, {"type": "tucker2", "ranks": [4, 5]})
    assert (_rank(p.reshape(10, -1)), _rank(p.transpose(0, 1).reshape(12, -1))) == (4, 5)
    assert _rank(w.reshape(10, -1)) == 10  # the input was not low-rank

    p = project_weight(conv, {"type": "svd", "rank": 3})
    assert _rank(p.reshape(10, -1)) == 3
    p = project_weight(lin, {"type": "svd", "rank": 2})  # nn.Linear: the plain matrix
    assert p.shape == (7, 20) and _rank(p) == 2
    torch.testing.assert_close(p, dec.project_svd(lin.weight.detach(), 2))

    p = project_weight(conv, {"type": "tt", "ranks": [3, 4]})  # (C_out, k*k, C_in) layout
    t = dec.kernel_to_tt_tensor(p)
    assert (_rank(t.reshape(10, -1)), _rank(t.reshape(10 * 9, 12))) == (3, 4)
    p = project_weight(conv, {"type": "tt", "ranks": [2, 4, 5, 3], "factors": [[2, 5], [3, 4]]})
    t = dec.kernel_to_tt_tensor(p, [[2, 5], [3, 4]])  # (2, 5, 9, 3, 4)
    assert [_rank(t.reshape(n, -1)) for n in (2, 10, 90, 270)] == [2, 4, 5, 3]

    for module, spec in [(conv, {"type": "tucker2", "ranks": [4, 5]}), (conv, {"type": "tucker2", "ranks": [4, 5]}),
                         (conv, {"type": "svd", "rank": 3}), (lin, {"type": "svd", "rank": 2}),
                         (conv, {"type": "tt", "ranks": [3, 4]}),
                         (conv, {"type": "tt", "ranks": [2, 4, 5, 3], "factors": [[2, 5], [3, 4]]})]:
        p = project_weight(module, spec)
        assert p.dtype == module.weight.dtype and not p.requires_grad
        assert (p - module.weight).norm() > 0.1 * module.weight.norm()  # it did project
        torch.testing.assert_close(project_weight(module, spec, weight=p), p, atol=1e-5, rtol=1e-4)


def test_projected_copy_computes_what_the_decomposed_model_computes():
    model = _base().eval()
    proj = projected_copy(model, PLAN).eval()
    assert proj is not model
    for name in PLAN.factorised():
        assert not torch.equal(proj.get_submodule(name).weight, model.get_submodule(name).weight)
    torch.testing.assert_close(proj.get_submodule("layer3.0.conv2").weight, model.get_submodule("layer3.0.conv2").weight)
    with torch.no_grad():
        torch.testing.assert_close(proj(_x()), compress(copy.deepcopy(model), PLAN).eval()(_x()), atol=1e-5, rtol=1e-4)
    # relative_distance: mean over the three factorised layers ("full" is not one)
    weights = [(model.get_submodule(n).weight.detach(), proj.get_submodule(n).weight.detach()) for n in PLAN.factorised()]
    d = [float((w - p).norm() / w.norm()) for w, p in weights]
    assert relative_distance(model, PLAN) == pytest.approx(sum(d) / 3, rel=1e-5)
    assert relative_distance(proj, PLAN) < 1e-5


# ----------------------------------------------------------------------------- (2) ADMM updates

def test_zu_updates_follow_scaled_admm_and_the_schedule():
    model = _base()
    rho = 0.5
    hook = AdmmHook(PLAN, AdmmConfig(rho=rho, updates_per_epoch=2))
    names = list(PLAN.factorised())
    hook.on_train_start(model, steps_per_epoch=4, total_steps=8)
    assert hook.offsets() == [0, 2]
    hook.on_epoch_start(model, 0)  # fresh: Z = Proj(W), U = 0, no Z/U-step
    w0 = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    for n in names:
        torch.testing.assert_close(hook.z[n], project_weight(model.get_submodule(n), PLAN.layers[n]))
        assert torch.count_nonzero(hook.u[n]) == 0
    expect = 0.5 * rho * sum(float((w0[n] - hook.z[n]).pow(2).sum()) for n in names)
    loss = hook.extra_loss(model)
    assert loss.requires_grad and float(loss.detach()) == pytest.approx(expect, rel=1e-5)
    loss.backward()  # d/dW = rho (W - Z + U)
    w = model.get_submodule(names[0]).weight
    torch.testing.assert_close(w.grad, rho * (w0[names[0]] - hook.z[names[0]]))

    def perturb(seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n in names:
                p = model.get_submodule(n).weight
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        return {n: model.get_submodule(n).weight.detach().clone() for n in names}

    hook.on_step_end(model, 1)  # not on the schedule
    assert len(hook.history) == 1 and all(torch.count_nonzero(hook.u[n]) == 0 for n in names)
    w1 = perturb(1)
    z_old = {n: hook.z[n].clone() for n in names}
    hook.on_step_end(model, 2)  # in-epoch step: U = 0 so Z = Proj(W), U = W - Z
    for n in names:
        m = model.get_submodule(n)
        torch.testing.assert_close(hook.z[n], project_weight(m, PLAN.layers[n]))
        torch.testing.assert_close(hook.u[n], w1[n] - hook.z[n])
        assert not torch.equal(hook.z[n], z_old[n])
    u1 = {n: hook.u[n].clone() for n in names}
    w2 = perturb(2)
    hook.on_step_end(model, 4)  # an epoch boundary runs in the next on_epoch_start instead
    assert len(hook.history) == 2
    hook.on_epoch_start(model, 1)
    for n in names:
        m = model.get_submodule(n)
        z = project_weight(m, PLAN.layers[n], weight=w2[n] + u1[n])
        torch.testing.assert_close(hook.z[n], z)
        torch.testing.assert_close(hook.u[n], u1[n] + w2[n] - z)
    expect = 0.5 * rho * sum(float((w2[n] - hook.z[n] + hook.u[n]).pow(2).sum()) for n in names)
    assert float(hook.extra_loss(model).detach()) == pytest.approx(expect, rel=1e-5)
    assert [(r["epoch"], r["step"]) for r in hook.history] == [(0, 0), (0, 2), (1, 4)]
    assert hook.history[2]["distance"] == pytest.approx(relative_distance(model, PLAN), rel=1e-6)


def test_config_validation_names_the_field():
    for kwargs, field in [({"rho": 0.0}, "rho"), ({"rho": -1.0}, "rho"), ({"rho": float("nan")}, "rho"),
                          ({"updates_per_epoch": 0}, "updates_per_epoch"), ({"n_iter": -1}, "n_iter")]:
        with pytest.raises(ValueError, match=f"AdmmConfig.{field}"):
            AdmmConfig(**kwargs)
    assert AdmmConfig().rho == 1e-3 and AdmmConfig().updates_per_epoch == 1


# ----------------------------------------------------------------------------- (3) effect of training

@pytest.fixture(scope="module")
def trained(tree, tmp_path_factory):
    """The start model, 2 epochs of plain training, and 2 epochs of ADMM (rho=20) from the same start."""
    out = tmp_path_factory.mktemp("admm")
    cfg = TrainConfig(epochs=2, **BASE)
    start = _base()
    plain = copy.deepcopy(start)
    finetune(plain, None, tree / "train", tree / "val", out / "plain", cfg, progress=False, hooks=())
    admm = copy.deepcopy(start)
    summary = admm_train(admm, None, PLAN, tree / "train", tree / "val", out / "admm", cfg,
                         AdmmConfig(rho=20.0, updates_per_epoch=1), progress=False)
    return start, plain, admm, summary


def test_admm_makes_the_model_close_to_its_decomposition(trained):
    start, plain, admm, summary = trained
    d0, d_plain, d_admm = (relative_distance(m, PLAN) for m in (start, plain, admm))
    assert d0 > 0.5  # random kernels are far from low rank
    assert d_plain > 0.9 * d0  # plain training does not change that
    assert d_admm < 0.2 * d0
    a = summary["admm"]
    assert a["rho"] == 20.0 and a["updates_per_epoch"] == 1
    assert a["distance_before"] == pytest.approx(d0) and a["distance_after"] == pytest.approx(d_admm)
    # paper schedule: initialisation, then one Z/U-step at the start of epoch 2 (none at the very start)
    assert [(r["epoch"], r["step"]) for r in a["history"]] == [(0, 0), (1, 4)]
    assert a["history"][0]["distance"] == pytest.approx(d0)
    assert summary["finished"] and summary["epochs"] == 2


def test_admm_shrinks_the_zero_shot_gap(trained):
    start, plain, admm, _ = trained
    g0, g_plain, g_admm = (_zero_shot_gap(m, PLAN) for m in (start, plain, admm))
    assert g_admm < 0.6 * g0 and g_admm < 0.4 * g_plain, (g0, g_plain, g_admm)


# ----------------------------------------------------------------------------- (4) resume

def test_stopped_and_resumed_run_matches_uninterrupted(tree, tmp_path):
    # 3 Z/U-steps per epoch of 4 updates (before updates 1, 2, 3 of each epoch): some inside an epoch,
    # one at the boundary, which falls after the checkpoint of epoch 1
    cfg = TrainConfig(epochs=2, **BASE)
    acfg = AdmmConfig(rho=1.0, updates_per_epoch=3)
    start = _base()

    full = copy.deepcopy(start)
    s_full = admm_train(full, None, PLAN, tree / "train", tree / "val", tmp_path / "full", cfg, acfg, progress=False)

    part = copy.deepcopy(start)
    s1 = admm_train(part, None, PLAN, tree / "train", tree / "val", tmp_path / "part", cfg, acfg, progress=False,
                    stop_after_epoch=1)
    assert not s1["finished"] and s1["epochs"] == 1
    ckpt = torch.load(tmp_path / "part" / "last.pt", map_location="cpu", weights_only=True)
    assert [r["step"] for r in ckpt["hooks"][0]["history"]] == [0, 1, 2]
    resumed = copy.deepcopy(start)  # as a new process would: weights and ADMM state come from last.pt
    s2 = admm_train(resumed, None, PLAN, tree / "train", tree / "val", tmp_path / "part", cfg, acfg, resume=True,
                    progress=False)
    assert s2["finished"]

    assert [(r["epoch"], r["step"]) for r in s_full["admm"]["history"]] == [(0, 0), (0, 1), (0, 2), (1, 4), (1, 5),
                                                                            (1, 6)]
    assert s2["admm"]["history"] == s_full["admm"]["history"]
    assert s2["admm"]["distance_after"] == s_full["admm"]["distance_after"]
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["layer1.0.conv2.weight"], start.state_dict()["layer1.0.conv2.weight"])


# ----------------------------------------------------------------------------- (5) errors

def test_unsupported_specs_and_modules_name_the_layer(tree, tmp_path):
    model = _base()
    lrs = Plan(layers={"layer1.0.conv2": {"type": "lrs", "ranks": [4, 4], "density": 0.1}})
    with pytest.raises(PlanError, match=r"layer1\.0\.conv2.*lrs"):
        AdmmHook(lrs, AdmmConfig())
    with pytest.raises(PlanError, match=r"layer1\.0\.conv2"):
        project_weight(model.get_submodule("layer1.0.conv2"), lrs.layers["layer1.0.conv2"], name="layer1.0.conv2")
    with pytest.raises(PlanError, match=r"layer1\.0\.conv2.*lrs"):
        admm_train(model, None, lrs, tree / "train", tree / "val", tmp_path / "x", TrainConfig(epochs=1, **BASE))
    assert not (tmp_path / "x").exists()  # refused before any training
    with pytest.raises(PlanError, match=r"layer1\.0\.bn1.*BatchNorm2d"):
        relative_distance(model, Plan(layers={"layer1.0.bn1": {"type": "svd", "rank": 2}}))
    with pytest.raises(PlanError, match=r"nope"):
        relative_distance(model, Plan(layers={"nope": {"type": "svd", "rank": 2}}))
