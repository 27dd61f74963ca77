"""Stages that set the plan: ``search`` (CompressNAS), ``plan`` (a file, a family variant, uniform ranks),
``lrs_plan`` (LR+S or magnitude pruning at the current plan's params)."""
from __future__ import annotations

from pathlib import Path

from ..config import RecipeError, input_path
from .common import ClassifyRun, State, calibrated_bases, calibration_draw, require


def search(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """CompressNAS: estimator tables + ILP at ``budget``; sets the plan. ``calibrated: true``: calibrated
    decompositions (scored here, built by the later stages on the same images). ``tied: true``: one rank for both
    channel modes of each layer (as STResNet; ``stresnet search --tied-ranks``). ``factorise_all: true``: no searched
    layer stays full (``--factorise-all``). ``around: plan`` (the current plan, e.g. uniform ranks) or a plan file:
    search only within ``radius`` (default 1) grid steps of its ranks (``--around``). ``cost_size``: price MACs, RAM and
    latency at that input size (e.g. 224 while calibrating at the recipe's 128); a ``latency<=`` term times the
    options on this machine first (:func:`_latency_source`). ``family: stresnet_pico``: the structure search
    at that ST variant's four budgets instead (:func:`family_search`)."""
    from ...plan import Plan, PlanError
    from ...search.budgets import BudgetError
    from ...search.latency_costs import LatencyError
    from ...search.run import ESTIMATOR, STEP, search_and_write

    require(state, "dense", "search")
    if "family" in p:
        return family_search(run, state, p, out)
    budget = str(p.get("budget", "8x"))
    cost_size = int(p["cost_size"]) if "cost_size" in p else None
    draw = calibration_draw(p)  # the draw a calibrated search's bases are fitted on
    calib, seed = draw["images"], draw["seed"]
    around = p.get("around")
    if around == "plan":
        require(state, "plan", "search (around: plan)")
        around = state.plan
    try:
        anchor = Plan.load(input_path(around)) if around is not None else None
        report = search_and_write(run.base["model"], Path(state.weights) if state.weights else None, run.data,
                                  [budget], out, num_classes=run.base.get("num_classes"), size=run.input_size,
                                  calib=calib, step=int(p.get("step", STEP)), tied=bool(p.get("tied", False)),
                                  estimator=str(p.get("estimator", ESTIMATOR)), seed=seed,
                                  progress=run.progress, search_space=str(p.get("space", "compressnas")),
                                  latency=_latency_source(run, p, out), cost_size=cost_size,
                                  calibrated=bool(p.get("calibrated", False)),
                                  factorise_all=bool(p.get("factorise_all", False)), around=anchor,
                                  radius=int(p.get("radius", 1)))
    except (BudgetError, LatencyError, PlanError) as e:
        raise RecipeError(f"stage search: {e}") from None
    row = next(iter(report["budgets"].values()))
    state.plan = str(out / f"plan_{next(iter(report['budgets']))}.json")
    state.calibration = draw if p.get("calibrated") else None
    result = {"budget": budget, "plan": state.plan, "seconds": report["seconds"], "searched": row["methods"]["searched"]}
    if "latency" in report:  # the table's prediction for the dense base and the plan, and the limit in ms
        from ...search.budgets import parse_budget

        limits = parse_budget(budget).limits({"params": 1.0, "latency": report["latency"]["dense_ms"]})
        result["latency"] = {**report["latency"], "cost_size": cost_size or run.input_size,
                             "limit_ms": limits.get("latency"),
                             "predicted_ms": row["methods"]["searched"].get("predicted_latency_ms")}
    if report.get("around"):
        result["around"] = {**report["around"], "plan": str(around)}
    if p.get("expect_plan"):  # the packaged zoo plan must be what this search finds
        expected = Plan.load(input_path(p["expect_plan"]))
        result["matches_expected_plan"] = Plan.load(state.plan).layers == expected.layers
    return result


def _latency_source(run: ClassifyRun, p: dict, out: Path):
    """The measured latency table a ``latency<=`` budget (or ``latency_cache``) asks for: onnxruntime on this
    machine at ``latency_threads`` (default 2) threads, cached in ``latency_cache`` (default: the stage's own
    folder, so a resumed search times nothing twice). ``None`` when the budget has no latency term."""
    from functools import partial

    from ...deploy.latency_table import LatencyTable, search_latency
    from ...search.budgets import parse_budget

    if "latency" not in parse_budget(str(p.get("budget", "8x"))).metrics and "latency_cache" not in p:
        return None
    cache = input_path(p["latency_cache"]) if "latency_cache" in p else out / "latency_table.json"
    return partial(search_latency, table=LatencyTable.load(cache), threads=int(p.get("latency_threads", 2)),
                   progress=run.progress)


def family_search(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """The stem-aware search (:mod:`stresnet.search.stems`) at the four budgets (params, int8 flash, MACs, peak
    RAM at ``budget_size`` px) of ST's ``family`` variant with this recipe's head; the stem options are
    ``stems`` (``null`` is the base's own stem; default: the base's and ST's narrowed 32-channel stem)."""
    from ...search.family_run import search_family_and_write
    from ...search.run import ESTIMATOR
    from ...zoo.family import VARIANTS, family_plan, st_budget_text

    variant = str(p["family"]).removeprefix("stresnet_")
    if variant not in VARIANTS:
        raise RecipeError(f"stage search: family {p['family']!r} is not one of "
                          + ", ".join(f"stresnet_{v}" for v in VARIANTS))
    classes = int(run.base.get("num_classes", 1000))
    size = int(p.get("budget_size", 224))
    label = f"stresnet_{variant}"
    stems = p.get("stems", [None, {"width": 32, "proj": True}])
    report = search_family_and_write(
        run.base["model"], Path(state.weights) if state.weights else None, run.data,
        {label: st_budget_text(variant, classes, size)}, {label: family_plan(variant, classes)}, out, stems,
        num_classes=classes, size=run.input_size, cost_size=size, calib=int(p.get("calib", 256)),
        step=int(p.get("step", 8)), estimator=str(p.get("estimator", ESTIMATOR)), seed=int(p.get("seed", 0)),
        progress=run.progress)
    row = report["budgets"][label]
    if "plan" not in row:
        notes = "; ".join(f"{t['label']}: {t['note']}" for t in row["trials"])
        raise RecipeError(f"stage search: no stem option fits the {label} budgets ({notes})")
    state.plan = row["plan"]
    result = {"family": label, "budget": row["budget"], "plan": state.plan, "chosen_stem": row["chosen_stem"],
              "trials": [{k: t[k] for k in ("label", "cost", "select_top1", "note", "seconds")} for t in row["trials"]],
              "seconds": report["seconds"]}
    if p.get("expect_plan"):  # the packaged zoo plan must be what this search finds
        from ...plan import Plan

        found, expected = Plan.load(state.plan), Plan.load(input_path(p["expect_plan"]))
        result["matches_expected_plan"] = (found.layers, found.surgery) == (expected.layers, expected.surgery)
    return result


def plan(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """A fixed plan (``file`` or family ``variant``), or ``uniform``: the smallest uniform-rank plan with at
    least the current plan's params."""
    from ...plan import Plan

    if "uniform" in p:  # the uniform-rank baseline of the current plan, at >= its params
        from ...search.uniform import uniform_plan_at_least

        require(state, "plan", "plan (uniform)")
        opts = p["uniform"] if isinstance(p["uniform"], dict) else {}
        new = uniform_plan_at_least(run.architecture(), Plan.load(state.plan), step=int(opts.get("step", 4)))
        new.save(out / "plan.json")
        state.plan = str(out / "plan.json")
        return {"plan": state.plan, "source": "uniform", "params": new.meta["params"],
                "params_target": new.meta["params_target"], "ratio": new.meta["ratio"]}
    if "file" in p:
        new = Plan.load(input_path(p["file"]))
    elif "variant" in p:
        from ...zoo.family import family_plan

        try:
            new = family_plan(str(p["variant"]).removeprefix("stresnet_"),
                              num_classes=run.base.get("num_classes", 1000))
        except ValueError as e:
            raise RecipeError(f"stage plan: {e}") from None
    else:
        raise RecipeError("stage plan: give 'file' (a plan JSON) or 'variant' (a family member)")
    new.save(out / "plan.json")
    state.plan = str(out / "plan.json")
    return {"plan": state.plan, "source": str(p.get("file", p.get("variant")))}


def lrs_plan(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """An LR+S (``method: lrs``) or magnitude-pruning (``method: prune``) plan with the current (Tucker-2) plan's
    total params (``over: base``: prune every conv of the unmodified base instead of the plan's convs; with
    ``budget: 1.5x`` at the base's stored params / 1.5, no plan needed)."""
    from ...data import selection_images
    from ...plan import Plan
    from ...train import sparsity

    method = p.get("method", "lrs")
    if method == "prune" and p.get("over") == "base" and "budget" in p:
        return _pruning_at_budget(run, state, str(p["budget"]), out)
    require(state, "plan", "lrs_plan")
    require(state, "dense", "lrs_plan")
    model = run.model(state)
    tucker = Plan.load(state.plan)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"method": method}
    if method == "lrs":
        if "fraction" in p:
            fraction = float(p["fraction"])
        else:  # tune the split on the selection split carved from train/ (never val)
            images, labels = selection_images(run.split("train"), run.input_size)
            fractions = tuple(p.get("fractions", (0.1, 0.25, 0.4, 0.55)))
            bases = calibrated_bases(run, state, model, list(tucker.factorised()))
            tuned = sparsity.tune_split(model, tucker, fractions, images, labels, bases=bases)
            result["tuning"] = tuned
            fraction = tuned["fraction"]
        new = sparsity.lrs_plan_like(model, tucker, fraction)
        result["fraction"] = fraction
    elif method == "prune" and p.get("over", "plan") == "base":
        target = sparsity.plan_params(model, tucker)
        new = sparsity.dense_pruning_plan(model, target, base=tucker.base)
        result.update(over="base", params_target=target, density=new.meta["density"])
    elif method == "prune":
        new = sparsity.pruning_plan_like(model, tucker)
    else:
        raise RecipeError(f"stage lrs_plan: method {method!r} is not 'lrs' or 'prune'")
    new.save(out / "plan.json")
    state.plan = str(out / "plan.json")
    return {**result, "plan": state.plan}


def _pruning_at_budget(run: ClassifyRun, state: State, budget: str, out: Path) -> dict:
    """Every plain conv of the base magnitude-pruned to one density, at ``budget`` (``1.5x``: the base's stored
    params / 1.5): the sparse-only arm of a comparison whose other arms search at the same budget."""
    from ...plan import Plan
    from ...train import sparsity

    from ...search.budgets import BudgetError, parse_budget

    require(state, "dense", "lrs_plan")
    try:
        parsed = parse_budget(budget)
    except BudgetError as e:
        raise RecipeError(f"stage lrs_plan: {e}") from None
    factor = parsed.ratio
    if factor is None or parsed.metrics:
        raise RecipeError(f"stage lrs_plan: budget {budget!r} is not a factor like 1.5x")
    if factor <= 1:
        raise RecipeError(f"stage lrs_plan: budget {budget!r} must be above 1x")
    model = run.model(state)
    target = int(sparsity.plan_params(model, Plan(layers={})) / factor)
    new = sparsity.dense_pruning_plan(model, target)
    out.mkdir(parents=True, exist_ok=True)
    new.save(out / "plan.json")
    state.plan = str(out / "plan.json")
    return {"method": "prune", "over": "base", "budget": budget, "params_target": target,
            "density": new.meta["density"], "plan": state.plan}
