"""Keep ultralytics offline: no font, weight, dataset or telemetry download, ever."""
from __future__ import annotations

import os


def go_offline() -> None:
    """Set the environment ultralytics reads at import time (call before importing it; idempotent).

    ``YOLO_OFFLINE=1`` makes ``ultralytics.utils.is_online()`` false, which turns off
    telemetry, Hub callbacks and update checks; training and validation also run with
    ``plots=False`` and ``amp=False`` (the AMP check would fetch a model) -- see
    :mod:`stresnet.detect.train`.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")


def _no_font(font: str = "Arial.ttf") -> None:
    """Stand-in for ultralytics' ``check_font`` in dataset checks: fonts only serve plots, which are off."""
    return None


def require_ultralytics() -> None:
    """Import ultralytics (offline), or fail with one line saying how to install it.

    ultralytics' dataset check (``check_det_dataset``) probes GitHub for Arial.ttf even
    with ``YOLO_OFFLINE``; that probe is replaced by :func:`_no_font` here.
    """
    from . import DetectError

    go_offline()
    try:
        import ultralytics.data.utils as data_utils
    except ImportError:
        raise DetectError("ultralytics is not installed: pip install -e '.[detect]' "
                          "(or bash scripts/setup.sh)") from None
    data_utils.check_font = _no_font
