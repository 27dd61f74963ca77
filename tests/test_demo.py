"""The README's main job runs end to end (small epochs) and its numbers hang together."""
from __future__ import annotations

import math

from stresnet.demo import format_demo_table, run_demo


def test_demo_runs_search_compress_and_finetune(tmp_path) -> None:
    result = run_demo(epochs=1, finetune_epochs=1, ratios=(2, 8), out=tmp_path, progress=False)
    rows = {r["model"]: r for r in result["rows"]}
    base = rows["resnet18 (base)"]
    assert set(rows) == {"resnet18 (base)", "2x searched", "2x uniform", "8x searched", "8x uniform"}
    for name, row in rows.items():
        assert 0.0 <= row["top1_zero_shot"] <= 1.0 and math.isfinite(row["macs"])
        if name != "resnet18 (base)":
            ratio = int(name.split("x")[0])
            assert row["params"] <= base["params"] / ratio and 0.0 <= row["top1_finetuned"] <= 1.0
    assert (tmp_path / "searched_8x.json").is_file() and (tmp_path / "uniform_2x.json").is_file()
    table = format_demo_table(result)
    assert "8x searched" in table and "top-1 fine-tuned" in table
