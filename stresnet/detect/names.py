"""The ``stresnet.models`` entry point: YOLO names for :func:`stresnet.resolve.model_from_name`.

Light on purpose: resolving any other name must not import ultralytics, so
``.model`` is imported only when the name is one of ours.
"""
from __future__ import annotations

from typing import Any

from . import BASES, VARIANTS


def model_from_name(name: str, num_classes: int | None = None) -> Any:
    """A YOLO base or zoo detector by name (random weights), None for every other name."""
    if name not in BASES and name not in VARIANTS:
        return None
    from .model import detector_from_name

    return detector_from_name(name, nc=num_classes)
