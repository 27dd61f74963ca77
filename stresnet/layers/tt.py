"""``tt``, ``ranks: [r1, r2]``: the 3-core tensor train of the kernel as ``[C_out, k*k, C_in]``.

The cores are the same three convs as Tucker-2 (so the cost formula is shared); only
the factorisation (TT-SVD) and the spec differ. The 5-core layout (``ranks`` of four
and ``factors``) is its own type, :mod:`stresnet.layers.tt5`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from .. import decompose as dec
from .common import conv_geometry, copy_bias, empty_geometry
from .registry import Cost, Factorisation, LayerGeometry, SpecError, check_positive_ranks, register
from .tucker2 import Tucker2Conv2d, three_conv_cost

TT_RANKS_FORM = "[r1, r2] or [r1, r2, r3, r4]"


class TTConv2d(Tucker2Conv2d):
    """Tensor-train conv, 3-core layout ``[C_out, k*k, C_in]`` with ranks ``(r1, r2)``.

    Cores ``G1 (C_out, r1)``, ``G2 (r1, k*k, r2)``, ``G3 (r2, C_in)`` are the same
    three convs as Tucker-2 (``1x1 C_in->r2``, ``kxk r2->r1``, ``1x1 r1->C_out``);
    only the factorisation (TT-SVD) and the spec differ. ``ranks`` = ``[r1, r2]``.
    """

    spec_type = "tt"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: Sequence[int], **_: object) -> "TTConv2d":
        layer = cls(conv.in_channels, conv.out_channels, ranks, bias=conv.bias is not None, **conv_geometry(conv))
        g1, g2, g3 = dec.tt_svd(dec.kernel_to_tt_tensor(conv.weight), ranks)
        kh, kw = conv.kernel_size
        r1, r2 = g2.shape[0], g2.shape[2]
        core = g2.reshape(r1, kh, kw, r2).permute(0, 3, 1, 2)
        layer.load_factors(core, g1[0], g3[:, :, 0].T)
        copy_bias(layer.last, conv)
        return layer


def check_tt_ranks(spec: Mapping[str, Any]) -> list[int]:
    ranks = spec.get("ranks")
    if not (isinstance(ranks, list) and len(ranks) in (2, 4)):
        raise SpecError(f"tt needs ranks {TT_RANKS_FORM}, got {ranks!r}")
    return ranks


class TT(Factorisation):
    name = spec_type = "tt"
    builds = (TTConv2d,)
    folds_bn = True
    input_conv = "first"

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        check_positive_ranks(check_tt_ranks(spec))

    def ranks(self, spec: Mapping[str, Any]) -> list[int]:
        return list(spec["ranks"])

    def rank_limits(self, module: nn.Module, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
        c_out, c_in, kh, kw = module.weight.shape
        return [(f"r{k + 1}", b) for k, b in enumerate(dec.tt_rank_bounds((c_out, kh * kw, c_in)))]

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose", bases: Any = None) -> nn.Module:
        if init == "decompose":
            return TTConv2d.from_conv(module, spec["ranks"])
        return TTConv2d(module.in_channels, module.out_channels, spec["ranks"], **empty_geometry(module))

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        r1, r2 = spec["ranks"]
        return three_conv_cost(g, r1, r2)


TT_3CORE = register(TT())
