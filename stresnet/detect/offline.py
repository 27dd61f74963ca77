"""Keep ultralytics offline: no font, weight, dataset or telemetry download, ever."""
from __future__ import annotations

import os


def go_offline() -> None:
    """Set the environment ultralytics reads at import time (call before importing it; idempotent).

    ``YOLO_OFFLINE=1`` makes ``ultralytics.utils.is_online()`` false, which turns off
    telemetry, Hub callbacks and update checks; training and validation also run with
    ``plots=False`` (no Arial.ttf) and ``amp=False`` (no AMP check model) -- see
    :mod:`stresnet.detect.train`.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")


def require_ultralytics() -> None:
    """Import ultralytics (offline), or fail with one line saying how to install it."""
    from . import DetectError

    go_offline()
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        raise DetectError("ultralytics is not installed: pip install -e '.[detect]' "
                          "(or bash scripts/setup.sh)") from None
