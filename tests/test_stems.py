"""The narrowed stem fitted to its base, ST's budgets carried to a 10-class model, and the stem-aware search."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

from stresnet.search.budgets import parse_budget
from stresnet.search.stems import search_with_stems
from stresnet.stem_init import narrowed_stem, select_channels
from stresnet.surgery import apply_surgery
from stresnet.zoo.family import st_budget, st_budget_text


def _layer1_input(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.maxpool(model.act1(model.bn1(model.conv1(x))))


def test_forward_selection_finds_the_columns_the_others_are_made_of() -> None:
    g = torch.Generator().manual_seed(0)
    free = torch.randn(500, 3, generator=g, dtype=torch.float64)
    mixed = free @ torch.randn(3, 5, generator=g, dtype=torch.float64)
    features = torch.cat([mixed[:, :2], free[:, :1], mixed[:, 2:], free[:, 1:]], 1)  # free columns at 2, 6, 7
    chosen = select_channels(features, 3)
    x = features[:, chosen]
    fit = x @ torch.linalg.lstsq(x, features).solution
    assert torch.allclose(fit, features, atol=1e-8)  # any 3 independent columns span it; the choice must be such
    assert len(set(chosen)) == 3


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
    return model


def test_a_full_width_fitted_stem_reproduces_the_base(resnet: torch.nn.Module) -> None:
    images = torch.randn(24, 3, 48, 48)
    fitted = narrowed_stem(resnet, {"stem": {"width": 64, "proj": True}}, images)
    x = torch.randn(4, 3, 48, 48)
    torch.testing.assert_close(_layer1_input(fitted, x), _layer1_input(resnet, x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fitted(x), resnet(x), rtol=1e-4, atol=1e-4)


def test_a_narrowed_fitted_stem_is_far_closer_to_the_base_than_a_random_one(resnet: torch.nn.Module) -> None:
    images = torch.randn(48, 3, 48, 48)
    surgery = {"stem": {"width": 32, "proj": True}}
    fitted = narrowed_stem(resnet, surgery, images)
    random = apply_surgery(copy.deepcopy(resnet), surgery).eval()
    x = torch.randn(8, 3, 48, 48)
    target = _layer1_input(resnet, x)
    err = lambda m: float((_layer1_input(m, x) - target).norm() / target.norm())  # noqa: E731
    assert err(fitted) < 0.5 * err(random)
    assert fitted.conv1.out_channels == 32 and fitted.maxpool.proj.out_channels == 64
    with pytest.raises(ValueError, match="no narrowed stem"):
        narrowed_stem(resnet, {}, images)


def test_st_budgets_are_the_papers_at_1000_classes_and_the_backbones_at_10() -> None:
    # papers.md section 2: params 4.164 M ... 0.628 M, MACs 1.207 G ... 0.124 G at 224 px
    for variant, params, gmacs in (("tiny", 4.164e6, 1.207), ("pico", 0.628e6, 0.124)):
        b1000, b10 = st_budget(variant, 1000), st_budget(variant, 10)
        assert abs(b1000["params"] - params) < 1e3 and abs(b1000["macs"] / 1e9 - gmacs) < 1e-3
        head = 512 * 1000 + 1000 - (512 * 10 + 10)  # the classifier is all that differs
        assert b1000["params"] - b10["params"] == head and b1000["ram"] == b10["ram"]
    assert parse_budget(st_budget_text("pico", 10)).absolute["params"] == st_budget("pico", 10)["params"]


def test_the_stem_search_keeps_every_plan_within_all_four_budgets(resnet: torch.nn.Module) -> None:
    images, labels = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    select = (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    budgets = {"pico": parse_budget(st_budget_text("pico", 10))}
    (best, trials), = search_with_stems(resnet, images, labels, budgets, [None, {"width": 32, "proj": True}],
                                        select, estimator="mse").values()
    assert best is not None and best.stem == {"width": 32, "proj": True}, [t.note for t in trials]
    limits = budgets["pico"].absolute
    assert all(best.cost[m] <= limits[m] for m in limits)
    base_trial = trials[0]  # the full-width stem cannot meet pico's peak RAM at 224 px
    assert base_trial.plan is None and ("ram" in base_trial.note or "infeasible" in base_trial.note)


def test_a_fitted_stem_survives_batchnorm_statistics_being_re_estimated(resnet: torch.nn.Module) -> None:
    # A fine-tune normalises by batch statistics and re-estimates the running ones: the fitted projection's
    # BatchNorm must already hold its true statistics, or the first batches move the start away from the base.
    images = torch.randn(64, 3, 48, 48)
    fitted = narrowed_stem(resnet, {"stem": {"width": 32, "proj": True}}, images)
    x = torch.randn(8, 3, 48, 48)
    before = _layer1_input(fitted, x)
    bn = fitted.maxpool.bn
    bn.reset_running_stats()
    bn.momentum = None  # cumulative average over the batches seen
    bn.train()  # the other BNs keep the base's statistics, which the fit reproduced
    _layer1_input(fitted, images)  # only the stem: the BN sees every image
    bn.eval()
    torch.testing.assert_close(_layer1_input(fitted, x), before, rtol=1e-3, atol=1e-3)
