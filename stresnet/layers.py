"""Factorised layers built only from plain ``nn.Conv2d`` / ``nn.Linear`` (plus reshapes).

Keeping every factorised layer a composition of stock modules means a compressed
model exports to ONNX, quantises with stock tools and loads from safetensors
with no custom kernels. Each layer can be built empty (the architecture, for
loading a checkpoint) or from a trained module by decomposition
(``from_conv`` / ``from_linear``), and reports its plan spec (``spec()``).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import decompose as dec

__all__ = [
    "Tucker2Conv2d",
    "TTConv2d",
    "TT5Conv2d",
    "LowRankConv2d",
    "LowRankLinear",
    "MaskedConv2d",
    "LowRankSparseConv2d",
    "FACTORISED_TYPES",
]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _conv_geometry(conv: nn.Conv2d) -> dict:
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


def _1x1(c_in: int, c_out: int, bias: bool = False, stride: int | tuple = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)


def _copy_bias(dst: nn.Conv2d | nn.Linear, src: nn.Conv2d | nn.Linear) -> None:
    if src.bias is not None:
        dst.bias.data.copy_(src.bias.data)


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
                first=_1x1(in_channels, r_in),
                core=nn.Conv2d(
                    r_in, r_out, kernel_size, stride=stride, padding=padding,
                    dilation=dilation, bias=False, padding_mode=padding_mode,
                ),
                last=_1x1(r_out, out_channels, bias=bias),
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
        layer = cls(conv.in_channels, conv.out_channels, ranks, bias=conv.bias is not None, **_conv_geometry(conv))
        core, (u_out, u_in) = dec.tucker2(bases if bases is not None else conv.weight, ranks, n_iter)
        layer.load_factors(core, u_out, u_in)
        _copy_bias(layer.last, conv)
        return layer

    def load_factors(self, core: Tensor, u_out: Tensor, u_in: Tensor) -> None:
        with torch.no_grad():
            self.first.weight.copy_(u_in.T[:, :, None, None])
            self.core.weight.copy_(core)
            self.last.weight.copy_(u_out[:, :, None, None])


class TTConv2d(Tucker2Conv2d):
    """Tensor-train conv, 3-core layout ``[C_out, k*k, C_in]`` with ranks ``(r1, r2)``.

    Cores ``G1 (C_out, r1)``, ``G2 (r1, k*k, r2)``, ``G3 (r2, C_in)`` are the same
    three convs as Tucker-2 (``1x1 C_in->r2``, ``kxk r2->r1``, ``1x1 r1->C_out``);
    only the factorisation (TT-SVD) and the spec differ. ``ranks`` = ``[r1, r2]``.
    """

    spec_type = "tt"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ranks: Sequence[int], **_: object) -> "TTConv2d":
        layer = cls(conv.in_channels, conv.out_channels, ranks, bias=conv.bias is not None, **_conv_geometry(conv))
        g1, g2, g3 = dec.tt_svd(dec.kernel_to_tt_tensor(conv.weight), ranks)
        kh, kw = conv.kernel_size
        r1, r2 = g2.shape[0], g2.shape[2]
        core = g2.reshape(r1, kh, kw, r2).permute(0, 3, 1, 2)
        layer.load_factors(core, g1[0], g3[:, :, 0].T)
        _copy_bias(layer.last, conv)
        return layer


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
        self.in_split = _1x1(i2, r4)
        self.in_mix = _1x1(i1 * r4, r3)
        self.core = nn.Conv2d(r3, r2, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              bias=False, padding_mode=padding_mode)
        self.out_mix = _1x1(r2, o2 * r1)
        self.out_split = _1x1(r1, o1, bias=False)
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
                    **_conv_geometry(conv))
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
                last=_1x1(int(rank), out_channels, bias=bias),
            )
        )

    @property
    def rank(self) -> int:
        return self.core.out_channels

    def spec(self) -> dict:
        return {"type": "svd", "rank": self.rank}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, **_: object) -> "LowRankConv2d":
        layer = cls(conv.in_channels, conv.out_channels, rank, bias=conv.bias is not None, **_conv_geometry(conv))
        a, b = dec.svd(conv.weight.reshape(conv.out_channels, -1), rank)
        with torch.no_grad():
            layer.core.weight.copy_(b.reshape(layer.core.weight.shape))
            layer.last.weight.copy_(a[:, :, None, None])
        _copy_bias(layer.last, conv)
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
    def from_linear(cls, linear: nn.Linear, rank: int) -> "LowRankLinear":
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        a, b = dec.svd(linear.weight, rank)
        with torch.no_grad():
            layer.first.weight.copy_(b)
            layer.last.weight.copy_(a)
        _copy_bias(layer.last, linear)
        return layer


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
    pruning); inside a :class:`LowRankSparseConv2d` it is the sparse residual.
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
    def from_conv(cls, conv: nn.Conv2d, density: float, **_: object) -> "MaskedConv2d":
        """Magnitude pruning of a trained conv: the mask keeps the ``density`` largest ``|w|``.

        ``weight`` keeps the whole dense kernel (see the class docstring); the
        layer computes ``weight * mask``. Grouped convs are allowed.
        """
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=conv.bias is not None, padding_mode=conv.padding_mode, density=density)
        layer.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            layer.mask.copy_(_topk_mask(conv.weight.detach(), density))
            _copy_bias(layer, conv)
        return layer


def _topk_mask(values: Tensor, density: float) -> Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (ties broken by index)."""
    keep = int(round(density * values.numel()))
    mask = torch.zeros(values.numel(), dtype=values.dtype, device=values.device)
    if keep > 0:
        idx = torch.argsort(values.abs().flatten(), descending=True, stable=True)[:keep]
        mask[idx] = 1
    return mask.reshape(values.shape)


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
                    **_conv_geometry(conv))
        layer.lowrank = Tucker2Conv2d.from_conv(conv, ranks, bases=bases)
        core, u_out, u_in = layer.lowrank.core.weight, layer.lowrank.last.weight[:, :, 0, 0], layer.lowrank.first.weight[:, :, 0, 0].T
        residual = conv.weight.detach() - dec.tucker2_to_tensor(core.detach(), (u_out.detach(), u_in.detach()))
        with torch.no_grad():
            layer.sparse.mask.copy_(_topk_mask(residual, density))
            layer.sparse.weight.copy_(residual)  # the full residual; the mask selects (see the docstring)
        return layer


# The modules that carry a plan spec (``plan_of`` reports the outermost one: the
# Tucker-2 and masked parts of a LowRankSparseConv2d are not layers of their own).
FACTORISED_TYPES: tuple[type[nn.Module], ...] = (
    Tucker2Conv2d, TT5Conv2d, LowRankConv2d, LowRankLinear, LowRankSparseConv2d, MaskedConv2d,
)
