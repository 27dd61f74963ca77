"""``eval``: top-1/top-5 on val, params, MACs, int8 flash and peak RAM, against the base measured the same way.
``eval: {split: ilsvrc-val}`` scores a 1000-class model 1000-way on the ``ILSVRC2012_val_*`` images of the
data folder instead (ImageNet validation images no ImageNet model trained on; needs ``reading.labels:
imagenet-1k``).
``agreement: {images: FOLDER}`` compares the model with the base on unlabelled images of other content (top-1
agreement, KL): what a model distilled on a few classes kept of its base elsewhere.
``latency: {input_size: 224, threads: 2}`` times the model and its dense base in one onnxruntime run, and
holds the result against the latency limit of the arm's search stage, when it had one."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..config import RecipeError
from .common import ClassifyRun, State


SPLITS = ("val", "ilsvrc-val")


def _ilsvrc_accuracy(run: ClassifyRun, model: nn.Module) -> dict:
    from ...imagenet.evaluate import imagenet_accuracy
    from ...imagenet.split import imagenet_val_samples

    reading = run.reading
    if reading is None or reading.labels != "imagenet-1k":
        raise RecipeError("stage eval: split ilsvrc-val needs reading: {labels: imagenet-1k} (a 1000-class base)")
    return imagenet_accuracy(model, imagenet_val_samples(run.data.path), reading.data_config(run.input_size))


def measure(run: ClassifyRun, model: nn.Module, split: str = "val") -> dict:
    from ...cost import profile
    from ...evaluate import accuracy

    acc = _ilsvrc_accuracy(run, model) if split == "ilsvrc-val" else accuracy(model, run.split("val"), run.input_size)
    prof = profile(model, (3, run.input_size, run.input_size))
    return {"top1": acc["top1"], "top5": acc["top5"], "images": acc["images"], "params": prof.params,
            "macs": prof.macs, "flash_bytes": prof.flash_bytes, "peak_ram_bytes": prof.peak_ram_bytes}


def evaluate(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    split = p.get("split", "val")
    if split not in SPLITS:
        raise RecipeError(f"stage eval: split {split!r} is not one of {', '.join(SPLITS)}")
    named = {} if split == "val" else {"split": split}
    row = {**measure(run, run.model(state), split), **named}
    key = "base" if split == "val" else f"base_{split}"
    if key not in run.results:
        run.results[key] = {"model": run.base["model"], "checkpoint": run.base.get("checkpoint"),
                            **measure(run, run.teacher(), split), **named}
    base = run.results[key]
    row["compression"] = {"params": base["params"] / row["params"], "macs": base["macs"] / row["macs"],
                          "flash": base["flash_bytes"] / row["flash_bytes"]}
    row["top1_drop_points"] = 100 * (base["top1"] - row["top1"])
    row["base_key"], row["base"] = key, dict(base)  # what the ratios are against; a resumed run restores it
    return row


def restore_base(results: dict, result: dict) -> None:
    """Put back the base row an eval stage was compared with, when a resumed run skipped every eval stage (the
    base is measured only by an eval stage that runs)."""
    if "base_key" in result and result["base_key"] not in results:
        results[result["base_key"]] = result["base"]


def agreement(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """Top-1 agreement and KL(base || model) on the images under ``images`` (recursive, unlabelled), each read the
    way the base reads images (the recipe's ``reading``)."""
    from ...data import Reading
    from ...imagenet.evaluate import agreement as measure_agreement, image_files

    if not p.get("images"):
        raise RecipeError("stage agreement: 'images' (a folder of images, searched recursively) is required")
    try:
        files = image_files(p["images"])
    except FileNotFoundError as e:
        raise RecipeError(f"stage agreement: {e}") from None
    config = (run.reading or Reading()).data_config(run.input_size)
    return {**measure_agreement(run.model(state), run.teacher(), files, config), "folder": str(p["images"])}


def latency(run: ClassifyRun, state: State, p: dict, out: Path) -> dict:
    """Batch-1 onnxruntime latency of the current model and the dense base, timed in the same run (round-robin,
    so machine drift hits both alike) in a fresh process (:func:`~stresnet.deploy.latency.isolated`);
    ``speedup`` = base ms / model ms. When the arm's ``search`` stage had a
    ``latency<=`` term, ``limit_ms`` is its limit in ms (as the search's table priced it) and ``within_limit``
    says whether the measured latency is at most 10 % above it (issue #18's tolerance)."""
    from ...deploy.latency import QUIET, isolated

    size, threads = int(p.get("input_size", 224)), int(p.get("threads", 2))
    models = {"model": run.model(state), "base": run.teacher()}
    with isolated() as timed:  # a fresh process: a trained-in process times onnxruntime ~25 % slower here
        bench = timed(models, (3, size, size), threads=threads, iters=int(p.get("iters", 100)), baseline="base",
                      rounds=int(p.get("rounds", 10)), backends=("onnxruntime",))
    ort = {name: bench["models"][name]["onnxruntime"] for name in models}
    # model_ms/base_ms: the quiet latency (p10) the search's table priced the limit in; the medians beside them
    row = {"input_size": size, "threads": threads, "statistic": QUIET, "model_ms": ort["model"][QUIET],
           "base_ms": ort["base"][QUIET], "speedup": ort["base"][QUIET] / ort["model"][QUIET],
           "model_median_ms": ort["model"]["median_ms"], "base_median_ms": ort["base"]["median_ms"],
           "median_speedup": ort["model"]["speedup"],
           "mac_ratio": bench["models"]["model"]["mac_ratio"], "env": bench["env"]}  # env: other processes' load
    searched = [s["result"].get("latency") for s in run.arm_results().get("stages", [])
                if s.get("type") == "search" and isinstance(s.get("result"), dict)]
    limit = next((x for x in searched if x and x.get("limit_ms")), None)
    if limit is not None:
        row.update(limit_ms=limit["limit_ms"], predicted_ms=limit.get("predicted_ms"),
                   within_limit=row["model_ms"] <= 1.1 * limit["limit_ms"],
                   limit_error=(row["model_ms"] - limit["limit_ms"]) / limit["limit_ms"])
    return row
