"""Keep ultralytics offline and in its lane: no font, weight, dataset or telemetry download, ever, and the
process's torch thread count as the caller set it."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


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


@contextmanager
def threads_kept() -> Iterator[None]:
    """Run an ultralytics train, val or predict call and give torch its thread count back afterwards.

    ultralytics' ``select_device`` sets ``torch.set_num_threads(cpu_count - 1)`` on every CPU call (1 on two
    cores) and never restores it, so every later stage of a detection recipe (the search, the decomposition)
    would run on one thread fewer than asked, on two cores on one; inside the call its own choice stands.
    """
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)
