"""Train/eval mode switches that put every submodule's flag back as it was.

``model.train(was)`` after ``model.eval()`` would set *every* submodule to the
parent's old flag, losing e.g. a frozen BatchNorm kept in eval inside a model
in training mode; restoring each module's own flag does not.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

__all__ = ["eval_mode", "freeze_bn_statistics"]


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Eval mode for the duration of the block; every submodule's training flag is restored afterwards."""
    flags = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def freeze_bn_statistics(model: nn.Module) -> int:
    """Put every BatchNorm of ``model`` in eval mode (running statistics used, not updated) while the rest trains;
    its scale and shift still get gradients. Returns how many were frozen. Call it after each ``model.train()``."""
    frozen = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            frozen += 1
    return frozen
