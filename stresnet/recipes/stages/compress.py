"""``decompose``: apply the plan to the dense weights; zero-shot top-1 (``compare_base`` also measures
decomposing the original base, for ADMM). A plan with ST's narrowed stem gets that stem fitted to the dense
model first (:func:`stresnet.stem_init.narrowed_stem`, ``stem_init: fit``, the default) rather than at random
(``stem_init: random``): a random stem starts the network at chance. After a calibrated search the layers are
decomposed with the calibrated bases it scored (:func:`~.common.calibrated_bases`); ``calibrated: true`` asks the
same of a plan that came from elsewhere (a file, uniform ranks), on ``calib`` fit-part train/ images drawn with
``seed``, so a comparison of plans can give every arm the same decomposition."""
from __future__ import annotations

from pathlib import Path

from ..config import RecipeError
from .common import ClassifyRun, State, calibrated_bases, calibration_draw, check_same_draw, require


def decompose(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    from ...evaluate import accuracy
    from ...plan import Plan, compress
    from ...zoo.hub import save_weights

    require(state, "plan", "decompose")
    require(state, "dense", "decompose")
    plan = Plan.load(state.plan)
    dense = run.model(state)
    result: dict = {}
    how = p.get("stem_init", "fit")
    if how not in ("fit", "random"):
        raise RecipeError(f"stage decompose: stem_init {how!r} is not 'fit' or 'random'")
    stem_narrowed = bool(plan.surgery.get("stem", {}).get("proj"))
    if stem_narrowed and p.get("calibrated"):
        raise RecipeError("stage decompose: calibrated bases are not built for a plan with a narrowed stem")
    _calibrate(state, p)
    if stem_narrowed and how == "fit":
        from ...data import calibration_images
        from ...stem_init import narrowed_stem

        calib = int(p.get("calib", 256))  # the search's calibration draw: the stem it evaluated
        images, _ = calibration_images(run.split("train"), calib, run.input_size, seed=int(p.get("seed", 0)))
        narrowed = narrowed_stem(dense, plan.surgery, images)
        result["stem_init"] = {"method": "fit", "calibration_images": calib}
        if p.get("eval", True):  # the fitted stem alone, every other layer the base's
            result["stem_init"]["zero_shot_top1"] = accuracy(narrowed, run.split("val"), run.input_size)["top1"]
        model = compress(narrowed, Plan(layers=plan.layers), init="decompose")
    else:
        model = compress(dense, plan, init="decompose",
                         bases=calibrated_bases(run, state, dense, list(plan.factorised())))
        if stem_narrowed:
            result["stem_init"] = {"method": "random"}
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / "model.safetensors")
    if p.get("eval", True):
        result["zero_shot_top1"] = accuracy(model, run.split("val"), run.input_size)["top1"]
        if p.get("compare_base", False):
            base = compress(run.teacher(), plan, init="decompose")
            result["base_zero_shot_top1"] = accuracy(base, run.split("val"), run.input_size)["top1"]
    state.weights, state.compressed = str(out / "model.safetensors"), True
    return result


def _calibrate(state: State, p: dict) -> None:
    """``calibrated: true``: the calibration draw (``calib`` images, ``seed``) the bases are fitted on; it must be
    the search's own when the search was calibrated (checked when the recipe loads, and again here)."""
    if not p.get("calibrated"):
        return
    draw = calibration_draw(p)
    check_same_draw(draw, state.calibration, "stage decompose")
    state.calibration = draw
