"""``eval``: top-1/top-5 on val, params, MACs, int8 flash and peak RAM, against the base measured the same way."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .common import ClassifyRun, State


def measure(run: ClassifyRun, model: nn.Module) -> dict:
    from ...cost import profile
    from ...evaluate import accuracy

    acc = accuracy(model, run.split("val"), run.input_size)
    prof = profile(model, (3, run.input_size, run.input_size))
    return {"top1": acc["top1"], "top5": acc["top5"], "images": acc["images"], "params": prof.params,
            "macs": prof.macs, "flash_bytes": prof.flash_bytes, "peak_ram_bytes": prof.peak_ram_bytes}


def evaluate(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    row = measure(run, run.model(state))
    if "base" not in run.results:
        run.results["base"] = {"model": run.base["model"], "checkpoint": run.base.get("checkpoint"),
                               **measure(run, run.teacher())}
    base = run.results["base"]
    row["compression"] = {"params": base["params"] / row["params"], "macs": base["macs"] / row["macs"],
                          "flash": base["flash_bytes"] / row["flash_bytes"]}
    row["top1_drop_points"] = 100 * (base["top1"] - row["top1"])
    return row
