"""Latency of the evidence arms (issue #18): each arm's architecture is rebuilt from its results JSON and must have
the params its eval measured; the report shows the measured ms and speedup per arm and says which budget is equal.
The bench is replaced by a fake that prices a model by its MACs: no test here times anything."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import stresnet.deploy.evidence_latency as ev_latency
from stresnet.cost import profile
from stresnet.deploy.evidence_latency import arm_plan, evidence_plans, measure_evidence_latency
from stresnet.plan import Plan, build
from stresnet.zoo.report import evidence_markdown, load_evidence

REPO = Path(__file__).resolve().parents[1]
BASE = {"model": "resnet18", "num_classes": 10}
ZOO_8X = "stresnet/zoo/plans/stresnet18_8x.json"


def _params(plan: Plan) -> int:
    return profile(build(plan), (3, 32, 32)).params


def test_arm_plans_follow_the_stages_the_runner_ran() -> None:
    zoo = arm_plan([{"type": "plan", "params": {"file": ZOO_8X}}], BASE, REPO)
    assert zoo.base == {"arch": "resnet18", "num_classes": 10}  # the recipe's head, not the file's
    uniform = arm_plan([{"type": "plan", "params": {"file": ZOO_8X}},
                        {"type": "plan", "params": {"uniform": {"step": 4}}}], BASE, REPO)
    assert uniform.layers != zoo.layers
    assert _params(zoo) <= _params(uniform) <= 1.02 * _params(zoo)  # "at >= arm 1's params"
    searched = arm_plan([{"type": "search", "params": {"budget": "8x"},
                          "result": {"searched": {"layers": {"fc": {"type": "svd", "rank": 4}}}}}], BASE, REPO)
    assert searched.layers == {"fc": {"type": "svd", "rank": 4}}
    pruned = arm_plan([{"type": "plan", "params": {"file": ZOO_8X}},
                       {"type": "lrs_plan", "params": {"method": "prune", "over": "base"}}], BASE, REPO)
    assert pruned.layers == {}  # masks on dense convs: timed dense
    lrs = {"format": "stresnet-plan/1", "base": {"arch": "resnet18"}, "meta": {"sparse_fraction": 0.25},
           "layers": {"layer4.1.conv2": {"type": "lrs", "ranks": [8, 8], "density": 0.01}}}
    tuned = arm_plan([{"type": "plan", "params": {"file": ZOO_8X}},
                      {"type": "lrs_plan", "params": {"method": "lrs"},
                       "result": {"tuning": {"plan": lrs}, "fraction": 0.25}}], BASE, REPO)
    assert tuned.layers == lrs["layers"] and tuned.base == zoo.base  # the split the stage chose, the recipe's head
    with pytest.raises(ev_latency._NotRebuilt, match="do not hold"):  # a given split: its plan was not recorded
        arm_plan([{"type": "lrs_plan", "params": {"method": "lrs", "fraction": 0.25}, "result": {"fraction": 0.25}}],
                 BASE, REPO)
    quoted = arm_plan([{"type": "reference", "params": {}, "result": {"stages": [
        {"type": "plan", "params": {"file": ZOO_8X}}]}}], BASE, REPO)
    assert quoted.layers == zoo.layers


def _world(tmp_path: Path) -> tuple[Path, Path]:
    recipes, results = tmp_path / "recipes", tmp_path / "results"
    recipes.mkdir()
    results.mkdir()
    zoo = Plan.load(REPO / ZOO_8X)
    zoo.base = {"arch": "resnet18", "num_classes": 10}
    good = _params(zoo)
    arms = {"searched": [{"plan": {"file": ZOO_8X}}], "uniform": [{"plan": {"file": ZOO_8X}}],
            "pruned": [{"plan": {"file": ZOO_8X}}], "uniform_direct": [{"plan": {"file": ZOO_8X}}],
            "searched_macs": [{"plan": {"file": ZOO_8X}}]}
    recipe = {"name": "evidence_8x", "evidence": {"variant": "stresnet18_8x"}, "base": BASE, "arms": arms}
    (recipes / "evidence_8x.yaml").write_text(yaml.safe_dump(recipe))

    def row(stages: list, params: int, top1: float, macs: int) -> dict:
        final = {"top1": top1, "top5": 0.99, "images": 100, "params": params, "macs": macs, "flash_bytes": params}
        tune = {"type": "finetune", "params": {}, "result": {"epochs": 2, "seconds": 60.0, "config": {}}}
        return {"stages": [*stages, tune, {"type": "eval", "params": {}, "result": final}], "final": final}

    file_plan = {"type": "plan", "params": {"file": ZOO_8X}, "result": {}}
    done = {"searched": row([file_plan], good, 0.88, 200),
            "uniform": row([file_plan], good + 1, 0.87, 90),  # params disagree with the rebuilt plan: refused
            "pruned": row([file_plan, {"type": "lrs_plan", "params": {"method": "lrs"}}], good, 0.80, 40),
            "uniform_direct": row([file_plan], good + 1, 0.86, 90), "searched_macs": row([file_plan], good, 0.87, 89)}
    (results / "evidence_8x.json").write_text(json.dumps({"name": "evidence_8x", "arms": done}))
    return recipes, results


def test_a_rebuilt_architecture_must_match_the_evaluated_one(tmp_path: Path) -> None:
    recipes, results = _world(tmp_path)
    plans, skipped = evidence_plans(recipes, results, REPO)
    assert sorted(plans) == [("evidence_8x", "searched"), ("evidence_8x", "searched_macs")]
    assert "eval measured" in skipped["evidence_8x", "uniform"]
    assert "lrs_plan" in skipped["evidence_8x", "pruned"]  # an LR+S plan is not in the results: not measured


def test_timed_in_one_run_and_shown_in_the_evidence_table(tmp_path: Path, monkeypatch) -> None:
    def fake_bench(models, input_size, **kwargs):
        assert kwargs["baseline"] == "base" and "base" in models
        macs = {n: profile(m, tuple(input_size)).macs for n, m in models.items()}
        return {"models": {n: {"macs": macs[n], "onnxruntime": {"median_ms": macs[n] / 1e8,
                                                                 "speedup": macs["base"] / macs[n]}}
                           for n in models}, "env": {"other_processes_cores": 0.0}}

    monkeypatch.setattr(ev_latency, "bench_latency", fake_bench)
    recipes, results = _world(tmp_path)
    out = results / "deploy" / "latency_evidence_224px.json"
    result = measure_evidence_latency(recipes, results, REPO, out, input_size=64)
    row = result["arms"]["evidence_8x:searched"]
    assert row["speedup"] == pytest.approx(result["base_ms"] / row["median_ms"]) and row["speedup"] > 1
    assert set(result["skipped"]) == {"evidence_8x:uniform", "evidence_8x:pruned", "evidence_8x:uniform_direct"}
    assert result["arms"]["evidence_8x:searched_macs"]["timed_as"] == "evidence_8x:searched"  # one architecture
    md = evidence_markdown(*load_evidence(recipes, results))
    line = next(x for x in md.splitlines() if x.startswith("| 1 |"))
    assert f"| {row['median_ms']:.2f} | {row['speedup']:.2f}x |" in line
    assert "Equal across arms: params" in md
    assert next(x for x in md.splitlines() if x.startswith("| 2 |")).count("| - |") >= 2  # not measured: dashes


def test_the_equal_compute_verdict_names_its_budget(tmp_path: Path) -> None:
    recipes, results = _world(tmp_path)
    md = evidence_markdown(*load_evidence(recipes, results))
    verdict = next(x for x in md.splitlines() if x.startswith("- Arm 1m"))
    assert "beats arm 2d" in verdict and "at most equal params and MACs" in verdict  # 89 <= 90 MACs, fewer params
    data = json.loads((results / "evidence_8x.json").read_text())
    data["arms"]["searched_macs"]["final"]["macs"] = 91  # over arm 2d's MACs: the verdict must say so
    (results / "evidence_8x.json").write_text(json.dumps(data))
    md = evidence_markdown(*load_evidence(recipes, results))
    assert "the budget is NOT equal" in next(x for x in md.splitlines() if x.startswith("- Arm 1m"))


def _add_arms(recipes: Path, results: Path, top1: dict[str, float]) -> None:
    """Give the tiny evidence_8x these arms (arm 1m's results, each with its own top-1)."""
    recipe = yaml.safe_load((recipes / "evidence_8x.yaml").read_text())
    recipe["arms"].update({kind: [{"plan": {"file": ZOO_8X}}] for kind in top1})
    (recipes / "evidence_8x.yaml").write_text(yaml.safe_dump(recipe))
    data = json.loads((results / "evidence_8x.json").read_text())
    for kind, value in top1.items():
        row = json.loads(json.dumps(data["arms"]["searched_macs"]))
        row["final"]["top1"] = value
        row["stages"][-1]["result"] = row["final"]
        data["arms"][kind] = row
    (results / "evidence_8x.json").write_text(json.dumps(data))


def test_the_calibrated_pair_has_its_own_equal_compute_verdict(tmp_path: Path) -> None:
    """Arms 1mc / 2dc (both built with calibrated bases) are compared with each other, not with 1m / 2d."""
    recipes, results = _world(tmp_path)
    _add_arms(recipes, results, {"searched_macs_cal": 0.85, "uniform_direct_cal": 0.90})
    md = evidence_markdown(*load_evidence(recipes, results))
    verdict = next(x for x in md.splitlines() if x.startswith("- **Arm 1mc"))
    assert "does not beat arm 2dc" in verdict and "ahead by 5.00 pt" in verdict
    assert "at most equal params and MACs" in verdict
    assert "beats arm 2d " in next(x for x in md.splitlines() if x.startswith("- Arm 1m "))  # the pair 1m/2d unchanged


@pytest.mark.parametrize("kind, arm", [("searched_step4_cal", "1sel"), ("searched_step4t_cal", "1t")])
def test_the_chosen_route_is_compared_with_both_uniform_arms(tmp_path: Path, kind: str, arm: str) -> None:
    """A chosen calibrated route (arm 1sel; arm 1t, its tied-rank search) meets its like-for-like uniform arm (2dc)
    and the weight-only one (2d): "at least as accurate as uniform ranks" must hold against the better of the two."""
    recipes, results = _world(tmp_path)
    _add_arms(recipes, results, {kind: 0.85, "uniform_direct_cal": 0.83})
    lines = [x for x in evidence_markdown(*load_evidence(recipes, results)).splitlines() if f"Arm {arm} " in x]
    assert len(lines) == 2
    assert "beats arm 2dc" in lines[0] and "by 2.00 pt" in lines[0] and "at most equal params and MACs" in lines[0]
    assert "does not beat arm 2d**" in lines[1] and "ahead by 1.00 pt" in lines[1]  # arm 2d has 0.86 in _world


def test_the_weight_only_route_meets_its_like_for_like_uniform_arm(tmp_path: Path) -> None:
    """Arm 1sw (the step-4 search with weight-only bases) is compared with arm 2d (uniform ranks, the same bases)."""
    recipes, results = _world(tmp_path)
    _add_arms(recipes, results, {"searched_step4": 0.84})
    lines = [x for x in evidence_markdown(*load_evidence(recipes, results)).splitlines() if "Arm 1sw " in x]
    assert len(lines) == 1
    assert "does not beat arm 2d**" in lines[0] and "ahead by 2.00 pt" in lines[0]  # arm 2d has 0.86 in _world
    assert "at most equal params and MACs" in lines[0]
