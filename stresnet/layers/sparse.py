"""``sparse``, ``density``: magnitude pruning of a conv (grouped and depthwise ones included).

A plain conv whose kernel is multiplied by a fixed 0/1 mask; stored (and costed) as
CSR: ``nnz`` values + ``nnz`` indices + row pointers. The one option that suits a
depthwise conv, whose channel modes have nothing to factorise.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .common import copy_bias, topk_mask
from .registry import BYTES_PER_CHANNEL, ROW_PTR_BYTES, Cost, Factorisation, LayerGeometry, check_density, register


class MaskedConv2d(nn.Conv2d):
    """A plain conv whose kernel is multiplied by a 0/1 ``mask`` buffer: a sparse conv.

    Stored as an ordinary ``weight`` plus ``mask`` in the state dict; the cost
    model counts only the kept entries, with their indices (see ``stresnet.cost``).
    Only ``weight * mask`` reaches the output, so ``weight`` may hold values at
    masked positions: :meth:`from_conv` keeps the whole dense kernel there, so
    that a gradual pruning schedule (:class:`stresnet.train.sparsity.GradualSparsityHook`)
    can start from the dense layer; the hook zeroes what it prunes.

    ``density`` is the *target* density (``target_density``, reported by
    :meth:`spec`: the plan value); the current density of the mask is
    :attr:`density`. Standalone, it is the ``sparse`` plan spec (magnitude
    pruning); inside a :class:`~stresnet.layers.lrs.LowRankSparseConv2d` it is the sparse residual.
    """

    spec_type = "sparse"

    def __init__(self, *args: object, density: float = 1.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight))
        self.target_density = float(density)

    @property
    def density(self) -> float:
        """The current fraction of kept entries of the mask."""
        return float(self.mask.mean())

    def spec(self) -> dict:
        return {"type": "sparse", "density": self.target_density}

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    @classmethod
    def like(cls, conv: nn.Conv2d, density: float) -> "MaskedConv2d":
        """An empty masked conv with ``conv``'s geometry, on its device and dtype."""
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode, density=density)
        return layer.to(device=conv.weight.device, dtype=conv.weight.dtype)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, density: float, **_: object) -> "MaskedConv2d":
        """Magnitude pruning of a trained conv: the mask keeps the ``density`` largest ``|w|``.

        ``weight`` keeps the whole dense kernel (see the class docstring); the
        layer computes ``weight * mask``. Grouped convs are allowed.
        """
        layer = cls.like(conv, density)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            layer.mask.copy_(topk_mask(conv.weight.detach(), density))
            copy_bias(layer, conv)
        return layer


def csr_cost(g: LayerGeometry, density: float) -> Cost:
    """The CSR storage of a masked kernel, without bias or per-channel scale (the caller adds what it owns)."""
    nnz = int(round(density * g.weights))
    index_bytes = 2 if (g.c_in // g.groups) * g.kk <= 65536 else 4
    return {
        "params": 2 * nnz + g.c_out + 1,
        "flash": nnz * (1 + index_bytes) + ROW_PTR_BYTES * (g.c_out + 1),
        "macs": g.hw_out * nnz,
        "ram": g.c_in * g.hw_in + g.c_out * g.hw_out,
    }


SEARCH_DENSITIES = (0.1, 0.2, 0.3, 0.4)  # CSR stores a value and an index per entry: above ~0.45 nothing is saved


class Sparse(Factorisation):
    name = spec_type = "sparse"
    grouped = True
    searchable = True
    builds = (MaskedConv2d,)
    input_conv = ""
    output_layer = ""

    def check_spec(self, spec: Mapping[str, Any]) -> None:
        check_density(spec)

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose", bases: Any = None) -> nn.Module:
        if init == "decompose":
            return MaskedConv2d.from_conv(module, spec["density"])
        layer = MaskedConv2d.like(module, spec["density"])  # the mask of the random kernel: the right cost before loading
        with torch.no_grad():
            layer.mask.copy_(topk_mask(layer.weight, spec["density"]))
        return layer

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        c = csr_cost(g, spec["density"])
        return {**c, "params": c["params"] + g.c_out * g.bias, "flash": c["flash"] + BYTES_PER_CHANNEL * g.c_out}

    def candidates(self, g: LayerGeometry, loss: Callable[[int, int], float] | None, in_grid: Sequence[int],
                   tied: bool, step: int, stats: Any = None) -> list[tuple[dict, float]]:
        """Grouped (e.g. depthwise) convs only, whose channel modes leave nothing to factorise: magnitude
        pruning at :data:`SEARCH_DENSITIES`, scored by the calibration pass (``stats.sparse``)."""
        if g.groups == 1 or stats is None or getattr(stats, "sparse", None) is None:
            return []
        return [({"type": "sparse", "density": d}, stats.sparse(d)) for d in SEARCH_DENSITIES]


SPARSE = register(Sparse())
