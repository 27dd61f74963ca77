"""The torch.hub entries ``yolov5s_2x`` / ``yolov5n_2x``: an ultralytics ``YOLO`` around the zoo plan."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import VARIANTS, DetectError


def yolo_entry(name: str, pretrained: bool = False, weights: str | Path | None = None, nc: int = 80) -> Any:
    """``YOLO``-like model of zoo variant ``name``: ``model('image.jpg')`` returns ultralytics ``Results``.

    ``weights``: a ``model.safetensors`` written by the variant's recipe (shapes are
    checked against the plan). ``pretrained=True`` fails with one line: no COCO
    weights have been published (none could be trained here).
    """
    if name not in VARIANTS:
        raise DetectError(f"model {name!r}: not a YOLO zoo variant (known: {', '.join(VARIANTS)})")
    if pretrained:
        raise DetectError(f"{name}: no pretrained weights are published (no COCO-trained YOLOv5 can be had here); "
                          f"make them with `stresnet recipe run recipes/{name}_coco.yaml` (full COCO) or "
                          f"`recipes/{name}_coco_mini.yaml`, then pass weights='runs/<recipe>/finetune/model.safetensors'")
    from ..plan import load_weights
    from .model import as_yolo, detector_from_name

    model = detector_from_name(name, nc=nc)
    if weights is not None:
        load_weights(model, weights)
    return as_yolo(model.eval(), VARIANTS[name][0])
