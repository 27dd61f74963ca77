"""Measured onnxruntime latency of every evidence arm, so the evidence cards show compute as measured, not only
params and MACs (issue #18: "equal params is not equal compute").

Latency does not depend on the weights (a magnitude-pruned layer runs dense in onnxruntime: its zeros are
stored, not skipped), so each arm's architecture is rebuilt from what its results JSON records -- the plan
file, the uniform-rank rule, the searched layers -- and timed with random weights. A rebuilt architecture
whose params differ from the arm's recorded eval is refused (an LR+S arm whose split was given, not tuned, has
no plan in its results and is "not measured"), so a card never shows the latency of a model other than the one evaluated. Every arm of
every evidence recipe is timed in one :func:`~stresnet.deploy.latency.bench_latency` run with the dense base,
so every speedup is a ratio within one run.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..cost import profile
from ..plan import Plan, build
from ..resolve import model_from_name
from ..utils.io import atomic_write_json
from .latency import bench_latency

__all__ = ["arm_plan", "evidence_plans", "measure_evidence_latency"]

BASE = "base"


class _NotRebuilt(Exception):
    """The results do not say enough to rebuild this arm's architecture."""


def _key(plan: Plan) -> str:
    """A plan's architecture as text: equal texts, equal networks."""
    return json.dumps({"base": plan.base, "layers": plan.layers, "surgery": plan.surgery}, sort_keys=True)


@lru_cache(maxsize=None)
def _uniform(like: str, step: int) -> Plan:
    """The uniform plan at >= ``like``'s params (the recipe stage's rule); cached, since every uniform arm and seed
    of a variant asks for the same one and each costs a search over the ratio."""
    from ..search.uniform import uniform_plan_at_least

    data = json.loads(like)
    net = model_from_name(data["base"]["arch"], num_classes=data["base"].get("num_classes"))
    plan = uniform_plan_at_least(net, Plan(layers=data["layers"], surgery=data["surgery"]), step=step)
    plan.base = dict(data["base"])
    return plan


def arm_plan(stages: list[Mapping[str, Any]], base: Mapping[str, Any], root: Path) -> Plan:
    """The plan an arm's stages left (dense when none), from its results' ``stages``; paths are relative to
    ``root`` (the repository the recipes ran in)."""
    arch = {"arch": base["model"], **({"num_classes": base["num_classes"]} if base.get("num_classes") else {})}
    plan = Plan(base=dict(arch))
    for stage in stages:
        kind, p, r = stage.get("type"), stage.get("params") or {}, stage.get("result") or {}
        if kind == "reference":
            return arm_plan(r.get("stages") or [], base, root)
        if kind == "search":
            if "family" in p or "layers" not in (r.get("searched") or {}):
                raise _NotRebuilt("a family search (its plan is a run-folder file)")
            plan = Plan(base=dict(arch), layers=dict(r["searched"]["layers"]))
        elif kind == "plan" and "uniform" in p:
            opts = p["uniform"] if isinstance(p["uniform"], dict) else {}
            plan = _uniform(_key(Plan(base=dict(arch), layers=plan.layers, surgery=plan.surgery)),
                            int(opts.get("step", 4)))
        elif kind == "plan" and "file" in p:  # the recipe's base (its head) with the file's layers, as the stage does
            plan = Plan.load(root / p["file"])
            plan.base = dict(arch)
        elif kind == "plan" and "variant" in p:
            from ..zoo.family import family_plan

            plan = family_plan(str(p["variant"]).removeprefix("stresnet_"), num_classes=base.get("num_classes", 1000))
            plan.base = dict(arch)
        elif kind == "lrs_plan":
            tuned = (r.get("tuning") or {}).get("plan")
            if p.get("method") == "prune" and p.get("over") == "base":
                plan = Plan(base=dict(arch))  # masks on the dense convs: onnxruntime runs the dense network
            elif tuned and tuned.get("meta", {}).get("sparse_fraction") == r.get("fraction"):
                plan = Plan.from_dict(tuned)  # the split the stage chose, recorded with its tuning
                plan.base = dict(arch)
            else:
                raise _NotRebuilt(f"an lrs_plan stage ({p.get('method', 'lrs')}) whose plan the results do not hold")
    return plan


def evidence_plans(recipes_dir: Path, results_dir: Path, root: Path) -> tuple[dict, dict]:
    """``({(recipe, arm): plan}, {(recipe, arm): why not})`` for every finished arm of every evidence recipe; a
    rebuilt plan must have the params the arm's eval measured (pruned arms: the dense base's, counted dense)."""
    import yaml

    plans, skipped = {}, {}
    for path in sorted(recipes_dir.glob("evidence_*.yaml")):
        recipe = yaml.safe_load(path.read_text())
        name = str(recipe.get("name", path.stem))
        res = results_dir / f"{name}.json"
        arms = (json.loads(res.read_text()) if res.is_file() else {}).get("arms") or {}
        for arm, row in arms.items():
            if not row.get("final"):
                continue
            try:
                plan = arm_plan(row.get("stages") or [], recipe["base"], root)
            except _NotRebuilt as e:
                skipped[name, arm] = f"not rebuilt: {e}"
                continue
            params = profile(build(plan), (3, 32, 32)).params
            pruned = any(s.get("type") == "lrs_plan" for s in row.get("stages") or [])
            if not pruned and params != row["final"]["params"]:
                skipped[name, arm] = f"rebuilt plan has {params} params, the eval measured {row['final']['params']}"
                continue
            plans[name, arm] = plan
    return plans, skipped


def measure_evidence_latency(recipes_dir: Path, results_dir: Path, root: Path, out: Path, input_size: int = 224,
                             threads: int = 2, iters: int = 50) -> dict:
    """Time every rebuilt arm (each distinct architecture once) and the dense base in one run; write ``out``:
    ``{"arms": {"<recipe>:<arm>": {"median_ms", "speedup", "macs"}}, "skipped": {...}, ...}``."""
    plans, skipped = evidence_plans(recipes_dir, results_dir, root)
    if not plans:
        raise ValueError(f"{results_dir}: no finished evidence arm to time")
    first = next(iter(plans.values()))
    models = {BASE: build(Plan(base=first.base)).eval()}
    first_of: dict[str, str] = {}  # architecture -> the first arm that has it (the name it is timed under)
    timed_as = {}  # "recipe:arm" -> that name
    for (name, arm), plan in plans.items():
        label = timed_as[f"{name}:{arm}"] = first_of.setdefault(_key(plan), f"{name}:{arm}")
        if label not in models:
            models[label] = build(plan).eval()
    size = (3, int(input_size), int(input_size))
    bench = bench_latency(models, size, threads=threads, iters=iters, baseline=BASE, backends=("onnxruntime",))
    rows = {}
    for arm, label in timed_as.items():
        timed = bench["models"][label]
        rows[arm] = {"median_ms": timed["onnxruntime"]["median_ms"], "speedup": timed["onnxruntime"]["speedup"],
                     "macs": timed["macs"], "timed_as": label}
    result = {"input_size": list(size), "threads": int(threads), "iters": int(iters),
              "base_ms": bench["models"][BASE]["onnxruntime"]["median_ms"], "env": bench["env"], "arms": rows,
              "skipped": {f"{n}:{a}": why for (n, a), why in skipped.items()},
              "note": "architectures rebuilt from the results JSONs, random weights; pruned arms run dense"}
    atomic_write_json(out, result)
    return result
