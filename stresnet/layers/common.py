"""Small pieces every factorised layer uses: the geometry it inherits, 1x1 convs, bias copies, magnitude masks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def conv_geometry(conv: nn.Conv2d) -> dict:
    """The spatial arguments the factorised layer's kxk conv must inherit."""
    if conv.groups != 1:
        raise ValueError(f"grouped conv (groups={conv.groups}) cannot be factorised")
    return dict(
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        padding_mode=conv.padding_mode,
    )


def empty_geometry(conv: nn.Conv2d) -> dict:
    """Geometry + bias flag, for building an empty (``init="random"``) replacement of ``conv``."""
    return dict(kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                bias=conv.bias is not None, padding_mode=conv.padding_mode)


def conv1x1(c_in: int, c_out: int, bias: bool = False, stride: int | tuple = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)


def copy_bias(dst: nn.Conv2d | nn.Linear, src: nn.Conv2d | nn.Linear) -> None:
    if src.bias is not None:
        dst.bias.data.copy_(src.bias.data)


def topk_mask(values: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (ties broken by index)."""
    keep = int(round(density * values.numel()))
    mask = torch.zeros(values.numel(), dtype=values.dtype, device=values.device)
    if keep > 0:
        idx = torch.argsort(values.abs().flatten(), descending=True, stable=True)[:keep]
        mask[idx] = 1
    return mask.reshape(values.shape)
