"""The decomposition benchmark runs and reports consistent numbers (its speed is for `stresnet bench`, not tests)."""
from __future__ import annotations

import itertools
import math

import pytest

from stresnet.deploy import decompose_bench as bench
from stresnet.deploy.decompose_bench import bench_decompose, format_bench


def test_bench_decompose_reports_both_methods_on_the_same_layers() -> None:
    result = bench_decompose(repeats=1, max_layers=2, n_candidates=4)
    assert [r["layer"] for r in result["layers"]] == ["layer1.0.conv1", "layer1.0.conv2"]
    for row in result["layers"]:
        assert row["ranks"] == [16, 16]
        # both reach a real truncation error, ours (HOSVD + 1 HOOI sweep) close to tensorly's HOOI
        assert 0 < row["err_tensorly"] <= row["err_ours"] * 1.001 and row["err_ours"] < 1.05 * row["err_tensorly"]
        for key in ("ours_s", "tensorly_s", "one_rank_s", "many_ranks_s"):
            assert 0 < row[key] < math.inf, key
    # the ratios are the run's own timings, summed over its layers
    rows = result["layers"]
    assert result["speedup"] == pytest.approx(sum(r["tensorly_s"] for r in rows) / sum(r["ours_s"] for r in rows))
    assert result["candidates_cost_ratio"] == pytest.approx(
        sum(r["many_ranks_s"] for r in rows) / sum(r["one_rank_s"] for r in rows))
    assert f"{result['speedup']:.1f}x" in format_bench(result)


def test_bench_ratios_come_from_the_timings_it_measured(monkeypatch) -> None:
    """With a fake timer that hands out known, distinct times, every reported time is one it measured
    and the speedup is tensorly's total over ours, not a constant or the inverse."""
    given = itertools.count(1)
    measured: list[float] = []

    def fake_best_time(fn, repeats: int) -> float:
        fn()
        measured.append(float(next(given)))
        return measured[-1]

    monkeypatch.setattr(bench, "_best_time", fake_best_time)
    result = bench_decompose(repeats=1, max_layers=2, n_candidates=2)
    rows = result["layers"]
    reported = sorted(r[k] for r in rows for k in ("ours_s", "tensorly_s", "one_rank_s", "many_ranks_s"))
    assert reported == measured == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    ours, theirs = sum(r["ours_s"] for r in rows), sum(r["tensorly_s"] for r in rows)
    assert ours != theirs and result["speedup"] == pytest.approx(theirs / ours)
    assert f"{theirs / ours:.1f}x" in format_bench(result)
