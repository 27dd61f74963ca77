"""YOLO detectors as data: an ultralytics base yaml + a stresnet plan, applied by :func:`stresnet.plan.compress`.

A factorised conv sits where the plan names it (``model.8.m.0.cv2.conv``), inside
ultralytics' ``Conv`` block, so its BatchNorm and SiLU still follow it. The one
thing ultralytics cannot do on its own is fold that BatchNorm for inference
(``fuse()`` expects a plain ``nn.Conv2d``): :class:`FactorisedDetectionModel`
folds it into the factorised layer's last 1x1 conv first (exact), then lets
ultralytics fuse the rest.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .. import layers as L
from ..layers import registry
from ..plan import Plan, PlanError, compress
from . import BASES, VARIANTS, DetectError
from .offline import require_ultralytics

PLANS_DIR = Path(__file__).resolve().parents[1] / "zoo" / "plans"
LIBRARY = "ultralytics"


require_ultralytics()  # one clear line when the optional extra is missing; offline from here on
from ultralytics.nn.modules.conv import Conv  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.torch_utils import fuse_conv_and_bn  # noqa: E402


class FactorisedDetectionModel(DetectionModel):
    """An ultralytics ``DetectionModel`` whose ``fuse()`` also folds BN into factorised convs."""

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        fold_factorised_bn(self)
        return super().fuse(verbose=verbose, imgsz=imgsz)


def fold_factorised_bn(model: nn.Module) -> int:
    """Fold each ``Conv`` block's BatchNorm into the last conv of its factorised layer; return how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, Conv) and hasattr(m, "bn") and isinstance(m.conv, (L.Tucker2Conv2d, L.LowRankConv2d)):
            last = m.conv[-1]
            m.conv[-1] = fuse_conv_and_bn(last, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
            n += 1
    return n


def create_base(arch: str, nc: int = 80, num_classes: int | None = None, verbose: bool = False) -> nn.Module:
    """An untrained ultralytics detector from its yaml (``yolov5s.yaml`` builds the anchor-free YOLOv5su)."""
    try:
        return FactorisedDetectionModel(arch, nc=num_classes or nc, verbose=verbose)
    except FileNotFoundError:
        raise DetectError(f"base {arch!r}: not an ultralytics model yaml (e.g. yolov5s.yaml, yolov5n.yaml)") from None


def detect_plan(plan: Plan, arch: str, nc: int = 80) -> Plan:
    """``plan`` with its ``base`` set to the ultralytics architecture (what :func:`stresnet.plan.build` needs)."""
    return Plan(layers=dict(plan.layers), base={"arch": arch, "library": LIBRARY, "nc": nc},
                surgery=dict(plan.surgery), meta=dict(plan.meta))


def compress_detector(model: nn.Module, plan: Plan | Mapping[str, Any], init: str = "decompose") -> nn.Module:
    """Apply ``plan`` to an ultralytics ``DetectionModel`` (trained or not) in place; return it."""
    if not isinstance(model, DetectionModel):
        raise DetectError(f"compress_detector: expected an ultralytics DetectionModel, got {type(model).__name__}")
    plan = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    for name, spec in plan.layers.items():
        if not _folds_bn(spec):
            foldable = ", ".join(f.name for f in registry.registered() if f.folds_bn)
            raise DetectError(f"layer {name!r}: {spec['type']} is not supported in a detector plan "
                              f"(use {foldable}): its BatchNorm could not be folded")
    compress(model, plan, init=init)  # validates the whole plan first (PlanError names the layer)
    model.__class__ = FactorisedDetectionModel
    return model


def zoo_plan(name: str) -> Plan:
    """The shipped plan of a zoo variant (``yolov5s_2x``, ``yolov5n_2x``)."""
    if name not in VARIANTS:
        raise DetectError(f"model {name!r}: not a YOLO zoo variant (known: {', '.join(VARIANTS)})")
    path = PLANS_DIR / VARIANTS[name][1]
    if not path.is_file():
        raise DetectError(f"model {name!r}: plan {path} is missing (run its recipe's search stage)")
    return Plan.load(path)


def _folds_bn(spec: Mapping[str, Any]) -> bool:
    try:
        return registry.for_spec(spec).folds_bn
    except registry.SpecError:
        return False  # an unknown type: compress() names it


def build_from_plan(plan: Plan, nc: int | None = None, num_classes: int | None = None, **_: Any) -> nn.Module:
    """The ``stresnet.builders`` entry point for ``"library": "ultralytics"`` (see :func:`stresnet.plan.build`)."""
    return build_detector(plan, nc=nc or num_classes)


def build_detector(plan: Plan, nc: int | None = None) -> nn.Module:
    """The compressed architecture of a detector plan, random weights (load a checkpoint into it)."""
    base = plan.base or {}
    if base.get("library") != LIBRARY or "arch" not in base:
        raise PlanError("plan: not a detector plan (its base must be {'arch': 'yolov5s.yaml', 'library': 'ultralytics'})")
    model = create_base(base["arch"], nc=nc or base.get("nc", 80))
    return compress_detector(model, plan, init="random")


def detector_from_name(name: str, nc: int | None = None) -> nn.Module:
    """``yolov5s`` / ``yolov5n`` (the ultralytics bases) or ``yolov5s_2x`` / ``yolov5n_2x`` (their zoo plans)."""
    if name in BASES:
        return create_base(BASES[name], nc=nc or 80)
    return build_detector(zoo_plan(name), nc=nc)


def is_detector_name(name: str) -> bool:
    return name in BASES or name in VARIANTS


def load_checkpoint(path: str | Path) -> nn.Module:
    """A detector from an ultralytics checkpoint (``best.pt`` / ``last.pt``), in float32 eval mode."""
    from ultralytics.nn.tasks import load_checkpoint as _load

    path = Path(path)
    if not path.is_file():
        raise DetectError(f"checkpoint {path}: no such file")
    model, _ = _load(str(path), device="cpu")
    return model.float().eval()


def as_yolo(model: nn.Module, arch: str = "yolov5s.yaml") -> Any:
    """Wrap a detector in ultralytics' ``YOLO`` so ``yolo('image.jpg')`` returns ``Results`` with boxes."""
    from ultralytics import YOLO

    yolo = YOLO(arch, task="detect", verbose=False)
    model.nc = int(getattr(model, "nc", None) or model.yaml["nc"])
    if not getattr(model, "names", None) or len(model.names) != model.nc:
        from .data import coco_names

        model.names = coco_names() if model.nc == 80 else {i: str(i) for i in range(model.nc)}
    yolo.model = model.eval()
    return yolo

