"""The decomposition benchmark runs and reports consistent numbers (its speed is for `stresnet bench`, not tests)."""
from __future__ import annotations

from stresnet.deploy import bench_decompose, format_bench


def test_bench_decompose_reports_both_methods_on_the_same_layers() -> None:
    result = bench_decompose(repeats=1, max_layers=2, n_candidates=4)
    assert [r["layer"] for r in result["layers"]] == ["layer1.0.conv1", "layer1.0.conv2"]
    for row in result["layers"]:
        assert row["ranks"] == [16, 16]
        # both reach a real truncation error, ours (HOSVD + 1 HOOI sweep) close to tensorly's HOOI
        assert 0 < row["err_tensorly"] <= row["err_ours"] * 1.001 and row["err_ours"] < 1.05 * row["err_tensorly"]
    assert result["speedup"] > 0 and "speedup vs tensorly" in format_bench(result)
