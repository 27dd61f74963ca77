"""The search end to end on a small model: budgets met, baselines at equal size, deterministic."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import timm
import torch

from stresnet import compress
from stresnet.search.budgets import parse_budget
from stresnet.plan import Plan
from stresnet.search.ilp import InfeasibleBudget
from stresnet.search.neighbourhood import AnchorError, near_anchor
from stresnet.search.pipeline import baseline_plan, build_space, run_search, searched_plan
from stresnet.search.report import write_search


@pytest.fixture(scope="module")
def model_and_images() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each block's last BN by default, which leaves no gradient to weigh
    model = timm.create_model("resnet18", num_classes=10, zero_init_last=False).eval()
    return model, torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))


@pytest.fixture(scope="module")
def space(model_and_images):
    model, images, labels = model_and_images
    return build_space(model, images, labels, step=16, progress=False)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_searched_plans_meet_their_budgets_in_the_built_model(model_and_images, space) -> None:
    model = model_and_images[0]
    base = _params(model)
    result = run_search(space, [parse_budget("2x"), parse_budget("8x")])
    for label, ratio in (("2x", 2), ("8x", 8)):
        plan = result.plans[label]
        built = compress(timm.create_model("resnet18", num_classes=10), plan, init="random")
        assert _params(built) == space.size(plan) <= base / ratio
        for method, other in result.baselines[label].items():
            assert space.size(other) <= space.size(plan), method
    # a tighter budget costs more estimated loss
    assert result.plans["8x"].meta["estimated_loss"] > result.plans["2x"].meta["estimated_loss"]


def test_search_is_deterministic(model_and_images, space) -> None:
    """A second build of the space from the same model and images gives the module's space the same plan."""
    again = build_space(*model_and_images, step=16, progress=False)
    assert searched_plan(again, parse_budget("4x")).layers == searched_plan(space, parse_budget("4x")).layers


def test_mse_estimator_needs_no_labels(model_and_images) -> None:
    model, images, _ = model_and_images
    space = build_space(model, images, estimator="mse", step=16, tied=True, progress=False)
    plan = searched_plan(space, parse_budget("4x"))
    assert all(s["ranks"][0] == s["ranks"][1] or s["ranks"][1] == 3 for s in plan.layers.values())


def test_factorise_all_leaves_no_searched_layer_full(model_and_images, space) -> None:
    """The default search keeps the layers whose zero-shot error looks costly full (here the strided 1x1
    shortcuts among them); ``factorise_all`` gives every searched layer a factorised form, as uniform ranks do,
    within the same budget."""
    budget = parse_budget("8x")
    default = searched_plan(space, budget)
    forced_space = build_space(*model_and_images, step=16, progress=False, factorise_all=True)
    forced = searched_plan(forced_space, budget)

    def full(plan) -> list[str]:
        return [n for n in space.options if plan.layers.get(n, {"type": "full"})["type"] == "full"]

    assert "layer4.0.downsample.0" in full(default)
    assert full(forced) == []
    assert forced_space.size(forced) <= space.base_cost["params"] / 8
    assert all(o.spec["type"] != "full" for opts in forced_space.options.values() for o in opts)


def test_search_around_an_anchor_moves_each_rank_at_most_radius_steps(model_and_images, space) -> None:
    """``near_anchor`` keeps, per layer, the anchor's type within ``radius`` grid steps of its ranks: radius 0
    gives back the anchor itself, radius 1 a plan no worse by the tables at the same budget, whose every rank
    sits within one step of the anchor's, and layers the anchor keeps full stay full."""
    model = model_and_images[0]
    budget = parse_budget("4x")
    anchor = baseline_plan(space, "uniform", space.base_cost["params"] / 4)
    kept_full = [n for n in space.options if n not in anchor.layers]
    assert kept_full  # the stem, which uniform ranks never cut
    limits = parse_budget(f"params<={space.size(anchor)},macs<={space.size(anchor, 'macs')}")

    def search(radius: int):
        near = copy.copy(space)
        near.options = near_anchor(space.options, anchor, radius, space.step)
        return searched_plan(near, limits)

    assert search(0).layers == anchor.layers
    moved = search(1)
    assert moved.layers != anchor.layers  # the tables found a better plan next door
    assert moved.meta["estimated_loss"] < space.estimated_loss(anchor)
    assert space.size(moved) <= space.size(anchor) and space.size(moved, "macs") <= space.size(anchor, "macs")
    assert set(moved.layers) == set(anchor.layers)
    for name, spec in moved.layers.items():
        assert all(abs(a - b) <= space.step for a, b in zip(spec["ranks"], anchor.layers[name]["ranks"])), name
    free = searched_plan(space, budget)  # the unrestricted search moves further than one step somewhere
    assert any(abs(a - b) > space.step for n, s in free.layers.items() if n in anchor.layers
               for a, b in zip(s["ranks"], anchor.layers[n]["ranks"]))


def test_an_anchor_outside_the_space_is_one_clear_error(space) -> None:
    name = next(iter(space.options))
    with pytest.raises(AnchorError, match="'fc'.*does not search"):
        near_anchor(space.options, Plan(layers={"fc": {"type": "svd", "rank": 4}}), 1, space.step)
    with pytest.raises(AnchorError, match=f"layer {name!r}: no option .* 0 grid steps"):
        near_anchor(space.options, Plan(layers={name: {"type": "tucker2", "ranks": [5, 3]}}), 0, space.step)
    with pytest.raises(AnchorError, match="radius -1"):
        near_anchor(space.options, Plan(), -1, space.step)


def test_searched_plan_distorts_held_out_outputs_less_than_uniform(model_and_images, space) -> None:
    """What the estimator is for, measured rather than implied by the ILP: on images the tables never
    saw, the decomposed searched plan stays closer to the base's outputs than uniform ranks of no more
    params (and the ILP's objective is what the per-layer tables say about the plan it returns)."""
    model = model_and_images[0]
    budget = parse_budget("4x")
    plan = searched_plan(space, budget)
    uniform = baseline_plan(space, "uniform", space.size(plan))
    assert space.size(uniform) <= space.size(plan) <= space.base_cost["params"] / 4
    assert plan.meta["estimated_loss"] == pytest.approx(space.estimated_loss(plan))
    g = torch.Generator().manual_seed(1)
    held_out = torch.randn(32, 3, 32, 32, generator=g)
    with torch.no_grad():
        ref = model(held_out).log_softmax(1)

        def kl_to_base(p) -> float:
            out = compress(copy.deepcopy(model), p).eval()(held_out).log_softmax(1)
            return float(torch.nn.functional.kl_div(out, ref, log_target=True, reduction="batchmean"))

        searched_kl, uniform_kl = kl_to_base(plan), kl_to_base(uniform)
    assert 0 < searched_kl < uniform_kl


def test_infeasible_budget_names_the_smallest_achievable_size(space) -> None:
    with pytest.raises(InfeasibleBudget, match=r"params.*smallest achievable"):
        searched_plan(space, parse_budget("1000x"))


def test_mixed_budget_respects_each_limit(space) -> None:
    budget = parse_budget("2x,macs<=0.1G")
    plan = searched_plan(space, budget)
    assert space.size(plan, "params") <= space.base_cost["params"] / 2
    assert space.size(plan, "macs") <= 0.1e9


def test_report_and_plans_are_written(space, tmp_path: Path) -> None:
    result = run_search(space, [parse_budget("4x")], baselines=("uniform",))
    report = write_search(result, tmp_path, {"arch": "resnet18", "num_classes": 10})
    assert (tmp_path / "plan_4x.json").is_file() and (tmp_path / "uniform_4x.json").is_file()
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["budgets"]["4x"]["methods"]["searched"]["ratio"] >= 4
    assert set(saved["layers"]) == set(space.options)


def test_analytic_option_costs_equal_the_cost_model_of_built_layers() -> None:
    from stresnet.cost import profile
    from stresnet.layers import Tucker2Conv2d
    from stresnet.search.options import LayerShape

    conv = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False)
    shape = LayerShape.of(conv, (16, 16))
    full, tucker = profile(conv, (32, 16, 16)), profile(Tucker2Conv2d.from_conv(conv, [24, 16]), (32, 16, 16))
    assert shape.full_cost()["params"] == full.params and shape.full_cost()["flash"] == full.flash_bytes
    assert shape.full_cost()["macs"] == full.macs
    cost = shape.cost({"type": "tucker2", "ranks": [24, 16]})
    assert (cost["params"], cost["flash"], cost["macs"]) == (tucker.params, tucker.flash_bytes, tucker.macs)
