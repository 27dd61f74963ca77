"""Turn what a user types (a timm name, an STResNet variant, a plan file) into a model."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .plan import Plan, PlanError, build, load_weights


def model_from_name(name: str, num_classes: int | None = None, checkpoint: str | Path | None = None) -> nn.Module:
    """Build ``name``: a plan JSON path, ``stresnet_<variant>`` of the MCU family, a YOLO (``yolov5s``,
    ``yolov5n``, ``yolov5s_2x``, ``yolov5n_2x``; needs ultralytics) or any timm architecture.

    Weights are random unless ``checkpoint`` (safetensors) is given; its shapes
    are checked against the architecture.
    """
    from .zoo.family import VARIANTS, family_plan

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    variant = name.removeprefix("stresnet_")
    from .detect import BASES, VARIANTS as YOLO_VARIANTS

    if name in BASES or name in YOLO_VARIANTS:  # ultralytics YOLOv5{s,n}(u) and their zoo plans
        from .detect.model import detector_from_name

        model = detector_from_name(name, nc=num_classes)
    elif name.endswith(".json") or Path(name).is_file():
        model = build(Plan.load(name), **kwargs)
    elif variant in VARIANTS:
        model = build(family_plan(variant), **kwargs)
    else:
        import timm

        if not timm.is_model(name):
            raise PlanError(f"model {name!r}: not a plan file, an STResNet variant or a timm architecture")
        model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()
