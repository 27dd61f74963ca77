"""Rank-selection baselines: energy, uniform, EVBMF and scaling to a budget."""

from __future__ import annotations

import numpy as np
import pytest

from stresnet.search.baselines import (energy_rank, scale_to_at_least, scale_to_budget, singular_values, uniform_rank,
                                       vbmf_rank)


def low_rank_plus_noise(rows: int, cols: int, rank: int, noise: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((rows, rank)) @ rng.standard_normal((rank, cols)) if rank else 0.0
    return signal + noise * rng.standard_normal((rows, cols))


# --- energy_rank -------------------------------------------------------------

def test_energy_rank_basic():
    s = np.array([3.0, 2.0, 1.0])  # squares 9, 4, 1 of 14
    assert energy_rank(s, 9 / 14) == 1
    assert energy_rank(s, 0.65) == 2
    assert energy_rank(s, 13 / 14) == 2
    assert energy_rank(s, 0.95) == 3
    assert energy_rank(s, 1.0) == 3


def test_energy_rank_edge_cases():
    assert energy_rank(np.array([1.0, 2.0, 3.0]), 0.6) == 1  # unsorted input is sorted
    assert energy_rank(np.array([5.0, 0.0, 0.0]), 1.0) == 1  # zero tail never needed
    assert energy_rank(np.array([2.0, 1.0]), 0.0) == 1
    assert energy_rank(np.zeros(4), 0.9) == 1
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError):
            energy_rank(np.ones(3), bad)
    with pytest.raises(ValueError):
        energy_rank(np.array([]), 0.5)


# --- uniform_rank ------------------------------------------------------------

@pytest.mark.parametrize(
    ("dim", "ratio", "multiple", "expected"),
    [
        (64, 0.5, 1, 32),
        (64, 0.25, 8, 16),
        (64, 0.3, 8, 16),  # 19.2 -> nearest multiple of 8
        (64, 0.01, 8, 8),  # clamped up to one multiple
        (64, 0.0, 1, 1),  # never zero
        (64, 2.0, 8, 64),  # clamped to dim
        (10, 0.45, 1, 5),  # 4.5 rounds half up
        (5, 0.5, 8, 5),  # multiple larger than dim -> dim
    ],
)
def test_uniform_rank(dim, ratio, multiple, expected):
    assert uniform_rank(dim, ratio, multiple) == expected


def test_uniform_rank_rejects_bad_arguments():
    with pytest.raises(ValueError):
        uniform_rank(0, 0.5)
    with pytest.raises(ValueError):
        uniform_rank(8, -0.5)
    with pytest.raises(ValueError):
        uniform_rank(8, 0.5, 0)


# --- vbmf_rank ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("rows", "cols", "rank", "noise"),
    [(200, 100, 10, 0.1), (100, 200, 10, 0.1), (64, 576, 20, 0.5), (50, 50, 5, 1.0)],
)
def test_vbmf_recovers_true_rank(rows, cols, rank, noise):
    y = low_rank_plus_noise(rows, cols, rank, noise)
    assert vbmf_rank(y) == rank
    assert vbmf_rank(y, sigma2=noise**2) == rank


def test_gram_singular_values_match_lapack_on_wide_matrices():
    """VBMF reads singular values from the Gram matrix (10x faster on a conv's unfolding): the same values as
    LAPACK's SVD, to ``sqrt(eps) * s_max``, rank-deficient, square, pure-noise and zero matrices included."""
    for y in (low_rank_plus_noise(64, 576, 20, 0.0), low_rank_plus_noise(128, 1152, 128, 0.0),
              low_rank_plus_noise(30, 30, 3, 0.0), low_rank_plus_noise(40, 90, 0, 1.0), np.zeros((8, 40))):
        ref = np.linalg.svd(y, compute_uv=False)
        s = singular_values(y)
        assert s.shape == ref.shape and np.all(np.diff(s) <= 0)
        assert np.allclose(s, ref, rtol=0, atol=1e-6 * max(ref[0], 1.0))


def test_vbmf_on_pure_noise_and_zero_returns_at_least_one():
    assert vbmf_rank(low_rank_plus_noise(80, 60, 0, 1.0)) == 1
    assert vbmf_rank(np.zeros((5, 7))) == 1


def test_vbmf_known_noise_too_large_hides_weak_signal():
    y = low_rank_plus_noise(200, 100, 10, 0.1)
    assert vbmf_rank(y, sigma2=1e4) == 1


def test_vbmf_rejects_bad_input():
    with pytest.raises(ValueError):
        vbmf_rank(np.ones(5))
    with pytest.raises(ValueError):
        vbmf_rank(np.ones((3, 3)), sigma2=0.0)


# --- scale_to_budget ---------------------------------------------------------

def test_scale_to_budget_finds_largest_fitting_knob():
    dims = [64, 128, 256]
    make = lambda k: [uniform_rank(d, k) for d in dims]  # noqa: E731
    size = lambda plan: float(sum(plan))  # noqa: E731
    plan = scale_to_budget(make, size, limit=200, lo=0.0, hi=1.0)
    assert size(plan) <= 200
    # The best plan any knob on a fine grid could give that still fits.
    fitting = [make(k) for k in np.linspace(0.0, 1.0, 20001) if size(make(k)) <= 200]
    assert plan == max(fitting, key=size)


def test_scale_to_budget_continuous_knob_is_tight():
    knob = scale_to_budget(lambda k: k, lambda k: 3 * k, limit=1.5, lo=0.0, hi=10.0)
    assert knob <= 0.5 and knob == pytest.approx(0.5, abs=1e-9)


def test_scale_to_budget_returns_hi_when_everything_fits():
    assert scale_to_budget(lambda k: k, lambda k: k, limit=100, lo=0.0, hi=1.0) == 1.0


def test_scale_to_budget_raises_when_lo_does_not_fit():
    with pytest.raises(ValueError, match="limit"):
        scale_to_budget(lambda k: k, lambda k: k + 10, limit=5, lo=0.0, hi=1.0)


# --- scale_to_at_least --------------------------------------------------------

def test_scale_to_at_least_finds_the_smallest_plan_reaching_the_limit():
    dims = [64, 128, 256]
    make = lambda k: [uniform_rank(d, k, 4) for d in dims]  # noqa: E731
    size = lambda plan: float(sum(plan))  # noqa: E731
    plan = scale_to_at_least(make, size, limit=200, lo=0.0, hi=1.0)
    reaching = [make(k) for k in np.linspace(0.0, 1.0, 20001) if size(make(k)) >= 200]
    assert size(plan) >= 200 and plan == min(reaching, key=size)


def test_scale_to_at_least_edges():
    assert scale_to_at_least(lambda k: k, lambda k: k + 10, limit=5, lo=0.0, hi=1.0) == 0.0  # lo already enough
    assert scale_to_at_least(lambda k: k, lambda k: 3 * k, limit=1.5, lo=0.0, hi=10.0) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(ValueError, match="limit"):
        scale_to_at_least(lambda k: k, lambda k: k, limit=5, lo=0.0, hi=1.0)


# --- baseline_rank and baselines built on a ResNet-18 ----------------------------

@pytest.mark.parametrize(
    ("rank", "dim", "step", "floor", "expected"),
    [
        (3.0, 64, 8, 1 / 8, 8),  # rounded up to the grid
        (9.0, 64, 8, 1 / 8, 16),  # never below the criterion's rank
        (1.0, 512, 8, 1 / 8, 64),  # the floor, relative to the mode
        (1.0, 512, 16, 1 / 8, 64),
        (1.0, 512, 8, 0.0, 8),  # no floor: one grid step
        (1.0, 3, 8, 1 / 8, 3),  # an RGB input is never cut
        (1.0, 16, 2, 1 / 8, 16),  # nor any mode of <= KEEP_MODE channels, at any grid
        (100.0, 64, 8, 1 / 8, 64),  # clamped to the mode
    ],
)
def test_baseline_rank(rank, dim, step, floor, expected):
    from stresnet.search.baselines import baseline_rank

    assert baseline_rank(rank, dim, step, floor) == expected


@pytest.fixture(scope="module", params=[8, 16], ids=lambda s: f"step{s}")
def resnet_space(request):
    import timm
    import torch

    from stresnet.search.pipeline import build_space

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).eval()
    return build_space(model, torch.randn(8, 3, 32, 32), estimator="mse", step=request.param, progress=False)


@pytest.mark.parametrize("ratio", [2, 4, 8, 16])
@pytest.mark.parametrize("method", ["uniform", "vbmf", "energy"])
def test_baselines_on_resnet18_keep_sane_ranks_and_fill_their_budget(resnet_space, method, ratio):
    import math

    from stresnet.search.baselines import KEEP_MODE, RANK_FLOOR
    from stresnet.search.pipeline import baseline_plan

    space = resnet_space
    limit = space.base_cost["params"] / ratio
    plan = baseline_plan(space, method, limit)
    size = space.size(plan)
    assert size <= limit
    # 0.8: uniform (one ratio) and VBMF on random weights (every VBMF rank 1) move all layers in one jump
    assert size >= 0.8 * limit, f"{method} at {ratio}x uses only {size / limit:.0%} of its budget"
    assert plan.meta["rank_floor"] == RANK_FLOOR  # resnet18 fits 2x..16x without relaxing the floor
    assert "conv1" not in plan.layers  # the stem (3-channel input) stays full
    for name, spec in plan.layers.items():
        shape = space.shapes[name]
        for r, dim in zip(spec["ranks"], (shape.c_out, shape.c_in)):
            floor = dim if dim <= KEEP_MODE else max(space.step, math.ceil(RANK_FLOOR * dim))
            assert floor <= r <= dim, f"{method} {ratio}x {name}: rank {r} of a {dim}-channel mode"
            assert r == dim or r % space.step == 0


def test_baseline_floor_relaxes_only_when_the_budget_needs_it(resnet_space):
    from stresnet.search.baselines import RANK_FLOOR
    from stresnet.search.pipeline import baseline_plan

    limit = resnet_space.base_cost["params"] / 40
    plan = baseline_plan(resnet_space, "uniform", limit)
    assert resnet_space.size(plan) <= limit
    assert plan.meta["rank_floor"] < RANK_FLOOR
