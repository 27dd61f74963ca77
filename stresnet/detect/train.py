"""Training and validation through ultralytics' own ``DetectionTrainer`` and ``DetectionValidator``.

Every run is offline and CPU-safe: ``plots=False`` (plots would fetch a font),
``amp=False`` (the AMP check would fetch a model), no Hub callbacks
(``YOLO_OFFLINE``). A compressed model is trained as is: the trainer receives the
module itself instead of rebuilding it from the base yaml.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from . import DetectError
from .offline import require_ultralytics, threads_kept

OFFLINE_ARGS = {"plots": False, "amp": False, "device": "cpu", "exist_ok": True, "verbose": True}


def train_detector(data: str | Path, out: str | Path, model: nn.Module | None = None, arch: str = "yolov5s.yaml",
                   epochs: int = 1, imgsz: int = 320, batch: int = 16, workers: int = 0,
                   extra: Mapping[str, Any] | None = None) -> dict:
    """Train ``model`` (or a fresh ``arch``) on ``data`` into ``out``; return paths, final metrics and seconds.

    Validation runs once, after the last epoch (``val=False`` skips the others), so
    ``last.pt`` is the model reported: nothing is selected on the val images.
    """
    require_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    out = Path(out).resolve()
    args = {**OFFLINE_ARGS, "model": arch, "data": str(data), "epochs": int(epochs), "imgsz": int(imgsz),
            "batch": int(batch), "workers": int(workers), "project": str(out.parent), "name": out.name,
            "val": False, "pretrained": False, **dict(extra or {})}
    with threads_kept():  # the trainer's constructor already sets them
        trainer = DetectionTrainer(overrides=args)
        if model is not None:
            trainer.model = model.float().train().requires_grad_(True)  # used as is: setup_model skips a module
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    last = Path(trainer.last)
    if not last.is_file():
        raise DetectError(f"training into {out}: ultralytics wrote no {last.name}")
    return {"weights": str(last), "seconds": round(seconds, 1), "epochs": int(epochs), "imgsz": int(imgsz),
            "batch": int(batch)}


def validate(model: nn.Module | str | Path, data: str | Path, imgsz: int = 320, batch: int = 16,
             out: str | Path | None = None, conf: float = 0.001) -> dict:
    """mAP50-95 / mAP50 (and P, R) of ``model`` (a module or an ultralytics ``.pt``) on ``data``'s val split."""
    require_ultralytics()
    from ultralytics.models.yolo.detect import DetectionValidator

    from .model import as_yolo, load_checkpoint

    model = load_checkpoint(model) if not isinstance(model, nn.Module) else copy.deepcopy(model)  # val fuses BN
    args = {**OFFLINE_ARGS, "data": str(data), "imgsz": int(imgsz), "batch": int(batch), "split": "val",
            "save_json": False, "conf": float(conf)}
    if out is not None:
        out = Path(out).resolve()
        args.update(project=str(out.parent), name=out.name)
    t0 = time.perf_counter()
    yolo = as_yolo(model)
    with threads_kept():
        validator = DetectionValidator(args=args)
        validator(model=yolo.model)
    box = validator.metrics.box
    return {"map50_95": float(box.map), "map50": float(box.map50), "precision": float(box.mp),
            "recall": float(box.mr), "images": int(validator.seen), "seconds": round(time.perf_counter() - t0, 1)}
