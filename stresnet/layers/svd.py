"""``svd``, ``rank``: a two-factor low-rank layer, for a conv (``kxk C_in->r`` -> ``1x1 r->C_out``) or a linear.

The natural form for a matrix (a linear layer, a pointwise conv): truncated SVD of the
kernel flattened to ``(C_out, C_in*k*k)``. It saves parameters only below
``C_out*C_in*kk / (C_out + C_in*kk)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import torch
from timm.layers import Linear as TimmLinear
from torch import nn

from .. import decompose as dec
from .common import conv1x1, conv_geometry, copy_bias, empty_geometry
from .registry import BYTES_PER_CHANNEL, Cost, Factorisation, LayerGeometry, check_positive_ranks, register


class LowRankConv2d(nn.Sequential):
    """SVD conv: ``kxk (C_in->r)`` -> ``1x1 (r->C_out)``, from the kernel flattened to ``(C_out, C_in*k*k)``."""

    spec_type = "svd"

    def __init__(self, in_channels: int, out_channels: int, rank: int, kernel_size: int | Sequence[int] = 3,
                 stride: int | Sequence[int] = 1, padding: int | str | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = False, padding_mode: str = "zeros") -> None:
        super().__init__(
            OrderedDict(
                core=nn.Conv2d(in_channels, int(rank), kernel_size, stride=stride, padding=padding,
                               dilation=dilation, bias=False, padding_mode=padding_mode),
                last=conv1x1(int(rank), out_channels, bias=bias),
            )
        )

    @property
    def rank(self) -> int:
        return self.core.out_channels

    def spec(self) -> dict:
        return {"type": "svd", "rank": self.rank}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, bases: dec.ModeBases | None = None,
                  **_: object) -> "LowRankConv2d":
        """Factorise a trained conv (``bases``: its :func:`~stresnet.decompose.mode_bases`, calibrated or not)."""
        layer = cls(conv.in_channels, conv.out_channels, rank, bias=conv.bias is not None, **conv_geometry(conv))
        a, b = dec.svd(bases if bases is not None else conv.weight.reshape(conv.out_channels, -1), rank)
        with torch.no_grad():
            layer.core.weight.copy_(b.reshape(layer.core.weight.shape))
            layer.last.weight.copy_(a[:, :, None, None])
        copy_bias(layer.last, conv)
        return layer


class LowRankLinear(nn.Sequential):
    """SVD linear: ``Linear(in->r, no bias)`` -> ``Linear(r->out, bias)``."""

    spec_type = "svd"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__(
            OrderedDict(
                first=nn.Linear(in_features, int(rank), bias=False),
                last=nn.Linear(int(rank), out_features, bias=bias),
            )
        )

    @property
    def rank(self) -> int:
        return self.first.out_features

    def spec(self) -> dict:
        return {"type": "svd", "rank": self.rank}

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, bases: dec.ModeBases | None = None) -> "LowRankLinear":
        """Factorise a trained linear (``bases``: those of its weight as a ``1x1`` kernel)."""
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        a, b = dec.svd(bases if bases is not None else linear.weight, rank)
        with torch.no_grad():
            layer.first.weight.copy_(b)
            layer.last.weight.copy_(a)
        copy_bias(layer.last, linear)
        return layer


class SVD(Factorisation):
    name = spec_type = "svd"
    replaces = (nn.Conv2d, nn.Linear, TimmLinear)  # timm's Linear (e.g. MobileNetV3's head) only casts dtypes
    builds = (LowRankConv2d, LowRankLinear)
    folds_bn = True
    searchable = True
    input_conv = "core"
    output_layer = "last"

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        check_positive_ranks([spec.get("rank")])

    def ranks(self, spec: Mapping[str, Any]) -> list[int]:
        return [spec["rank"]]

    def rank_limits(self, module: nn.Module, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
        if isinstance(module, nn.Linear):
            return [("rank", min(module.out_features, module.in_features))]
        c_out, c_in, kh, kw = module.weight.shape
        return [("rank", min(c_out, c_in * kh * kw))]

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose", bases: Any = None) -> nn.Module:
        rank = spec["rank"]
        if isinstance(module, nn.Linear):
            if init == "decompose":
                return LowRankLinear.from_linear(module, rank, bases)
            return LowRankLinear(module.in_features, module.out_features, rank, bias=module.bias is not None)
        if init == "decompose":
            return LowRankConv2d.from_conv(module, rank, bases)
        return LowRankConv2d(module.in_channels, module.out_channels, rank, **empty_geometry(module))

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        r = int(spec["rank"])
        weights = g.c_in * g.kk * r + r * g.c_out
        return {
            "params": weights + g.c_out * g.bias,
            "flash": weights + BYTES_PER_CHANNEL * (r + g.c_out),
            "macs": g.hw_out * weights,
            "ram": max(g.c_in * g.hw_in + r * g.hw_out, (r + g.c_out) * g.hw_out),
        }

    def from_mode_ranks(self, g: LayerGeometry, r_out: int, r_in: int) -> dict | None:
        return {"type": "svd", "rank": int(min(r_out, g.c_in * g.kk))}

    def candidates(self, g: LayerGeometry, loss: Callable[[int, int], float] | None, in_grid: Sequence[int],
                   tied: bool, step: int, stats: Any = None) -> list[tuple[dict, float]]:
        """Pointwise convs and linears only (a matrix): rank ``r`` on the input grid, with the Tucker-2 table's
        loss at output rank ``r`` and the full input rank: the projection onto the leading ``r`` output vectors,
        which for weight-only bases is exactly the rank-``r`` SVD truncation and for calibrated ones what
        :func:`stresnet.decompose.svd` builds from them."""
        if loss is None or g.kk != 1 or g.groups != 1:
            return []
        return [({"type": "svd", "rank": r}, loss(r, g.c_in)) for r in in_grid if r < min(g.c_out, g.c_in)]


SVD_TYPE = register(SVD())
