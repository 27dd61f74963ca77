"""The CompressNAS search on a detector: calibration detection images, MSE estimator on layer outputs, ILP.

The classification search weighs output errors by the cross-entropy gradient
(Fisher); a detector has no such single loss at hand, so this uses CompressNAS's
own estimator: each option's output MSE on the calibration images, normalised by
the layer's output energy. The budget is a params ratio (``2x``) or any budget
string of :mod:`stresnet.search.budgets`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..plan import Plan
from ..search.budgets import parse_budget
from ..search.pipeline import build_space, plan_summary, searched_plan
from . import DetectError

EXCLUDE = (".dfl.",)  # the distribution-focal-loss conv is a fixed projection, never trained


def calibration_images(paths: Sequence[str | Path], n: int, imgsz: int, seed: int = 0) -> torch.Tensor:
    """``n`` images drawn (fixed seed) from ``paths``, letterboxed to ``imgsz`` as ultralytics does, RGB in [0, 1]."""
    import cv2
    from ultralytics.data.augment import LetterBox

    if not paths:
        raise DetectError("calibration: no images")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(n, len(paths)), replace=False)
    box = LetterBox(new_shape=(imgsz, imgsz), auto=False, scaleup=True)
    out = []
    for i in sorted(pick):
        img = cv2.imread(str(paths[i]))
        if img is None:
            raise DetectError(f"calibration image {paths[i]}: cannot be read")
        img = box(image=img)[:, :, ::-1].transpose(2, 0, 1).copy()  # BGR HWC -> RGB CHW
        out.append(torch.from_numpy(img).float() / 255)
    return torch.stack(out)


def search_detector(model: nn.Module, images: torch.Tensor, budget: str = "2x", step: int = 8,
                    exclude: Sequence[str] = EXCLUDE, progress: bool = False) -> tuple[Plan, dict]:
    """The searched plan of ``model`` at ``budget`` and a JSON-ready report (sizes, estimated loss, seconds)."""
    t0 = time.perf_counter()
    model = model.float().eval()
    space = build_space(model, images, estimator="mse", step=step, progress=progress)
    for name in space.options:
        if any(x in f".{name}." for x in exclude):
            space.options[name] = space.options[name][:1]  # "full" only
    plan = searched_plan(space, parse_budget(budget))
    summary = plan_summary(space, plan)
    report = {
        "budget": budget, "estimator": "mse", "step": step, "calibration_images": len(images),
        "input_size": list(images.shape[1:]), "base_params": space.base_cost["params"],
        "base_macs": space.base_cost["macs"], "params": summary["params"], "macs": summary["macs"],
        "ratio": summary["ratio"], "estimated_loss": summary["estimated_loss"],
        "factorised_layers": len(plan.layers), "searched_layers": len(space.options),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return plan, report
