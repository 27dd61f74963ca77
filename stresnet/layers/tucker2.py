"""``tucker2``, ``ranks: [r_out, r_in]``: ``1x1 C_in->r_in`` -> ``kxk r_in->r_out`` -> ``1x1 r_out->C_out``.

The Tucker-2 decomposition of the kernel's two channel modes (Kim et al., ICLR 2016),
the search's default option for every plain conv. Its ranks are bounded by the mode
sizes (``r_out <= C_out``, ``r_in <= C_in``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import decompose as dec
from .common import conv1x1, conv_geometry, copy_bias, empty_geometry
from .registry import BYTES_PER_CHANNEL, Cost, Factorisation, LayerGeometry, check_rank_list, register


class Tucker2Conv2d(nn.Sequential):
    """Tucker-2 conv: ``1x1 (C_in->r_in)`` -> ``kxk (r_in->r_out)`` -> ``1x1 (r_out->C_out)``.

    The kxk conv carries the original stride, padding and dilation; the last
    1x1 carries the original bias. No norm or activation in between, so the
    original BN still follows the block.
    """

    spec_type = "tucker2"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        ranks: Sequence[int],
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        r_out, r_in = (int(r) for r in ranks)
        super().__init__(
            OrderedDict(
                first=conv1x1(in_channels, r_in),
                core=nn.Conv2d(
                    r_in, r_out, kernel_size, stride=stride, padding=padding,
                    dilation=dilation, bias=False, padding_mode=padding_mode,
                ),
                last=conv1x1(r_out, out_channels, bias=bias),
            )
        )

    @property
    def ranks(self) -> list[int]:
        return [self.core.out_channels, self.core.in_channels]

    def spec(self) -> dict:
        return {"type": self.spec_type, "ranks": self.ranks}

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, ranks: Sequence[int], bases: dec.ModeBases | None = None, n_iter: int = 0
    ) -> "Tucker2Conv2d":
        """Factorise a trained conv (pass cached ``bases`` when deriving many ranks)."""
        layer = cls(conv.in_channels, conv.out_channels, ranks, bias=conv.bias is not None, **conv_geometry(conv))
        core, (u_out, u_in) = dec.tucker2(bases if bases is not None else conv.weight, ranks, n_iter)
        layer.load_factors(core, u_out, u_in)
        copy_bias(layer.last, conv)
        return layer

    def load_factors(self, core: Tensor, u_out: Tensor, u_in: Tensor) -> None:
        with torch.no_grad():
            self.first.weight.copy_(u_in.T[:, :, None, None])
            self.core.weight.copy_(core)
            self.last.weight.copy_(u_out[:, :, None, None])


def three_conv_cost(g: LayerGeometry, r_out: int, r_in: int) -> Cost:
    """``1x1 C_in->r_in``, ``kxk r_in->r_out`` (stride here), ``1x1 r_out->C_out``: Tucker-2 and 3-core TT."""
    weights = g.c_in * r_in + r_in * r_out * g.kk + r_out * g.c_out
    return {
        "params": weights + g.c_out * g.bias,
        "flash": weights + BYTES_PER_CHANNEL * (r_in + r_out + g.c_out),
        "macs": g.hw_in * g.c_in * r_in + g.hw_out * (r_in * r_out * g.kk + r_out * g.c_out),
        "ram": max(
            (g.c_in + r_in) * g.hw_in,
            r_in * g.hw_in + r_out * g.hw_out,
            (r_out + g.c_out) * g.hw_out,
        ),
    }


def rank_pairs(g: LayerGeometry, in_grid: Sequence[int], tied: bool, step: int) -> list[tuple[int, int]]:
    """Candidate ``(r_out, r_in)`` pairs: tied ranks on the grid (the input side clamped to C_in), or all pairs."""
    out_grid = list(range(step, g.c_out, step)) + [g.c_out]
    if tied:
        pairs = [(r, min(r, g.c_in)) for r in out_grid]
        return [p for p in pairs if p[1] in in_grid]
    return [(a, b) for a in out_grid for b in in_grid]


class ChannelModeRanks:
    """Ranks ``[r_out, r_in]`` of the kernel's two channel modes, bounded by ``C_out`` and ``C_in``
    (Tucker-2 and the Tucker-2 part of low-rank + sparse)."""

    def ranks(self, spec: Mapping[str, Any]) -> list[int]:
        return list(spec["ranks"])

    def rank_limits(self, module: nn.Module, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
        return [("r_out", module.out_channels), ("r_in", module.in_channels)]


class Tucker2(ChannelModeRanks, Factorisation):
    name = spec_type = "tucker2"
    builds = (Tucker2Conv2d,)
    folds_bn = True
    searchable = True
    input_conv = "first"
    output_layer = "last"

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        check_rank_list(spec, (2,), "[r_out, r_in]")

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose",
              bases: dec.ModeBases | None = None) -> nn.Module:
        if init == "decompose":
            return Tucker2Conv2d.from_conv(module, spec["ranks"], bases=bases, n_iter=int(spec.get("n_iter", 0)))
        return Tucker2Conv2d(module.in_channels, module.out_channels, spec["ranks"], **empty_geometry(module))

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        return three_conv_cost(g, *spec["ranks"])

    def from_mode_ranks(self, g: LayerGeometry, r_out: int, r_in: int) -> dict | None:
        return {"type": "tucker2", "ranks": [int(r_out), int(r_in)]}

    def candidates(self, g: LayerGeometry, loss: Callable[[int, int], float] | None, in_grid: Sequence[int],
                   tied: bool, step: int, stats: Any = None) -> list[tuple[dict, float]]:
        if loss is None:  # a grouped conv: no channel-mode table
            return []
        return [({"type": "tucker2", "ranks": [a, b]}, loss(a, b)) for a, b in rank_pairs(g, in_grid, tied, step)]


TUCKER2 = register(Tucker2())
