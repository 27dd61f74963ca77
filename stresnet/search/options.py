"""Per-layer options of the rank search, each with its estimated loss and its cost row.

Costs are analytic (no module is built per option), in the units of
:mod:`stresnet.cost`: ``params`` (stored numbers), ``flash`` (int8 bytes:
1 byte a weight plus 8 bytes of int32 bias and requant scale per output channel
of each conv), ``macs`` at the calibration resolution, and ``ram``, the layer's
own int8 working set: the largest input + output pair among its convs (a
factorised layer's intermediate tensors are smaller than its ends, so
factorising never raises it; the whole model's peak RAM is the max over layers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..cost import BYTES_PER_CHANNEL
from .estimator import ErrorTable
from .ilp import Option


@dataclass(frozen=True)
class LayerShape:
    """The geometry one conv sees at the calibration resolution."""

    c_in: int
    c_out: int
    kk: int
    hw_in: int  # H_in * W_in
    hw_out: int  # H_out * W_out
    bias: bool

    @classmethod
    def of(cls, conv: nn.Conv2d, in_hw: Sequence[int]) -> "LayerShape":
        h, w = in_hw
        out = []
        for size, k, s, p, d in zip((h, w), conv.kernel_size, conv.stride, conv.padding, conv.dilation):
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        kh, kw = conv.kernel_size
        return cls(conv.in_channels, conv.out_channels, kh * kw, h * w, out[0] * out[1], conv.bias is not None)

    def full_cost(self) -> dict[str, float]:
        weights = self.c_out * self.c_in * self.kk
        return {
            "params": weights + self.c_out * self.bias,
            "flash": weights + BYTES_PER_CHANNEL * self.c_out,
            "macs": self.hw_out * weights,
            "ram": self.c_in * self.hw_in + self.c_out * self.hw_out,
        }

    def tucker2_cost(self, r_out: int, r_in: int) -> dict[str, float]:
        """``1x1 C_in->r_in``, ``kxk r_in->r_out`` (stride here), ``1x1 r_out->C_out``."""
        weights = self.c_in * r_in + r_in * r_out * self.kk + r_out * self.c_out
        return {
            "params": weights + self.c_out * self.bias,
            "flash": weights + BYTES_PER_CHANNEL * (r_in + r_out + self.c_out),
            "macs": self.hw_in * self.c_in * r_in + self.hw_out * (r_in * r_out * self.kk + r_out * self.c_out),
            "ram": max(
                (self.c_in + r_in) * self.hw_in,
                r_in * self.hw_in + r_out * self.hw_out,
                (r_out + self.c_out) * self.hw_out,
            ),
        }


def tucker2_ranks(shape: LayerShape, table: ErrorTable, tied: bool = True, step: int = 8) -> list[tuple[int, int]]:
    """Candidate ``(r_out, r_in)`` pairs: tied ranks on the grid (the input side clamped to C_in), or all pairs."""
    out_grid = list(range(step, shape.c_out, step)) + [shape.c_out]
    if tied:
        pairs = [(r, min(r, shape.c_in)) for r in out_grid]
        return [p for p in pairs if p[1] in table.in_grid]
    return [(a, b) for a in out_grid for b in table.in_grid]


def layer_options(shape: LayerShape, table: ErrorTable, tied: bool = True, step: int = 8) -> list[Option]:
    """``full`` plus every Tucker-2 candidate that stores fewer parameters than the full conv."""
    full = shape.full_cost()
    options = [Option({"type": "full"}, 0.0, full)]
    for r_out, r_in in tucker2_ranks(shape, table, tied, step):
        cost = shape.tucker2_cost(r_out, r_in)
        if cost["params"] < full["params"]:
            options.append(Option({"type": "tucker2", "ranks": [r_out, r_in]}, table(r_out, r_in), cost))
    return options
