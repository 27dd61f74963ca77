"""Top-1 / top-5 accuracy of a model on an ImageFolder split."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .data import eval_loader


@torch.no_grad()
def accuracy(model: nn.Module, data: str | Path, size: int, batch_size: int = 128, progress: bool = False,
             limit: int | None = None) -> dict[str, float]:
    """Top-1 and top-5 (fractions) of ``model`` on ``data`` (ImageFolder, eval transform at ``size``).

    ``limit`` evaluates only the first ``limit`` batches (for quick checks).
    """
    was_training = model.training
    model.eval()
    correct1 = correct5 = n = 0
    loader = eval_loader(data, size, batch_size)
    try:
        for i, (x, y) in enumerate(tqdm(loader, desc="eval", disable=not progress, leave=False)):
            if limit is not None and i >= limit:
                break
            top = model(x).topk(min(5, model_num_classes(model, x)), dim=1).indices
            correct1 += (top[:, 0] == y).sum().item()
            correct5 += (top == y[:, None]).any(1).sum().item()
            n += len(y)
    finally:
        model.train(was_training)
    return {"top1": correct1 / max(n, 1), "top5": correct5 / max(n, 1), "images": n}


def model_num_classes(model: nn.Module, x: torch.Tensor) -> int:
    """Number of classes the model predicts (timm's attribute, else the output width)."""
    n = getattr(model, "num_classes", None)
    return int(n) if n else int(model(x[:1]).shape[1])
