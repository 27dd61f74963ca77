"""Top-k accuracy as exact integer counts, so shards and batches add up to the single-pass figure."""
from __future__ import annotations

from typing import Sequence

import torch
from timm.utils import accuracy as _timm_accuracy

__all__ = ["topk_correct", "TopK"]


def topk_correct(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the ``k`` highest logits, for each ``k`` in ``topk``.

    timm's :func:`timm.utils.accuracy` does the ranking (``k`` is capped at the
    number of classes, as there); it returns percentages, turned back into
    counts here because counts sum exactly over batches and ranks.
    """
    n = int(target.shape[0])
    if n == 0:
        return [0 for _ in topk]
    return [int(round(float(p) * n / 100.0)) for p in _timm_accuracy(logits.detach().float(), target, topk=tuple(topk))]


class TopK:
    """Running top-1 / top-5 counts over batches: ``update(logits, target)`` each batch, then :meth:`result`."""

    def __init__(self) -> None:
        self.correct1 = self.correct5 = self.n = 0

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        c1, c5 = topk_correct(logits, target, (1, 5))
        self.correct1 += c1
        self.correct5 += c5
        self.n += int(target.shape[0])

    def counts(self) -> list[int]:
        """``[correct1, correct5, n]`` (e.g. to sum over ranks)."""
        return [self.correct1, self.correct5, self.n]

    def result(self) -> dict[str, float]:
        """``{"top1", "top5"}`` as fractions and ``"images"``: the number of samples seen."""
        n = max(self.n, 1)
        return {"top1": self.correct1 / n, "top5": self.correct5 / n, "images": self.n}
