"""``tt``, ``ranks: [r1, r2, r3, r4]``, ``factors: [[o1, o2], [i1, i2]]``: the 5-core tensor train.

The kernel as ``[o1, o2, k*k, i1, i2]`` (``C_out = o1*o2``, ``C_in = i1*i2``), the finer
layout of Yin et al. (CVPR 2021): fewer parameters than the 3-core layout at the same
ranks, at the price of reshapes between its five convs (so BatchNorm does not fold
into it and the cost model traces it as one leaf).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import decompose as dec
from .common import conv1x1, conv_geometry, empty_geometry
from .registry import BYTES_PER_CHANNEL, Cost, Factorisation, LayerGeometry, SpecError, check_positive_ranks, is_int, register
from .tt import check_tt_ranks


class TT5Conv2d(nn.Module):
    """Tensor-train conv, 5-core layout ``[o1, o2, k*k, i1, i2]`` with ranks ``(r1, r2, r3, r4)``.

    ``C_out = o1*o2`` and ``C_in = i1*i2``. The cores become five convs joined by
    reshapes: ``i2->r4`` (1x1 shared over i1), ``i1*r4->r3`` (1x1), ``kxk r3->r2``,
    ``r2->o2*r1`` (1x1), ``r1->o1`` (1x1 shared over o2). This is the finer
    layout of Yin et al. (CVPR 2021); it stores fewer parameters than the
    3-core layout at the same ranks.
    """

    spec_type = "tt"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ranks: Sequence[int],
        factors: Sequence[Sequence[int]],
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        (o1, o2), (i1, i2) = ((int(a), int(b)) for a, b in factors)
        if o1 * o2 != out_channels or i1 * i2 != in_channels:
            raise ValueError(f"TT factors {[[o1, o2], [i1, i2]]} do not multiply to C_out={out_channels}, C_in={in_channels}")
        r1, r2, r3, r4 = (int(r) for r in ranks)
        self.factors = [[o1, o2], [i1, i2]]
        self.in_split = conv1x1(i2, r4)
        self.in_mix = conv1x1(i1 * r4, r3)
        self.core = nn.Conv2d(r3, r2, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              bias=False, padding_mode=padding_mode)
        self.out_mix = conv1x1(r2, o2 * r1)
        self.out_split = conv1x1(r1, o1, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @property
    def ranks(self) -> list[int]:
        return [self.out_split.in_channels, self.core.out_channels, self.core.in_channels, self.in_split.out_channels]

    def spec(self) -> dict:
        return {"type": "tt", "ranks": self.ranks, "factors": self.factors}

    def forward(self, x: Tensor) -> Tensor:
        (o1, o2), (i1, i2) = self.factors
        b, _, h, w = x.shape
        x = self.in_split(x.reshape(b * i1, i2, h, w))
        x = self.in_mix(x.reshape(b, -1, h, w))
        x = self.out_mix(self.core(x))
        h, w = x.shape[-2:]
        x = self.out_split(x.reshape(b * o2, -1, h, w))  # (b*o2, o1, h, w)
        x = x.reshape(b, o2, o1, h, w).transpose(1, 2).reshape(b, o1 * o2, h, w)
        if self.bias is not None:
            x = x + self.bias[:, None, None]
        return x

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: Sequence[int], factors: Sequence[Sequence[int]], **_: object) -> "TT5Conv2d":
        layer = cls(conv.in_channels, conv.out_channels, ranks, factors, bias=conv.bias is not None,
                    **conv_geometry(conv))
        g1, g2, g3, g4, g5 = dec.tt_svd(dec.kernel_to_tt_tensor(conv.weight, factors), ranks)
        kh, kw = conv.kernel_size
        r1, r2, r3, r4 = layer.ranks
        (o1, o2), (i1, i2) = layer.factors
        with torch.no_grad():
            layer.in_split.weight.copy_(g5[:, :, 0][:, :, None, None])  # (r4, i2)
            # in_mix input channel index = i1_index * r4 + r4_index
            layer.in_mix.weight.copy_(g4.reshape(r3, i1 * r4)[:, :, None, None])
            layer.core.weight.copy_(g3.reshape(r2, kh, kw, r3).permute(0, 3, 1, 2))
            # out_mix output channel index = o2_index * r1 + r1_index
            layer.out_mix.weight.copy_(g2.permute(1, 0, 2).reshape(o2 * r1, r2)[:, :, None, None])
            layer.out_split.weight.copy_(g1[0][:, :, None, None])  # (o1, r1)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer


def _valid_factors(f: Any) -> bool:
    return (isinstance(f, list) and len(f) == 2
            and all(isinstance(p, list) and len(p) == 2 and all(is_int(x) and x > 0 for x in p) for p in f))


class TT5(Factorisation):
    name = "tt5"
    spec_type = "tt"
    builds = (TT5Conv2d,)

    def claims(self, spec: Mapping[str, Any]) -> bool:
        ranks = spec.get("ranks")
        return "factors" in spec or (isinstance(ranks, list) and len(ranks) == 4)

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        ranks = check_tt_ranks(spec)
        if len(ranks) != 4 or not _valid_factors(spec.get("factors")):
            raise SpecError(f"5-core tt needs ranks [r1, r2, r3, r4] and factors [[o1, o2], [i1, i2]], "
                            f"got ranks {ranks!r}, factors {spec.get('factors')!r}")
        check_positive_ranks(ranks)

    def ranks(self, spec: Mapping[str, Any]) -> list[int]:
        return list(spec["ranks"])

    def rank_limits(self, module: nn.Module, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
        c_out, c_in, kh, kw = module.weight.shape
        (o1, o2), (i1, i2) = spec["factors"]
        if o1 * o2 != c_out or i1 * i2 != c_in:
            raise SpecError(f"factors {spec['factors']} do not multiply to C_out={c_out}, C_in={c_in}")
        return [(f"r{k + 1}", b) for k, b in enumerate(dec.tt_rank_bounds((o1, o2, kh * kw, i1, i2)))]

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose", bases: Any = None) -> nn.Module:
        if init == "decompose":
            return TT5Conv2d.from_conv(module, spec["ranks"], spec["factors"])
        return TT5Conv2d(module.in_channels, module.out_channels, spec["ranks"], spec["factors"],
                         **empty_geometry(module))

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        """Five convs (each 1 byte a weight + 8 per output channel) + the layer's own bias/scale per C_out."""
        r1, r2, r3, r4 = spec["ranks"]
        (o1, o2), (i1, i2) = spec["factors"]
        convs = [  # (weights, output channels, MACs)
            (i2 * r4, r4, i1 * g.hw_in * r4 * i2),
            (i1 * r4 * r3, r3, g.hw_in * r3 * i1 * r4),
            (r3 * r2 * g.kk, r2, g.hw_out * r2 * r3 * g.kk),
            (r2 * o2 * r1, o2 * r1, g.hw_out * o2 * r1 * r2),
            (r1 * o1, o1, o2 * g.hw_out * o1 * r1),
        ]
        weights = sum(w for w, _, _ in convs)
        ram = max(
            g.c_in * g.hw_in + i1 * r4 * g.hw_in,  # in_split: (i1, i2) -> (i1, r4)
            i1 * r4 * g.hw_in + r3 * g.hw_in,
            r3 * g.hw_in + r2 * g.hw_out,
            r2 * g.hw_out + o2 * r1 * g.hw_out,
            o2 * r1 * g.hw_out + g.c_out * g.hw_out,
        )
        return {
            "params": weights + g.c_out * g.bias,
            "flash": weights + BYTES_PER_CHANNEL * (sum(c for _, c, _ in convs) + g.c_out),
            "macs": sum(m for _, _, m in convs),
            "ram": ram,
        }


TT_5CORE = register(TT5())
