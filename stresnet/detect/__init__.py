"""Detectors: YOLOv5s/YOLOv5n (ultralytics) compressed by the same plans and search as the classifiers.

``ultralytics`` is an optional dependency (``pip install -e ".[detect]"``); every
module here imports it lazily, after :func:`stresnet.detect.offline.go_offline`
has made sure it never reaches for the network.

    offline.py    environment that keeps ultralytics from downloading anything
    data.py       COCO json -> YOLO labels (ultralytics' converter) into a run folder + dataset YAML
    model.py      base YOLO models, the factorised DetectionModel, plans applied / rebuilt, YOLO wrapper
    search.py     calibration images and the CompressNAS search (MSE estimator on layer outputs)
    train.py      training and validation through ultralytics' trainer and validator
    agreement.py  fidelity of a compressed detector to its uncompressed base (agreement mAP)
    (the ``task: detect`` recipe stages live in stresnet/recipes/stages/detect.py)
    card.py       model cards from the recipe results
    hub.py        the ``yolov5s_2x`` / ``yolov5n_2x`` torch.hub entries
    names.py      the ``stresnet.models`` entry point: these names for ``stresnet.resolve``
"""
from __future__ import annotations

from ..plan import PlanError

__all__ = ["DetectError", "VARIANTS", "BASES"]

# zoo name -> (ultralytics base yaml, plan file in stresnet/zoo/plans)
VARIANTS = {"yolov5s_2x": ("yolov5s.yaml", "yolov5s_2x.json"), "yolov5n_2x": ("yolov5n.yaml", "yolov5n_2x.json")}
BASES = {"yolov5s": "yolov5s.yaml", "yolov5n": "yolov5n.yaml"}


class DetectError(PlanError):
    """Bad input to the detection tools; the message is one line naming the offending thing.

    A :class:`~stresnet.plan.PlanError`, so every ``stresnet`` command prints it as one line (exit 2)."""

