"""Fidelity of a compressed detector to its uncompressed base: the *agreement mAP*.

The base model's predictions (confidence >= ``conf``, after NMS) on the val images
become pseudo ground truth -- YOLO label files in a run folder, the images a
symlink to the real ones -- and ultralytics' own ``DetectionValidator`` scores the
compressed model against them (mAP50-95 / mAP50). 1.0 means the compressed model
finds exactly the base's boxes; it needs no human labels, so it measures what
compression changed even where the base itself is far from COCO quality.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

from torch import nn

from . import DetectError
from .offline import require_ultralytics, threads_kept


def pseudo_label_dataset(base: nn.Module, images: Sequence[str | Path], out: str | Path, imgsz: int = 320,
                         conf: float = 0.25, max_det: int = 300, batch: int = 16) -> tuple[Path, int]:
    """Write the base's predictions on ``images`` (confidence >= ``conf``, at most ``max_det`` per image,
    the most confident) as a YOLO dataset under ``out``; return (data.yaml, boxes)."""
    require_ultralytics()
    from ultralytics.utils import YAML

    from .model import as_yolo

    if not images:
        raise DetectError("agreement: no val images")
    out = Path(out).resolve()
    img_dir = Path(images[0]).resolve().parent
    if any(Path(p).resolve().parent != img_dir for p in images):
        raise DetectError("agreement: the val images must share one folder")
    (out / "labels" / "val").mkdir(parents=True, exist_ok=True)
    link = out / "images" / "val"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(img_dir, target_is_directory=True)
    yolo = as_yolo(copy.deepcopy(base))  # predicting fuses BN in place
    boxes = 0
    for i in range(0, len(images), batch):
        chunk = [str(p) for p in images[i:i + batch]]
        with threads_kept():
            predicted = yolo.predict(chunk, imgsz=imgsz, conf=conf, max_det=max_det, device="cpu", verbose=False)
        for path, res in zip(chunk, predicted):
            rows = [f"{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n"
                    for c, (x, y, w, h) in zip(res.boxes.cls.tolist(), res.boxes.xywhn.tolist())]
            (out / "labels" / "val" / f"{Path(path).stem}.txt").write_text("".join(rows))
            boxes += len(rows)
    (out / "val.txt").write_text("".join(f"./images/val/{Path(p).name}\n" for p in images))
    names = dict(base.names) if getattr(base, "names", None) else {i: str(i) for i in range(base.nc)}
    yaml_path = out / "data.yaml"
    YAML.save(yaml_path, {"path": str(out), "train": "val.txt", "val": "val.txt", "names": names})
    for cache in (out / "labels").glob("*.cache"):
        cache.unlink()  # labels were rewritten
    return yaml_path, boxes


def agreement_map(base: nn.Module, compressed: nn.Module | dict[str, nn.Module], images: Sequence[str | Path],
                  out: str | Path, imgsz: int = 320, conf: float = 0.25, max_det: int = 300) -> dict:
    """mAP50-95 / mAP50 of each compressed model against the base's own predictions on ``images``.

    The compressed model's detections are scored down to ``min(conf, 0.001)`` (the
    validator's usual floor), so a base that is still unsure of everything (a
    short from-scratch training) can be compared with a low ``conf`` and ``max_det``.
    """
    from .train import validate

    t0 = time.perf_counter()
    models = compressed if isinstance(compressed, dict) else {"compressed": compressed}
    data, boxes = pseudo_label_dataset(base, images, Path(out) / "pseudo", imgsz=imgsz, conf=conf, max_det=max_det)
    result: dict = {"conf": conf, "max_det": max_det, "pseudo_boxes": boxes, "images": len(images)}
    if boxes == 0:
        result["note"] = f"the base predicts no box at conf >= {conf}: agreement is undefined (lower conf)"
        return result
    for key, model in models.items():
        m = validate(model, data, imgsz=imgsz, out=Path(out) / f"val_{key}", conf=min(conf, 0.001))
        result[key] = {"map50_95": m["map50_95"], "map50": m["map50"]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result
