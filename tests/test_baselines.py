"""Rank-selection baselines: energy, uniform, EVBMF and scaling to a budget."""

from __future__ import annotations

import numpy as np
import pytest

from stresnet.search.baselines import energy_rank, scale_to_at_least, scale_to_budget, uniform_rank, vbmf_rank


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
