"""Stages that hand results on: ``publish`` (a Hub-ready folder, registry, local Hub cache) and ``reference``
(the results of another recipe, an arm shared between comparisons)."""
from __future__ import annotations

import json
from pathlib import Path

from ..config import RecipeError, weights_registry_out
from .common import ClassifyRun, State


def publish(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    from ...zoo.hub import publish_run

    if "name" not in p:
        raise RecipeError("stage publish: 'name' (e.g. stresnet18_8x.imagenette) is required")
    metrics = run.arm_results().get("final")
    if metrics is None:
        raise RecipeError("stage publish: needs an 'eval' stage before it (the card quotes measured numbers)")
    model = run.model(state)
    return publish_run(model, p["name"], out, metrics, run.results["command"],
                       registry=weights_registry_out() if p.get("register", True) else None,
                       install_cache=bool(p.get("install_cache", True)))


def reference(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """The results of ``recipe``, read beside this run's results JSON (else from ``recipes/results/`` of the
    current folder, the CLI's default); its fine-tune config must equal ``expect_finetune`` when given."""
    recipe = Path(p.get("recipe", ""))
    candidates = [run.results_path.parent / f"{recipe.stem}.json", Path("recipes/results") / f"{recipe.stem}.json"]
    path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise RecipeError(f"stage reference: {path} does not exist: run 'stresnet recipe run {recipe}' first")
    other = json.loads(path.read_text())
    if p.get("arm"):  # one arm of a recipe with arms
        arm = (other.get("arms") or {}).get(p["arm"])
        if arm is None or "final" not in arm:
            raise RecipeError(f"stage reference: {path} has no finished arm {p['arm']!r}: "
                              f"run 'stresnet recipe run {recipe} --arms {p['arm']}' first")
        other = {**other, **arm}
    elif "final" not in other and other.get("arms"):
        raise RecipeError(f"stage reference: {recipe} has arms ({', '.join(other['arms'])}): name one with 'arm'")
    if "final" not in other:
        raise RecipeError(f"stage reference: {path} has no final eval: finish 'stresnet recipe run {recipe}' first")
    expect = p.get("expect_finetune")
    if expect is not None:
        done = [s["result"]["config"] for s in other["stages"] if s["type"] == "finetune"]
        mismatch = [k for k, v in expect.items() if not done or done[-1].get(k) != v]
        if mismatch:
            raise RecipeError(f"stage reference: {recipe} fine-tuned with another {mismatch[0]} than this comparison")
    return {"recipe": str(recipe), "command": other.get("command"), "final": other["final"],
            "stages": other["stages"], "base": other.get("base"), "hardware": other.get("hardware")}
