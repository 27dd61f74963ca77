"""Turn what a user types (a timm name, an STResNet zoo name, a plan file, a plug-in's name) into a model."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

from torch import nn

from .plan import Plan, PlanError, build, load_weights

MODELS_GROUP = "stresnet.models"
"""Entry-point group of name resolvers from other libraries: ``resolve(name, num_classes) -> nn.Module | None``.
The ultralytics detectors plug in here (``yolov5s``, ``yolov5s_2x``, ...), so the core never imports them."""


@lru_cache(maxsize=None)
def _plugins() -> tuple[Callable[[str, int | None], nn.Module | None], ...]:
    from importlib.metadata import entry_points

    return tuple(ep.load() for ep in entry_points(group=MODELS_GROUP))


def model_from_name(name: str, num_classes: int | None = None, checkpoint: str | Path | None = None) -> nn.Module:
    """Build ``name``: a plan JSON path, a name a plug-in knows (the YOLO detectors ``yolov5s``,
    ``yolov5n``, ``yolov5s_2x``, ``yolov5n_2x``; they need ultralytics) or any timm architecture,
    the STResNet zoo included (``import stresnet`` registers it).

    Weights are random unless ``checkpoint`` (safetensors) is given; its shapes
    are checked against the architecture.
    """
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = next((m for m in (resolve(name, num_classes) for resolve in _plugins()) if m is not None), None)
    if model is None and (name.endswith(".json") or Path(name).is_file()):
        model = build(Plan.load(name), **kwargs)
    elif model is None:
        import timm

        if not timm.is_model(name):
            raise PlanError(f"model {name!r}: not a plan file, an STResNet variant or a timm architecture")
        model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()
