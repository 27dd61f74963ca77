"""Global rank selection ILP: optimum, budgets, ram filtering, infeasibility, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stresnet.search.ilp import InfeasibleBudget, Option, solve, total_cost, total_loss


def opt(loss: float, params: float, ram: float = 0.0, flash: float | None = None, macs: float = 0.0) -> Option:
    cost = {"params": params, "flash": 4 * params if flash is None else flash, "macs": macs, "ram": ram}
    return Option(spec={"type": "tucker2", "ranks": [int(params), 1]}, loss=loss, cost=cost)


def brute_force(layers, limits, fixed=None):
    """Best (loss) feasible choice by enumeration, or None."""
    names = sorted(layers)
    best, best_loss = None, np.inf
    for combo in itertools.product(*(range(len(layers[n])) for n in names)):
        choice = dict(zip(names, combo))
        cost = total_cost(layers, choice, fixed)
        if all(cost.get(m, 0.0) <= lim + 1e-9 for m, lim in limits.items()):
            loss = total_loss(layers, choice)
            if loss < best_loss - 1e-12:
                best, best_loss = choice, loss
    return best, best_loss


LAYERS = {
    "a": [opt(0.0, 100), opt(0.1, 50), opt(0.5, 10)],
    "b": [opt(0.0, 100), opt(0.4, 50), opt(0.6, 10)],
}


def test_no_binding_budget_keeps_every_layer_lossless():
    assert solve(LAYERS, {"params": 1000}) == {"a": 0, "b": 0}


def test_binding_budget_compresses_the_cheapest_to_compress_layer():
    # 150 params: compress one layer to 50; "a" loses 0.1 vs "b" 0.4.
    assert solve(LAYERS, {"params": 150}) == {"a": 1, "b": 0}
    # 110: several plans cost 0.5; whichever is returned must fit and be optimal.
    choice = solve(LAYERS, {"params": 110})
    assert total_cost(LAYERS, choice)["params"] <= 110
    assert total_loss(LAYERS, choice) == pytest.approx(brute_force(LAYERS, {"params": 110})[1])
    # 60: both must shrink; a=50,b=10 (0.7) vs a=10,b=50 (0.9)
    assert solve(LAYERS, {"params": 60}) == {"a": 1, "b": 2}


def test_fixed_cost_counts_against_the_budget():
    assert solve(LAYERS, {"params": 200}, fixed_cost={"params": 50}) == {"a": 1, "b": 0}


def test_equal_loss_tie_prefers_cheaper_option():
    layers = {"x": [opt(0.0, 100), opt(0.0, 40), opt(0.0, 40, flash=1)], "y": [opt(0.2, 5), opt(0.2, 3)]}
    # x: options 1 and 2 tie on loss and params; 2 has less flash -> cheaper in tie order.
    assert solve(layers, {"params": 1000}) == {"x": 2, "y": 1}


def test_equal_loss_equal_cost_prefers_earlier_option():
    layers = {"x": [opt(0.3, 10), opt(0.3, 10), opt(0.3, 10)]}
    assert solve(layers, {"params": 100}) == {"x": 0}


def test_tie_across_layers_prefers_cheaper_options():
    layers = {
        "a": [opt(0.0, 20), opt(1.0, 10)],
        "b": [opt(0.0, 20), opt(0.5, 15), opt(1.0, 5)],
    }
    # (a1, b0) and (a0, b2) both lose 1.0; the latter uses the cheapest option of
    # "b" and fewer params in total.
    for order in (layers, dict(reversed(list(layers.items())))):
        assert solve(order, {"params": 30}) == {"a": 0, "b": 2}


def test_equal_loss_plans_prefer_fewest_total_params():
    # Saving >= 50 params needs one compressed layer (loss 1 each); compressing
    # the layer that saves 60 leaves the fewest params.
    savings = [50, 55, 60, 52, 58, 51]
    layers = {f"l{i}": [opt(0.0, 100), opt(1.0, 100 - d)] for i, d in enumerate(savings)}
    choice = solve(layers, {"params": 550})
    assert choice == {f"l{i}": int(d == 60) for i, d in enumerate(savings)}
    assert total_cost(layers, choice)["params"] == 540


def test_ram_is_a_max_filter_not_a_sum():
    layers = {
        "a": [opt(0.0, 100, ram=300), opt(0.2, 60, ram=200)],
        "b": [opt(0.0, 100, ram=250), opt(0.3, 60, ram=100)],
    }
    # Summed ram would be 450 for (a1, b0); as a max it is 250 <= 260.
    assert solve(layers, {"ram": 260}) == {"a": 1, "b": 0}
    assert solve(layers, {"ram": 1000}) == {"a": 0, "b": 0}
    assert total_cost(layers, {"a": 1, "b": 0})["ram"] == 250


def test_mixed_budgets_jointly_bind():
    layers = {
        "a": [opt(0.0, 100, macs=10), opt(0.1, 40, macs=10), opt(0.3, 40, macs=2)],
        "b": [opt(0.0, 100, macs=10), opt(0.2, 50, macs=3)],
    }
    assert solve(layers, {"params": 160}) == {"a": 1, "b": 0}  # macs free
    limits = {"params": 160, "macs": 13}
    choice = solve(layers, limits)
    # (a1, b0) now breaks macs; (a0, b1) at 0.2 beats (a2, b0) at 0.3.
    assert choice == brute_force(layers, limits)[0] == {"a": 0, "b": 1}


def test_infeasible_additive_budget_names_metric_and_smallest_value():
    layers = {"a": [opt(0.0, 1_000_000), opt(0.1, 800_000)], "b": [opt(0.0, 900_000), opt(0.5, 630_000)]}
    with pytest.raises(InfeasibleBudget) as err:
        solve(layers, {"ram": 1e9, "params": 1_000_000})
    msg = str(err.value)
    assert "params<=1.00M" in msg and "1.43M" in msg and "\n" not in msg


def test_infeasible_ram_names_metric_and_smallest_peak():
    layers = {"a": [opt(0.0, 10, ram=4096), opt(0.1, 5, ram=3072)], "b": [opt(0.0, 10, ram=1024)]}
    with pytest.raises(InfeasibleBudget, match=r"ram<=2\.00KiB.*3\.00KiB.*'a'"):
        solve(layers, {"ram": 2048})
    with pytest.raises(InfeasibleBudget, match=r"ram.*5\.00KiB"):
        solve(layers, {"ram": 4096}, fixed_cost={"ram": 5120})


def test_ram_filtering_feeds_the_additive_infeasibility_check():
    # The only option cheap in params is too big in ram.
    layers = {"a": [opt(0.0, 100, ram=10), opt(0.1, 10, ram=999)]}
    with pytest.raises(InfeasibleBudget, match=r"params<=50.*100"):
        solve(layers, {"params": 50, "ram": 100})


def test_budgets_each_feasible_but_not_together():
    layers = {"a": [opt(0.0, 100, macs=1), opt(0.1, 1, macs=100)]}
    with pytest.raises(InfeasibleBudget, match="combination") as err:
        solve(layers, {"params": 50, "macs": 50})
    assert "params<=" in str(err.value) and "macs<=" in str(err.value)


def test_missing_cost_for_limited_metric_is_an_error():
    layers = {"a": [Option({"type": "full"}, 0.0, {"params": 1.0})]}
    with pytest.raises(ValueError, match="macs"):
        solve(layers, {"macs": 10})


def test_result_does_not_depend_on_dict_order():
    rng = np.random.default_rng(3)
    layers = {f"l{i}": [opt(float(rng.integers(0, 3)), float(rng.integers(1, 20))) for _ in range(4)] for i in range(8)}
    limits = {"params": 60}
    forward = solve(layers, limits)
    backward = solve(dict(reversed(list(layers.items()))), limits)
    shuffled = solve({k: layers[k] for k in rng.permutation(list(layers))}, limits)
    assert forward == backward == shuffled
    assert solve(layers, limits) == forward


@pytest.mark.parametrize("seed", range(25))
def test_random_instances_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(1, 5))
    layers = {
        f"L{i}": [
            Option(
                {"i": j},
                float(rng.random()),
                {"params": float(rng.integers(1, 50)), "macs": float(rng.integers(1, 50)), "ram": float(rng.integers(1, 10))},
            )
            for j in range(int(rng.integers(1, 5)))
        ]
        for i in range(n_layers)
    }
    limits = {"params": float(rng.integers(10, 40 * n_layers)), "macs": float(rng.integers(10, 40 * n_layers)), "ram": float(rng.integers(3, 11))}
    best, best_loss = brute_force(layers, limits)
    if best is None:
        with pytest.raises(InfeasibleBudget):
            solve(layers, limits)
        return
    choice = solve(layers, limits)
    assert set(choice) == set(layers)
    cost = total_cost(layers, choice)
    assert cost["params"] <= limits["params"] and cost["macs"] <= limits["macs"] and cost["ram"] <= limits["ram"]
    assert total_loss(layers, choice) == pytest.approx(best_loss, abs=1e-9)


def test_total_cost_adds_fixed_and_maxes_ram():
    choice = {"a": 1, "b": 2}
    layers = {
        "a": [opt(0.0, 100, ram=5), opt(0.1, 50, ram=7)],
        "b": [opt(0.0, 100, ram=1), opt(0.4, 50, ram=2), opt(0.6, 10, ram=3)],
    }
    cost = total_cost(layers, choice, {"params": 1000, "ram": 6})
    assert cost["params"] == 1060 and cost["ram"] == 7 and cost["flash"] == 240
    assert total_loss(layers, choice) == pytest.approx(0.7)


def test_sixty_layers_thirty_options_meets_both_budgets():
    rng = np.random.default_rng(0)
    layers = {}
    for i in range(60):
        size, sens = int(rng.integers(1_000, 100_000)), float(rng.random())
        layers[f"layer{i:02d}"] = [
            Option({"r": j}, sens * (1 - j / 30) ** 2, {"params": float(size * (j + 1) // 30), "macs": 50.0 * size * (j + 1) / 30})
            for j in range(30)
        ]
    base = total_cost(layers, {n: 29 for n in layers})
    choice = solve(layers, {"params": base["params"] / 8, "macs": base["macs"] / 6})
    cost = total_cost(layers, choice)
    assert cost["params"] <= base["params"] / 8 and cost["macs"] <= base["macs"] / 6


def test_tiny_loss_units_do_not_change_the_choice():
    layers = {
        "a": [Option({"r": 0}, 0.0, {"params": 10.0}), Option({"r": 1}, 3.0, {"params": 5.0})],
        "b": [Option({"r": 0}, 0.0, {"params": 10.0}), Option({"r": 1}, 1.0, {"params": 6.0})],
    }
    tiny = {n: [Option(o.spec, o.loss * 1e-12, o.cost) for o in opts] for n, opts in layers.items()}
    assert solve(layers, {"params": 16.0}) == solve(tiny, {"params": 16.0}) == {"a": 0, "b": 1}
