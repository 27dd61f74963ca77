"""``decompose``: apply the plan to the dense weights; zero-shot top-1 (``compare_base`` also measures
decomposing the original base, for ADMM)."""
from __future__ import annotations

from pathlib import Path

from .common import ClassifyRun, State, require


def decompose(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    from ...evaluate import accuracy
    from ...plan import Plan, compress
    from ...zoo.hub import save_weights

    require(state, "plan", "decompose")
    require(state, "dense", "decompose")
    plan = Plan.load(state.plan)
    model = compress(run.model(state), plan, init="decompose")
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    result: dict = {}
    if p.get("eval", True):
        result["zero_shot_top1"] = accuracy(model, run.split("val"), run.input_size)["top1"]
        if p.get("compare_base", False):
            base = compress(run.teacher(), plan, init="decompose")
            result["base_zero_shot_top1"] = accuracy(base, run.split("val"), run.input_size)["top1"]
    state.weights, state.compressed = str(out / "model.safetensors"), True
    return result
