"""The ``task: detect`` recipe: COCO-layout data -> base -> search -> compress -> fine-tune -> val -> agreement.

    format: stresnet-recipe/1
    task: detect
    name: yolov5n_2x_coco_mini
    data: ${shared}/data/coco-mini        # COCO layout: images/<split>, annotations/instances_<split>.json
    imgsz: 320
    expected_cpu_minutes: 15              # the stated budget; the results say whether the run kept it
    base: {model: yolov5n.yaml}           # + checkpoint: an ultralytics .pt to skip train_base
    stages:
      - prepare: {}                       # labels by ultralytics' convert_coco, into runs/<name>/data
      - train_base: {epochs: 60}          # any ultralytics train argument (batch, lr0, optimizer ...)
      - search: {budget: 2x}              # MSE estimator on calibration train images + ILP
      - compress: {}                      # plan applied, weights from the decomposition; zero-shot mAP
      - finetune: {epochs: 15}            # distill: true -> ultralytics' distillation from the base
      - val: {}                           # mAP50-95 / mAP50 of base and compressed on the val split
      - agreement: {conf: 0.25}           # compressed vs the base's own predictions
      - card: {variant: yolov5n_2x, tag: coco-mini}   # out: folder (default zoo_cards, in the current folder)

The stages run through the one recipe runner (:mod:`stresnet.recipes.runner`): each
writes ``<out>/<name>/<id>/stage.json`` and ``--resume`` skips the finished ones;
the results JSON is rewritten after every stage.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import RecipeError, check_header, input_path, stage_list
from ..runner import Run, StageState
from ..runner import Task

TRAIN_KEYS = ("epochs", "batch", "nbs", "workers", "lr0", "lrf", "optimizer", "warmup_epochs", "close_mosaic", "mosaic",
              "seed", "patience", "cos_lr", "weight_decay", "momentum", "fraction", "cache", "hsv_h", "hsv_s",
              "hsv_v", "degrees", "translate", "scale", "fliplr", "mixup")
PARAMS = {
    "prepare": ("limit",),
    "train_base": TRAIN_KEYS,
    "search": ("budget", "calib_images", "step", "seed", "expect_plan"),
    "compress": (),
    "finetune": TRAIN_KEYS + ("distill",),
    "val": ("batch",),
    "agreement": ("conf", "max_det", "limit"),
    "card": ("variant", "tag", "out"),
}


@dataclass
class State(StageState):
    data_yaml: str | None = None
    base: str | None = None          # ultralytics .pt of the uncompressed model
    plan: str | None = None          # detector plan JSON
    zero_shot: str | None = None     # compressed, straight from the decomposition
    compressed: str | None = None    # compressed, current (fine-tuned once finetune ran)


@dataclass
class DetectRun(Run):
    """The run context of a detect recipe: image size, architecture, and the state checks."""

    @property
    def imgsz(self) -> int:
        return int(self.recipe.get("imgsz", 320))

    @property
    def arch(self) -> str:
        return str(self.recipe["base"]["model"])

    def need(self, state: State, what: str, stage: str, before: str) -> str:
        value = getattr(state, what)
        if value is None:
            raise RecipeError(f"stage {stage}: needs {what.replace('_', '-')} (put a '{before}' stage before it)")
        return value


def check(recipe: dict, source: str) -> None:
    """One line naming the field when a detect recipe cannot run."""
    check_header(recipe, source, ("name", "data", "base", "stages"))
    if not isinstance(recipe["base"], dict) or "model" not in recipe["base"]:
        raise RecipeError(f"{source}: base.model is required (an ultralytics yaml, e.g. yolov5s.yaml)")
    for i, (kind, params) in enumerate(stage_list(recipe["stages"], f"{source}: stages", PARAMS, "detect stage")):
        unknown = sorted(set(params) - set(PARAMS[kind]) - {"id"})
        if unknown:
            raise RecipeError(f"{source}: stages[{i}].{kind}: unknown option {unknown[0]!r}")


def _train_args(p: dict) -> dict:
    return {k: v for k, v in p.items() if k not in ("epochs", "batch", "workers")}


def _cost(model, imgsz: int) -> dict:
    from ...cost import profile

    out = {}
    for size in sorted({imgsz, 640}):
        prof = profile(model, (3, size, size))
        out[size] = {"params": prof.params, "macs": prof.macs, "flash_bytes": prof.flash_bytes}
    return {"params": out[imgsz]["params"], "macs": out[imgsz]["macs"], "macs_640": out[640]["macs"],
            "flash_bytes": out[imgsz]["flash_bytes"]}


def prepare(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    from ...detect.data import image_list, prepare_coco

    state.data_yaml = str(prepare_coco(run.recipe["data"], out / "data", limit=p.get("limit")))
    return {"data_yaml": state.data_yaml, "train_images": len(image_list(state.data_yaml, "train")),
            "val_images": len(image_list(state.data_yaml, "val"))}


def train_base(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    from ...detect.train import train_detector

    given = run.recipe["base"].get("checkpoint")
    if given:
        if not Path(given).is_file():
            raise RecipeError(f"base.checkpoint {given}: no such file")
        state.base = str(given)
        return {"skipped": f"base.checkpoint given: {given}"}
    data = run.need(state, "data_yaml", "train_base", "prepare")
    r = train_detector(data, out / "train", arch=run.arch, epochs=p.get("epochs", 1), imgsz=run.imgsz,
                       batch=p.get("batch", 16), workers=p.get("workers", 0), extra=_train_args(p))
    state.base = r["weights"]
    return r


def search(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    from ...detect.data import image_list
    from ...detect.model import detect_plan, load_checkpoint
    from ...detect.search import calibration_images, search_detector
    from ...plan import Plan

    data = run.need(state, "data_yaml", "search", "prepare")
    base = load_checkpoint(run.need(state, "base", "search", "train_base"))
    images = calibration_images(image_list(data, "train"), int(p.get("calib_images", 32)), run.imgsz,
                                seed=int(p.get("seed", 0)))
    plan, report = search_detector(base, images, budget=str(p.get("budget", "2x")), step=int(p.get("step", 8)))
    plan = detect_plan(plan, run.arch, nc=int(base.nc))
    plan.meta.update({"recipe": run.recipe["_path"], "base_weights": "trained by the recipe's train_base stage",
                      "calibration": f"{len(images)} train images at {run.imgsz} px"})
    path = out / "plan.json"
    plan.save(path)
    state.plan = str(path)
    result = {**report, "plan": str(path)}
    if p.get("expect_plan"):  # the shipped zoo plan: does this run's search reproduce it?
        shipped = input_path(p["expect_plan"])
        result["matches_expected_plan"] = shipped.is_file() and Plan.load(shipped).layers == plan.layers
    return result


def compress(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    import torch

    from ...detect.model import compress_detector, load_checkpoint
    from ...detect.train import validate
    from ...plan import Plan

    base = load_checkpoint(run.need(state, "base", "compress", "train_base"))
    plan = Plan.load(run.need(state, "plan", "compress", "search"))
    base_cost = _cost(base, run.imgsz)
    model = compress_detector(copy.deepcopy(base), plan)
    cost = _cost(model, run.imgsz)
    path = out / "zero_shot.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "train_args": {}}, path)
    state.zero_shot = state.compressed = str(path)
    result = {"base": base_cost, "compressed": cost,
              "params_ratio": base_cost["params"] / cost["params"], "macs_ratio": base_cost["macs"] / cost["macs"],
              "weights": str(path)}
    if state.data_yaml:
        result["zero_shot_val"] = validate(model, state.data_yaml, imgsz=run.imgsz, out=out / "val")
    return result


def finetune(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    from ...detect.model import load_checkpoint
    from ...detect.train import train_detector
    from ...zoo.hub import save_weights

    data = run.need(state, "data_yaml", "finetune", "prepare")
    model = load_checkpoint(run.need(state, "compressed", "finetune", "compress"))
    extra = _train_args({k: v for k, v in p.items() if k != "distill"})
    if p.get("distill"):  # ultralytics' own feature distillation, the uncompressed base as teacher
        extra["distill_model"] = run.need(state, "base", "finetune", "train_base")
    r = train_detector(data, out / "train", model=model, arch=run.arch, epochs=p.get("epochs", 1), imgsz=run.imgsz,
                       batch=p.get("batch", 16), workers=p.get("workers", 0), extra=extra)
    r["distilled"] = bool(p.get("distill"))
    state.compressed = r["weights"]
    tuned = load_checkpoint(r["weights"])  # the plan + safetensors form, as the zoo loads it
    r["safetensors"] = str(out / "model.safetensors")
    r["sha256"] = save_weights(tuned, out / "model.safetensors")
    (out / "plan.json").write_text(Path(state.plan).read_text())
    return r


def val(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    from ...detect.train import validate

    data = run.need(state, "data_yaml", "val", "prepare")
    batch = int(p.get("batch", 16))
    result = {"base": validate(run.need(state, "base", "val", "train_base"), data, run.imgsz, batch, out / "base")}
    if state.compressed:
        result["compressed"] = validate(state.compressed, data, run.imgsz, batch, out / "compressed")
    return result


def agreement(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    from ...detect.agreement import agreement_map
    from ...detect.data import image_list
    from ...detect.model import load_checkpoint

    data = run.need(state, "data_yaml", "agreement", "prepare")
    base = load_checkpoint(run.need(state, "base", "agreement", "train_base"))
    models = {"zero_shot": load_checkpoint(run.need(state, "zero_shot", "agreement", "compress"))}
    if state.compressed != state.zero_shot:
        models["finetuned"] = load_checkpoint(state.compressed)
    images = image_list(data, "val")[: p.get("limit")]
    return agreement_map(base, models, images, out, imgsz=run.imgsz, conf=float(p.get("conf", 0.25)),
                         max_det=int(p.get("max_det", 300)))


def card(run: DetectRun, state: State, p: dict, out: Path) -> dict:
    from ...detect.card import write_card

    path = write_card(run.results, p.get("variant"), p.get("tag", "coco-mini"), Path(p.get("out", "zoo_cards")))
    return {"card": str(path)}


STAGES = {"prepare": prepare, "train_base": train_base, "search": search, "compress": compress,
          "finetune": finetune, "val": val, "agreement": agreement, "card": card}


def _prepare(recipe: dict) -> None:
    """ultralytics must be installed (and kept offline) before anything is written."""
    from ...detect import DetectError
    from ...detect.offline import require_ultralytics

    try:
        require_ultralytics()
    except DetectError as e:
        raise RecipeError(str(e)) from None


def header(run: Run, command: str) -> dict:
    recipe = run.recipe
    return {"recipe": recipe["_path"], "command": command, "name": recipe["name"], "task": "detect",
            "arch": str(recipe["base"]["model"]), "imgsz": int(recipe.get("imgsz", 320)),
            "expected_cpu_minutes": recipe.get("expected_cpu_minutes"),
            "config": {k: v for k, v in recipe.items() if not k.startswith("_")}}


def after_stage(run: Run, arm: str, arm_results: dict, kind: str, result: dict) -> None:
    """The headline numbers, lifted from the stage results; the wall time against the stated budget."""
    res = run.results
    rows = res["stages"]
    by_type = {r["type"]: r["result"] for r in rows}
    if "compress" in by_type:
        c = by_type["compress"]
        res["base"] = {**res.get("base", {}), **c["base"]}
        res["compressed"] = {**res.get("compressed", {}), **c["compressed"],
                             "params_ratio": c["params_ratio"], "macs_ratio": c["macs_ratio"]}
        if "zero_shot_val" in c:
            res["compressed"]["zero_shot"] = {k: c["zero_shot_val"][k] for k in ("map50_95", "map50")}
    if "val" in by_type:
        for key in ("base", "compressed"):
            if key in by_type["val"]:
                v = by_type["val"][key]
                res.setdefault(key, {}).update({"map50_95": v["map50_95"], "map50": v["map50"],
                                                "val_images": v["images"]})
    for stage, key in (("train_base", "base"), ("finetune", "compressed")):
        if stage in by_type and "seconds" in by_type[stage]:
            t = by_type[stage]
            res.setdefault(key, {})["train"] = {k: t[k] for k in ("epochs", "imgsz", "batch", "seconds")}
    if "search" in by_type:
        res["search"] = {k: v for k, v in by_type["search"].items() if k != "stage_seconds"}
    if "agreement" in by_type:
        res["agreement"] = by_type["agreement"]
    wall = sum(r["result"].get("stage_seconds", 0) for r in rows)
    res["wall_seconds"] = round(wall, 1)
    budget = res.get("expected_cpu_minutes")
    if budget is not None:
        res["within_expected_time"] = wall <= 60 * float(budget)


def headline(res: dict) -> str:
    b, c = res.get("base", {}), res.get("compressed", {})
    parts = [f"{res['name']}"]
    if "params" in b and "params" in c:
        parts.append(f"params {b['params'] / 1e6:.3f} M -> {c['params'] / 1e6:.3f} M ({c['params_ratio']:.2f}x)")
    if "map50_95" in b and "map50_95" in c:
        parts.append(f"mAP50-95 {b['map50_95']:.4f} -> {c['map50_95']:.4f}, mAP50 {b['map50']:.4f} -> {c['map50']:.4f}")
    a = res.get("agreement", {})
    for key in ("zero_shot", "finetuned"):
        if key in a:
            parts.append(f"agreement ({key}) mAP50-95 {a[key]['map50_95']:.4f}")
    parts.append(f"{res.get('wall_seconds', 0) / 60:.1f} min (stated {res.get('expected_cpu_minutes')})")
    return parts[0] + ": " + ", ".join(parts[1:])


def _finish(run: Run, log: Callable[[str], None]) -> None:
    log(headline(run.results))


def _errors() -> tuple[type[Exception], ...]:
    from ...detect import DetectError

    return (DetectError,)


TASK = Task(name="detect", stages=STAGES, state=State, check=check, header=header, run_class=DetectRun,
            initial_state=lambda recipe: State(), stage_label="detect stage", errors=_errors(),
            seconds_digits=1, prepare=_prepare, after_stage=after_stage, finish=_finish)
