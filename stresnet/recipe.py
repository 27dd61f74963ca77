"""Recipes: a YAML file that regenerates a zoo variant (or a comparison) from a base model and raw images.

A recipe is data, run by ``stresnet recipe run recipes/<file>.yaml``::

    format: stresnet-recipe/1
    name: stresnet18_8x                  # run folder runs/<name>, results recipes/results/<name>.json
    data: ${shared}/data/imagenette2-160 # ImageFolder root with train/ and val/
    input_size: 128
    base: {model: resnet18, num_classes: 10, checkpoint: ${shared}/models/resnet18_imagenette.safetensors}
    stages:                              # or  arms: {name: [stages], ...}  for comparisons
      - search: {budget: 8x, step: 16}
      - decompose: {}
      - finetune: {epochs: 2, lr: 0.01}
      - eval: {}
      - publish: {name: stresnet18_8x.imagenette}

``${shared}`` is ``$STRESNET_SHARED`` or ``<repo>/../shared``; ``${env:VAR}`` reads
any environment variable; ``--set key.sub=value`` overrides any field, a number
indexing a list (``--set stages.2.finetune.epochs=1``), so an ImageNet recipe
runs wherever ImageNet lives.

The runner carries one *state* through the stages: the current weights
(dense or compressed), the current plan and the teacher (the base). Stages:

``train_base``  train the base from random init (label-smoothed CE, no teacher)
``search``      CompressNAS: estimator tables + ILP at ``budget``; sets the plan
``plan``        a fixed plan: ``file`` or a family ``variant``; or ``uniform: {step: 4}``,
                the smallest uniform-rank plan with at least the current plan's params
``lrs_plan``    an LR+S (``method: lrs``) or magnitude-pruning (``method: prune``)
                plan with the current (Tucker-2) plan's total params (``over: base``:
                prune every conv of the unmodified base instead of the plan's convs)
``reinit``      random init (timm's, seeded) of the current architecture: the plan's
                when there is one, else the base's (the from-scratch arms)
``admm``        ADMM rank-constrained training of the dense weights towards the plan
``decompose``   apply the plan to the dense weights; zero-shot top-1 (``compare_base``
                also measures decomposing the original base, for ADMM)
``finetune``    KD fine-tune of the current model (``sparsity`` adds the
                gradual-pruning schedule of LR+S / pruning; ``teacher: none``:
                plain label-smoothed CE, the teacher is never built or run)
``eval``        top-1/top-5 on val, params, MACs, int8 flash and peak RAM
``publish``     a Hub-ready folder, its sha256 in the zoo registry, the local Hub cache
``reference``   the results of another recipe (an arm shared between comparisons;
                its fine-tune config must equal ``expect_finetune`` when given)

Every finished stage writes ``runs/<name>/[<arm>/]<id>/stage.json``; with
``--resume`` finished stages are skipped and a killed fine-tune continues from
its last epoch. The results JSON is rewritten after every stage, so a run that
stops early keeps what it measured. Under ``torchrun`` (``--nproc N``) the
training stages run on every rank and the others on rank 0 only.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

__all__ = ["RecipeError", "load_recipe", "run_recipe", "shared_dir", "RECIPE_FORMAT"]

RECIPE_FORMAT = "stresnet-recipe/1"
REPO = Path(__file__).resolve().parents[1]
DISTRIBUTED_STAGES = ("train_base", "admm", "finetune")


class RecipeError(ValueError):
    """A recipe that cannot run: the one-line message names the file, stage and field."""


def shared_dir() -> Path:
    """``$STRESNET_SHARED`` or ``<repo>/../shared``."""
    return Path(os.environ.get("STRESNET_SHARED", REPO.parent / "shared"))


# ----------------------------------------------------------------------------- loading

_VAR = re.compile(r"\$\{([^}]+)\}")


def _substitute(value: Any, source: str) -> Any:
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            key = m.group(1)
            if key == "shared":
                return str(shared_dir())
            if key.startswith("env:"):
                if key[4:] not in os.environ:
                    raise RecipeError(f"{source}: environment variable {key[4:]} (used as ${{{key}}}) is not set")
                return os.environ[key[4:]]
            raise RecipeError(f"{source}: unknown variable ${{{key}}} (use ${{shared}} or ${{env:NAME}})")
        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, source) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, source) for k, v in value.items()}
    return value


def _apply_override(recipe: dict, assignment: str, source: str) -> None:
    """``a.b.c=value`` (YAML-parsed value); a number indexes a list: ``stages.2.finetune.epochs=1``."""
    import yaml

    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise RecipeError(f"{source}: --set {assignment!r} is not KEY=VALUE")
    node: Any = recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"{source}: --set {key}: {part!r} is not an index of a {len(node)}-item list")
            if last:
                node[int(part)] = yaml.safe_load(raw)
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = yaml.safe_load(raw)
            else:
                node = node.setdefault(part, {})
        else:
            raise RecipeError(f"{source}: --set {key}: {parts[i - 1]!r} holds a value, not a mapping or list")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Read, override (``key.sub=value``), substitute variables and check a recipe."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path}: no such file")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"recipe {path}: expected a mapping at the top level")
    for assignment in overrides:
        _apply_override(recipe, assignment, str(path))
    recipe = _substitute(recipe, str(path))
    _check(recipe, str(path))
    recipe["_path"] = str(path)
    return recipe


def check_header(recipe: dict, source: str, required: tuple[str, ...]) -> None:
    """The checks every recipe kind shares: format tag, required fields, a name usable as a file name."""
    if recipe.get("format", RECIPE_FORMAT) != RECIPE_FORMAT:
        raise RecipeError(f"{source}: format {recipe.get('format')!r} is not {RECIPE_FORMAT}")
    for key in required:
        if key not in recipe:
            raise RecipeError(f"{source}: missing required field {key!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(recipe["name"])):
        raise RecipeError(f"{source}: name {recipe['name']!r} must be a plain file name")


def stage_list(stages: Any, where: str, known: tuple[str, ...] | dict | None = None,
               label: str = "stage") -> list[tuple[str, dict]]:
    """Parse a YAML stage list into ``(kind, params)`` pairs; one line naming the bad entry otherwise.

    ``known`` defaults to this module's classification stages; detect recipes pass their own."""
    known = STAGES if known is None else known
    if not isinstance(stages, list) or not stages:
        raise RecipeError(f"{where}: expected a non-empty list of stages")
    out = []
    for i, item in enumerate(stages):
        if not (isinstance(item, dict) and len(item) == 1):
            raise RecipeError(f"{where}[{i}]: a stage is a one-key mapping like '- finetune: {{epochs: 2}}'")
        (kind, params), = item.items()
        if kind not in known:
            raise RecipeError(f"{where}[{i}]: unknown {label} {kind!r} (known: {', '.join(known)})")
        if params is not None and not isinstance(params, dict):
            raise RecipeError(f"{where}[{i}].{kind}: options must be a mapping, got {params!r}")
        out.append((kind, dict(params or {})))
    return out


def _check(recipe: dict, source: str) -> None:
    if recipe.get("task") == "detect":  # YOLO detectors: stages of their own (stresnet/detect/recipe.py)
        from .detect.recipe import check_detect_recipe

        return check_detect_recipe(recipe, source)
    check_header(recipe, source, ("name", "data", "base"))
    if "model" not in recipe["base"]:
        raise RecipeError(f"{source}: base.model is required")
    if ("stages" in recipe) == ("arms" in recipe):
        raise RecipeError(f"{source}: give either 'stages' or 'arms'")
    arms = recipe["arms"] if "arms" in recipe else {"": recipe["stages"]}
    if not isinstance(arms, dict) or not arms:
        raise RecipeError(f"{source}: 'arms' must map arm names to stage lists")
    for arm, stages in arms.items():
        where = f"{source}: arms.{arm}" if arm else f"{source}: stages"
        listed = stage_list(stages, where)
        ids = [p.get("id", k) for k, p in listed]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise RecipeError(f"{where}: stage id {sorted(dup)[0]!r} used twice (give one an 'id')")
        for kind, params in listed:
            if kind in ("finetune", "admm", "train_base"):
                _train_config({k: v for k, v in params.items() if k not in _TRAIN_EXTRA}, f"{where}.{kind}")


# ----------------------------------------------------------------------------- run state

@dataclass
class _State:
    """What flows between stages: the current weights, plan, and whether the model is already compressed."""

    weights: str | None = None
    plan: str | None = None
    compressed: bool = False
    sparsity: dict | None = None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class _Run:
    recipe: dict
    run_dir: Path
    results_path: Path | None
    resume: bool
    progress: bool
    results: dict = field(default_factory=dict)
    rank: int = 0
    world: int = 1

    @property
    def data(self) -> Path:
        return Path(self.recipe["data"])

    @property
    def input_size(self) -> int:
        return int(self.recipe.get("input_size", 224))

    @property
    def base(self) -> dict:
        return self.recipe["base"]

    def split(self, name: str) -> Path:
        path = self.data / name
        if not path.is_dir():
            raise RecipeError(f"recipe {self.recipe['_path']}: data split {path} does not exist "
                              f"(set another root with --set data=PATH)")
        return path

    def base_model(self, checkpoint: str | None = None) -> nn.Module:
        from .resolve import model_from_name

        if checkpoint is None and self.base.get("pretrained"):  # timm's own weights (needs the network)
            import timm

            return timm.create_model(self.base["model"], pretrained=True, num_classes=self.base.get("num_classes"))
        return model_from_name(self.base["model"], num_classes=self.base.get("num_classes"), checkpoint=checkpoint)

    def model(self, state: _State) -> nn.Module:
        """The current model: the base architecture, the plan applied when compressed, the current weights."""
        from .plan import Plan, compress, load_weights

        if not state.compressed:
            return self.base_model(state.weights)
        model = compress(self.base_model(), Plan.load(state.plan), init="random")
        return load_weights(model, state.weights)

    def teacher(self) -> nn.Module:
        return self.base_model(self.base.get("checkpoint"))

    def save_results(self) -> None:
        if self.rank == 0 and self.results_path is not None:
            _atomic_json(self.results_path, _portable(self.results))


def _portable(value: Any) -> Any:
    """Paths in committed results, machine-independent: repo-relative, ``${shared}/...``, ``~/...``."""
    if isinstance(value, str):
        for prefix, short in ((str(REPO) + os.sep, ""), (str(shared_dir()), "${shared}"),
                              (str(Path.home()), "~")):
            if value.startswith(prefix):
                return short + value[len(prefix):]
        return value
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    return value


def _atomic_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _require(state: _State, what: str, stage: str) -> None:
    if what == "plan" and state.plan is None:
        raise RecipeError(f"stage {stage}: needs a plan (put a 'search' or 'plan' stage before it)")
    if what == "dense" and state.compressed:
        raise RecipeError(f"stage {stage}: needs the dense model (it comes before 'decompose')")
    if what == "compressed" and not state.compressed:
        raise RecipeError(f"stage {stage}: needs the compressed model (put a 'decompose' stage before it)")


# ----------------------------------------------------------------------------- training config

_TRAIN_EXTRA = ("id", "teacher", "sparsity", "rho", "updates_per_epoch", "n_iter")


def _train_config(params: Mapping[str, Any], where: str, input_size: int | None = None):
    """A :class:`TrainConfig` from recipe fields (``input_size`` defaults to the recipe's)."""
    from .train.engine import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise RecipeError(f"{where}: unknown training option {unknown[0]!r}")
    if input_size is not None:
        params = {"input_size": input_size, **params}
    try:
        return TrainConfig(**params)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from None


def _train_params(params: Mapping[str, Any]) -> dict:
    return {k: v for k, v in params.items() if k not in _TRAIN_EXTRA}


def _summary(result: dict) -> dict:
    return {k: result[k] for k in ("val_top1", "val_top5", "epochs", "seconds", "world_size", "config") if k in result}


# ----------------------------------------------------------------------------- stages

def _stage_train_base(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .train.engine import finetune

    _require(state, "dense", "train_base")
    cfg = _train_config(_train_params(p), "train_base", run.input_size)
    torch.manual_seed(cfg.seed)
    model = run.base_model()
    result = finetune(model, None, run.split("train"), run.split("val"), out, cfg, resume=run.resume,
                      progress=run.progress)
    state.weights = str(out / "model.safetensors")
    return _summary(result)


def _stage_search(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .search.run import search_and_write

    _require(state, "dense", "search")
    budget = str(p.get("budget", "8x"))
    report = search_and_write(run.base["model"], Path(state.weights) if state.weights else None, run.data, [budget],
                              out, num_classes=run.base.get("num_classes"), size=run.input_size,
                              calib=int(p.get("calib", 256)), step=int(p.get("step", 8)),
                              estimator=str(p.get("estimator", "fisher")), seed=int(p.get("seed", 0)),
                              progress=run.progress)
    row = next(iter(report["budgets"].values()))
    state.plan = str(out / f"plan_{next(iter(report['budgets']))}.json")
    result = {"budget": budget, "plan": state.plan, "seconds": report["seconds"], "searched": row["methods"]["searched"]}
    if p.get("expect_plan"):  # the packaged zoo plan must be what this search finds
        from .plan import Plan

        expected = Path(p["expect_plan"]) if Path(p["expect_plan"]).is_absolute() else REPO / p["expect_plan"]
        result["matches_expected_plan"] = Plan.load(state.plan).layers == Plan.load(expected).layers
    return result


def _stage_plan(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .plan import Plan

    if "uniform" in p:  # the uniform-rank baseline of the current plan, at >= its params
        from .search.uniform import uniform_plan_at_least

        _require(state, "plan", "plan (uniform)")
        opts = p["uniform"] if isinstance(p["uniform"], dict) else {}
        plan = uniform_plan_at_least(_architecture(run), Plan.load(state.plan), step=int(opts.get("step", 4)))
        out.mkdir(parents=True, exist_ok=True)
        plan.save(out / "plan.json")
        state.plan = str(out / "plan.json")
        return {"plan": state.plan, "source": "uniform", "params": plan.meta["params"],
                "params_target": plan.meta["params_target"], "ratio": plan.meta["ratio"]}
    if "file" in p:
        src = Path(p["file"])
        if not src.is_absolute():
            src = REPO / src
        plan = Plan.load(src)
    elif "variant" in p:
        from .zoo.family import family_plan

        try:
            plan = family_plan(str(p["variant"]).removeprefix("stresnet_"),
                               num_classes=run.base.get("num_classes", 1000))
        except ValueError as e:
            raise RecipeError(f"stage plan: {e}") from None
    else:
        raise RecipeError("stage plan: give 'file' (a plan JSON) or 'variant' (a family member)")
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    state.plan = str(out / "plan.json")
    return {"plan": state.plan, "source": str(p.get("file", p.get("variant")))}


def _stage_lrs_plan(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .data import calibration_images
    from .plan import Plan
    from .train import sparsity

    _require(state, "plan", "lrs_plan")
    _require(state, "dense", "lrs_plan")
    method = p.get("method", "lrs")
    model = run.model(state)
    tucker = Plan.load(state.plan)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"method": method}
    if method == "lrs":
        if "fraction" in p:
            fraction = float(p["fraction"])
        else:  # tune the split on held-out TRAIN images (never val)
            images, labels = calibration_images(run.split("train"), int(p.get("calib", 512)), run.input_size,
                                                seed=int(p.get("seed", 1)))
            tuned = sparsity.tune_split(model, tucker, tuple(p.get("fractions", (0.1, 0.25, 0.4, 0.55))), images, labels)
            result["tuning"] = tuned
            fraction = tuned["fraction"]
        plan = sparsity.lrs_plan_like(model, tucker, fraction)
        result["fraction"] = fraction
    elif method == "prune" and p.get("over", "plan") == "base":
        target = sparsity.plan_params(model, tucker)
        plan = sparsity.dense_pruning_plan(model, target, base=tucker.base)
        result.update(over="base", params_target=target, density=plan.meta["density"])
    elif method == "prune":
        plan = sparsity.pruning_plan_like(model, tucker)
    else:
        raise RecipeError(f"stage lrs_plan: method {method!r} is not 'lrs' or 'prune'")
    plan.save(out / "plan.json")
    state.plan = str(out / "plan.json")
    return {**result, "plan": state.plan}


def _architecture(run: _Run) -> nn.Module:
    """The base architecture with timm's random init (never downloaded weights)."""
    from .resolve import model_from_name

    return model_from_name(run.base["model"], num_classes=run.base.get("num_classes"))


def _stage_reinit(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .plan import Plan, compress
    from .zoo.hub import save_weights

    seed = int(p.get("seed", 0))
    torch.manual_seed(seed)
    model = _architecture(run)
    if state.plan is not None:
        model = compress(model, Plan.load(state.plan), init="random")
    if hasattr(model, "init_weights"):  # timm's ResNet init, over the factor convs too; zero-init last BNs
        model.init_weights()
    else:
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    state.weights, state.compressed = str(out / "model.safetensors"), state.plan is not None
    return {"seed": seed, "init": "random (timm init_weights)", "architecture": "plan" if state.plan else "base"}


def _stage_admm(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .plan import Plan
    from .train.admm import AdmmConfig, admm_train

    _require(state, "plan", "admm")
    _require(state, "dense", "admm")
    cfg = _train_config(_train_params(p), "admm", run.input_size)
    admm_cfg = AdmmConfig(**{k: p[k] for k in ("rho", "updates_per_epoch", "n_iter") if k in p})
    teacher = None if p.get("teacher", "base") == "none" else run.teacher()
    result = admm_train(run.model(state), teacher, Plan.load(state.plan), run.split("train"), run.split("val"), out,
                        cfg, admm_cfg, resume=run.resume, progress=run.progress)
    state.weights = str(out / "model.safetensors")
    return {**_summary(result), "admm": result.get("admm")}


def _stage_decompose(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .evaluate import accuracy
    from .plan import Plan, compress
    from .zoo.hub import save_weights

    _require(state, "plan", "decompose")
    _require(state, "dense", "decompose")
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


def _stage_finetune(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .train.engine import finetune

    _require(state, "compressed", "finetune")
    cfg = _train_config(_train_params(p), "finetune", run.input_size)
    hooks = []
    if p.get("sparsity") is not None:
        from .train.sparsity import GradualSparsityHook

        hooks.append(GradualSparsityHook(**dict(p["sparsity"])))
    teacher = None if p.get("teacher", "base") == "none" else run.teacher()
    result = finetune(run.model(state), teacher, run.split("train"), run.split("val"), out, cfg, resume=run.resume,
                      progress=run.progress, hooks=hooks)
    if run.rank == 0 and state.plan:  # the weights travel with the plan that builds their architecture
        (out / "plan.json").write_text(Path(state.plan).read_text())
    state.weights = str(out / "model.safetensors")
    return {**_summary(result), "hardware": _hardware(),
            **({"sparsity": p["sparsity"]} if p.get("sparsity") is not None else {})}


def _measure(run: _Run, model: nn.Module) -> dict:
    from .cost import profile
    from .evaluate import accuracy

    acc = accuracy(model, run.split("val"), run.input_size)
    prof = profile(model, (3, run.input_size, run.input_size))
    return {"top1": acc["top1"], "top5": acc["top5"], "images": acc["images"], "params": prof.params,
            "macs": prof.macs, "flash_bytes": prof.flash_bytes, "peak_ram_bytes": prof.peak_ram_bytes}


def _stage_eval(run: _Run, state: _State, p: dict, out: Path) -> dict:
    row = _measure(run, run.model(state))
    if "base" not in run.results:
        run.results["base"] = {"model": run.base["model"], "checkpoint": run.base.get("checkpoint"),
                               **_measure(run, run.teacher())}
    base = run.results["base"]
    row["compression"] = {"params": base["params"] / row["params"], "macs": base["macs"] / row["macs"],
                          "flash": base["flash_bytes"] / row["flash_bytes"]}
    row["top1_drop_points"] = 100 * (base["top1"] - row["top1"])
    return row


def _stage_publish(run: _Run, state: _State, p: dict, out: Path) -> dict:
    from .zoo.hub import publish_run

    if "name" not in p:
        raise RecipeError("stage publish: 'name' (e.g. stresnet18_8x.imagenette) is required")
    metrics = run.results.get("final")
    if metrics is None:
        raise RecipeError("stage publish: needs an 'eval' stage before it (the card quotes measured numbers)")
    model = run.model(state)
    return publish_run(model, p["name"], out, metrics, run.results["command"],
                       register_weights=bool(p.get("register", True)),
                       install_cache=bool(p.get("install_cache", True)))


def _stage_reference(run: _Run, state: _State, p: dict, out: Path) -> dict:
    recipe = Path(p.get("recipe", ""))
    path = REPO / "recipes" / "results" / f"{recipe.stem}.json"
    if not path.is_file():
        raise RecipeError(f"stage reference: {path} does not exist: run 'stresnet recipe run {recipe}' first")
    other = json.loads(path.read_text())
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


STAGES: dict[str, Callable[[_Run, _State, dict, Path], dict]] = {
    "train_base": _stage_train_base, "search": _stage_search, "plan": _stage_plan, "lrs_plan": _stage_lrs_plan,
    "admm": _stage_admm, "reinit": _stage_reinit, "decompose": _stage_decompose, "finetune": _stage_finetune,
    "eval": _stage_eval,
    "publish": _stage_publish, "reference": _stage_reference,
}


# ----------------------------------------------------------------------------- runner

def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _run_arm(run: _Run, arm: str, stages: list[tuple[str, dict]], log: Callable[[str], None],
             selected: bool = True) -> dict:
    """Run one arm's stages; an arm not ``selected`` (``--arms``) only reports the stages it finished earlier."""
    state = _State(weights=run.base.get("checkpoint"))
    arm_dir = run.run_dir / arm if arm else run.run_dir
    rows: list[dict] = []
    arm_results = {"stages": rows}
    if arm:
        run.results.setdefault("arms", {})[arm] = arm_results
    else:
        run.results.update(arm_results)
    final_key = None
    for kind, params in stages:
        sid = params.pop("id", kind)
        out = arm_dir / sid
        done = out / "stage.json"
        label = f"{arm}/{sid}" if arm else sid
        if run.resume and done.is_file():
            saved = json.loads(done.read_text())
            result, state = saved["result"], _State(**saved["state"])
            log(f"[{label}] done earlier: skipped (--resume)")
        elif not selected:
            break
        else:
            t0 = time.perf_counter()
            log(f"[{label}] running")
            if kind in DISTRIBUTED_STAGES or run.rank == 0:
                result = STAGES[kind](run, state, dict(params), out)
                result["stage_seconds"] = round(time.perf_counter() - t0, 3)
            if run.rank == 0:
                _atomic_json(done, {"result": result, "state": state.to_dict()})
            _barrier()
            if run.rank != 0:
                saved = json.loads(done.read_text())
                result, state = saved["result"], _State(**saved["state"])
        rows.append({"id": sid, "type": kind, "params": params, "result": result})
        if kind == "eval":
            final_key = result
            if arm:
                arm_results["final"] = result
            else:
                run.results["final"] = result
        elif kind == "reference":
            if arm:
                arm_results["final"] = result["final"]
        run.save_results()
    return {"final": final_key}


def _hardware() -> dict:
    """Where the run happened, so that the seconds in the results read as CPU- or GPU-minutes."""
    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    return {"device": "cpu", "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def run_recipe(recipe: dict, out_root: Path | None = None, results_path: Path | None = None, resume: bool = False,
               progress: bool = True, command: str | None = None, log: Callable[[str], None] = print,
               arms: list[str] | tuple[str, ...] | None = None) -> dict:
    """Run every stage (of every arm, or of the ``arms`` named) of a loaded recipe; return the results dict
    (also written as JSON). Arms not named keep, with ``--resume``, what they finished earlier, so that one
    comparison can be run arm by arm into one results file."""
    if recipe.get("task") == "detect":  # YOLO detectors (stresnet/detect/recipe.py)
        from .detect.recipe import run_detect_recipe

        return run_detect_recipe(recipe, out_root, results_path, resume, progress, command, log)
    import torch.distributed as dist

    listed = recipe["arms"] if "arms" in recipe else {"": recipe["stages"]}
    unknown = [a for a in arms or () if a not in listed or not a]
    if unknown:
        raise RecipeError(f"recipe {recipe['_path']}: no arm {unknown[0]!r} (arms: {', '.join(listed) or 'none'})")

    from .train.data import dist_info

    out_root = Path(out_root) if out_root else REPO / "runs"
    run_dir = out_root / recipe["name"]
    if results_path is None:
        results_path = REPO / "recipes" / "results" / f"{recipe['name']}.json"
    own_pg = "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized()
    if own_pg:
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = dist_info()
    if rank == 0 and run_dir.exists() and any(run_dir.iterdir()) and not resume:
        raise RecipeError(f"run folder {run_dir} already holds a run: pass --resume to continue it "
                          f"(or --out elsewhere); nothing was overwritten")
    _barrier()
    cmd = command or f"stresnet recipe run {recipe['_path']}"
    run = _Run(recipe, run_dir, results_path, resume, progress and rank == 0, rank=rank, world=world)
    run.results = {"recipe": recipe["_path"], "command": cmd, "name": recipe["name"],
                   "input_size": run.input_size, "world_size": world, "hardware": _hardware(),
                   "config": {k: v for k, v in recipe.items() if not k.startswith("_")}}
    say = log if rank == 0 else (lambda _: None)
    restored: set[str] = set()
    if arms is not None:  # every arm's finished stages first, so that a run stopped early loses none of them
        earlier = json.loads(results_path.read_text()).get("arms", {}) if results_path.is_file() else {}
        for arm, stages in listed.items():
            _run_arm(run, arm, stage_list(copy.deepcopy(stages), arm or "stages"), lambda _: None, selected=False)
            if arm not in arms and not run.results["arms"][arm]["stages"] and (earlier.get(arm) or {}).get("stages"):
                run.results["arms"][arm] = earlier[arm]  # finished in another run folder (another machine)
                restored.add(arm)
    for arm, stages in listed.items():
        if arm not in restored:
            _run_arm(run, arm, stage_list(copy.deepcopy(stages), arm or "stages"), say,
                     selected=arms is None or arm in arms)
    run.save_results()
    _barrier()
    if rank != 0 and results_path.is_file():  # rank 0 ran the eval stages: every rank returns its results
        run.results = json.loads(results_path.read_text())
    if own_pg:
        dist.destroy_process_group()
    return run.results


def command_line(argv: list[str]) -> str:
    """The exact command to quote in results and cards."""
    return " ".join(shlex.quote(a) for a in argv)
