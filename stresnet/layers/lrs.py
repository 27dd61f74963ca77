"""``lrs``, ``ranks: [r_out, r_in]``, ``density``: low-rank + sparse (Hawkins et al., 2021).

``W = L + S``: a Tucker-2 part for the coarse structure plus a sparse residual conv,
for layers where pure low rank loses too much at the same storage.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import decompose as dec
from .common import conv_geometry, empty_geometry, topk_mask
from .registry import Cost, Factorisation, LayerGeometry, check_density, check_rank_list, register
from .sparse import MaskedConv2d, csr_cost
from .tucker2 import ChannelModeRanks, Tucker2Conv2d, three_conv_cost


class LowRankSparseConv2d(nn.Module):
    """Low-rank + sparse conv: a Tucker-2 part (coarse structure) plus a masked sparse residual conv.

    Hawkins et al. (2021): ``W = L + S`` with ``L`` low-rank and ``S`` sparse. At
    initialisation the mask of ``S`` keeps the ``density`` largest-magnitude
    entries of ``W - L``, and ``S.weight`` holds the whole residual ``W - L``
    (only ``weight * mask`` is used), so that a gradual schedule
    (:class:`stresnet.train.sparsity.GradualSparsityHook`) can start from
    ``L + (W - L) = W`` exactly. Without a hook the mask stays fixed during
    fine-tuning.
    """

    spec_type = "lrs"

    def __init__(self, in_channels: int, out_channels: int, ranks: Sequence[int], density: float,
                 kernel_size: int | Sequence[int] = 3, stride: int | Sequence[int] = 1,
                 padding: int | str | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                 bias: bool = False, padding_mode: str = "zeros") -> None:
        super().__init__()
        geometry = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                        padding_mode=padding_mode)
        self.lowrank = Tucker2Conv2d(in_channels, out_channels, ranks, bias=bias, **geometry)
        self.sparse = MaskedConv2d(in_channels, out_channels, bias=False, density=density, **geometry)
        self.target_density = float(density)

    def spec(self) -> dict:
        return {"type": "lrs", "ranks": self.lowrank.ranks, "density": self.target_density}

    def forward(self, x: Tensor) -> Tensor:
        return self.lowrank(x) + self.sparse(x)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: Sequence[int], density: float,
                  bases: dec.ModeBases | None = None, **_: object) -> "LowRankSparseConv2d":
        layer = cls(conv.in_channels, conv.out_channels, ranks, density, bias=conv.bias is not None,
                    **conv_geometry(conv))
        layer.lowrank = Tucker2Conv2d.from_conv(conv, ranks, bases=bases)
        core, u_out, u_in = layer.lowrank.core.weight, layer.lowrank.last.weight[:, :, 0, 0], layer.lowrank.first.weight[:, :, 0, 0].T
        residual = conv.weight.detach() - dec.tucker2_to_tensor(core.detach(), (u_out.detach(), u_in.detach()))
        with torch.no_grad():
            layer.sparse.mask.copy_(topk_mask(residual, density))
            layer.sparse.weight.copy_(residual)  # the full residual; the mask selects (see the docstring)
        return layer


class LowRankSparse(ChannelModeRanks, Factorisation):
    name = spec_type = "lrs"
    builds = (LowRankSparseConv2d,)

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        check_rank_list(spec, (2,), "[r_out, r_in]")
        check_density(spec)

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose",
              bases: dec.ModeBases | None = None) -> nn.Module:
        if init == "decompose":
            return LowRankSparseConv2d.from_conv(module, spec["ranks"], spec["density"], bases=bases)
        return LowRankSparseConv2d(module.in_channels, module.out_channels, spec["ranks"], spec["density"],
                                   **empty_geometry(module))

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        """The Tucker-2 part (which carries the bias and scale) plus the residual's CSR storage."""
        low, sparse = three_conv_cost(g, *spec["ranks"]), csr_cost(g, spec["density"])
        return {"params": low["params"] + sparse["params"], "flash": low["flash"] + sparse["flash"],
                "macs": low["macs"] + sparse["macs"], "ram": max(low["ram"], sparse["ram"])}


LRS = register(LowRankSparse())
