"""Top-1 / top-5 accuracy of a model on one data split (a folder or a timm dataset spec split)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .data import DataSplit, eval_loader
from .utils.metrics import TopK
from .utils.modes import eval_mode


@torch.no_grad()
def accuracy(model: nn.Module, data: str | Path | DataSplit, size: int, batch_size: int = 128, progress: bool = False,
             limit: int | None = None) -> dict[str, float]:
    """Top-1 and top-5 (fractions) of ``model`` on ``data`` (a folder or a :class:`~stresnet.data.DataSplit`,
    eval transform at ``size``).

    ``limit`` evaluates only the first ``limit`` batches (for quick checks).
    """
    acc = TopK()
    loader = eval_loader(data, size, batch_size)
    with eval_mode(model):
        for i, (x, y) in enumerate(tqdm(loader, desc="eval", disable=not progress, leave=False)):
            if limit is not None and i >= limit:
                break
            acc.update(model(x), y)
    return acc.result()



@torch.no_grad()
def tensor_top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> float:
    """Top-1 (fraction) of ``model`` on an in-memory batch (calibration or selection images), in eval mode."""
    acc = TopK()
    device = next(model.parameters()).device
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            acc.update(model(images[i:i + batch_size].to(device)), labels[i:i + batch_size].to(device))
    return acc.result()["top1"]
