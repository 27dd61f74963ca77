"""Classic per-layer rank-selection heuristics, used as baselines for the ILP.

Each picks ranks from one layer's spectrum alone (VBMF, energy threshold, a
uniform ratio).  To compare them fairly with the searched plan they are scaled
to the same budget with :func:`scale_to_budget`: a single knob (ratio, energy,
multiplier on VBMF ranks) is bisected to the largest value whose plan fits.

Every baseline rank goes through :func:`baseline_rank`, so that no grid makes a
baseline degenerate: ranks are rounded *up* to the grid (never below what the
criterion asks for), a mode of at most :data:`KEEP_MODE` channels (an RGB input)
is never cut, and no mode is cut below ``floor`` (a fraction of its size,
:data:`RANK_FLOOR`). Without the floor a global criterion starves the small,
cheap early layers: at a step-8 grid the energy threshold that fits 8x cut the
stem to ranks [8, 3] and the 64-channel convs to 16, and kept 43 % zero-shot.
"""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import numpy as np
from scipy.optimize import minimize_scalar

__all__ = ["vbmf_rank", "energy_rank", "uniform_rank", "baseline_rank", "scale_to_budget", "scale_to_at_least",
           "KEEP_MODE", "RANK_FLOOR"]

KEEP_MODE = 16  # modes this small (an RGB input) are never cut: it would save almost nothing
RANK_FLOOR = 1 / 8  # no baseline cuts a mode below this fraction of its size (relaxed only if a budget needs it)

T = TypeVar("T")


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """EVBMF shrinkage factor tau(x) for normalised squared singular values x > x_ubar."""
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_free_energy(sigma2: float, L: int, M: int, s: np.ndarray, x_ubar: float) -> float:
    """EVBMF free energy as a function of the noise variance (Nakajima et al. 2013, Thm. 3)."""
    alpha = L / M
    x = s**2 / (M * sigma2)
    big, small = x[x > x_ubar], x[x <= x_ubar]
    t = _tau(big, alpha)
    return float(
        np.sum(small - np.log(small))
        + np.sum(big - t)
        + np.sum(np.log((t + 1) / big))
        + alpha * np.sum(np.log(t / alpha + 1))
    )


def singular_values(y: np.ndarray) -> np.ndarray:
    """Singular values of a wide matrix (``L <= M``), descending, from the eigenvalues of its ``L x L`` Gram
    matrix: a conv's unfolding is up to 9x wider than tall, and this is about 10x faster than LAPACK's SVD there
    (0.07 vs 0.70 s for 512 x 4608), which every search pays per layer for its VBMF baseline. The error is at
    most ``~sqrt(eps) * s_max`` (1e-8 relative, for values near zero), far below the noise level VBMF thresholds
    at: on the shared ResNet-18 base all 38 unfoldings get the same VBMF rank either way."""
    return np.sqrt(np.clip(np.linalg.eigvalsh(y @ y.T), 0.0, None))[::-1]


def vbmf_rank(matrix: np.ndarray, sigma2: float | None = None) -> int:
    """Rank estimated by empirical VBMF (Nakajima et al. 2013); at least 1.

    EVBMF needs no threshold: components whose singular value exceeds
    ``sqrt(M sigma2 (1 + tau_ubar)(1 + alpha / tau_ubar))`` survive.  When
    ``sigma2`` is None the noise variance is chosen by minimising the free
    energy over the analytic range [lower bound, ||Y||^2 / (LM)].
    """
    y = np.asarray(matrix, dtype=np.float64)
    if y.ndim != 2 or y.size == 0:
        raise ValueError(f"vbmf_rank needs a non-empty 2-D matrix, got shape {y.shape}")
    if y.shape[0] > y.shape[1]:
        y = y.T  # the analysis assumes L <= M
    L, M = y.shape
    s = singular_values(y)
    if not np.any(s > 0):
        return 1
    alpha = L / M
    tau_ubar = 2.5129 * math.sqrt(alpha)
    x_ubar = (1 + tau_ubar) * (1 + alpha / tau_ubar)

    if sigma2 is None:
        upper = float(np.sum(s**2)) / (L * M)
        h_bar = max(int(math.ceil(L / (1 + alpha))) - 1, 0)  # largest rank EVBMF can return
        tail = s[h_bar:]
        lower = max(float(tail[0] ** 2) / (M * x_ubar), float(np.mean(tail**2)) / M)
        lower = min(max(lower, upper * 1e-12), upper)
        if lower < upper:
            res = minimize_scalar(
                _evb_free_energy, args=(L, M, s, x_ubar), bounds=(lower, upper), method="bounded"
            )
            sigma2 = float(res.x)
        else:
            sigma2 = upper
    elif sigma2 <= 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")

    threshold = math.sqrt(M * sigma2 * x_ubar)
    return max(1, int(np.sum(s > threshold)))


def energy_rank(singular_values: np.ndarray, energy: float) -> int:
    """Smallest rank keeping ``energy`` of the sum of squared singular values; at least 1."""
    if not 0.0 <= energy <= 1.0:
        raise ValueError(f"energy must be in [0, 1], got {energy}")
    s = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64)).ravel())[::-1]
    if s.size == 0:
        raise ValueError("energy_rank needs at least one singular value")
    kept = np.cumsum(s**2)
    total = kept[-1]
    if total == 0:
        return 1
    # Relative tolerance so that energy=1.0 is not defeated by cumsum rounding.
    r = int(np.searchsorted(kept, energy * total * (1 - 1e-12), side="left")) + 1
    return min(max(r, 1), s.size)


def uniform_rank(dim: int, ratio: float, multiple: int = 1) -> int:
    """``dim * ratio`` rounded (half up) to a multiple of ``multiple``, clamped to [multiple, dim]."""
    if dim < 1 or multiple < 1:
        raise ValueError(f"dim and multiple must be >= 1, got dim={dim}, multiple={multiple}")
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    r = int(math.floor(dim * ratio / multiple + 0.5)) * multiple
    return min(max(r, multiple), dim)


def baseline_rank(rank: float, dim: int, step: int, floor: float = RANK_FLOOR) -> int:
    """A baseline's rank for a mode of ``dim`` channels: ``rank`` (from its criterion) rounded up to the grid
    (multiples of ``step``), at least ``floor * dim`` (also rounded up) and one grid step; ``dim`` when the mode
    has at most :data:`KEEP_MODE` channels or no grid point below it."""
    if dim < 1 or step < 1:
        raise ValueError(f"dim and step must be >= 1, got dim={dim}, step={step}")
    if dim <= max(KEEP_MODE, step):
        return dim
    want = max(float(rank), floor * dim)
    return min(dim, max(step, int(math.ceil(want / step - 1e-9)) * step))


def _ordered(lo: float, hi: float) -> None:
    if not lo <= hi:
        raise ValueError(f"need lo <= hi, got lo={lo}, hi={hi}")


def _boundary(make_plan: Callable[[float], T], good: Callable[[T], bool], good_end: float, bad_end: float,
              iters: int, failure: Callable[[T], str]) -> T:
    """Bisect between a knob that must give a ``good`` plan and one that may not; return the last good plan.

    ``good`` is monotone in the knob, so the good knobs form one interval ending at
    ``good_end``; if even ``bad_end`` is good, its plan is returned. ``failure``
    words the error when ``good_end`` itself is not good.
    """
    best = make_plan(good_end)
    if not good(best):
        raise ValueError(failure(best))
    far = make_plan(bad_end)
    if good(far):
        return far
    for _ in range(iters):
        mid = 0.5 * (good_end + bad_end)
        plan = make_plan(mid)
        if good(plan):
            good_end, best = mid, plan
        else:
            bad_end = mid
    return best


def scale_to_budget(
    make_plan: Callable[[float], T],
    size_of: Callable[[T], float],
    limit: float,
    lo: float,
    hi: float,
    iters: int = 40,
) -> T:
    """Plan for the largest knob in [lo, hi] whose size is <= limit (size monotone in the knob).

    This is how a baseline is brought to equal-or-fewer params than the
    searched plan before comparing accuracy.
    """
    _ordered(lo, hi)
    return _boundary(make_plan, lambda plan: size_of(plan) <= limit, lo, hi, iters,
                     lambda plan: f"even the smallest knob {lo:g} gives size {size_of(plan):g} > limit {limit:g}")


def scale_to_at_least(
    make_plan: Callable[[float], T],
    size_of: Callable[[T], float],
    limit: float,
    lo: float,
    hi: float,
    iters: int = 40,
) -> T:
    """Plan for the smallest knob in [lo, hi] whose size is >= limit (size monotone in the knob).

    The mirror of :func:`scale_to_budget`, for fine-tuned comparisons: the
    baseline gets at least the compared plan's size, so a win over it is not
    bought with fewer parameters.
    """
    _ordered(lo, hi)
    return _boundary(make_plan, lambda plan: size_of(plan) >= limit, hi, lo, iters,
                     lambda plan: f"even the largest knob {hi:g} gives size {size_of(plan):g} < limit {limit:g}")
