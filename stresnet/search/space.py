"""The start of the rank-search space: which convs can be factorised, and uniform Tucker-2 plans.

A uniform plan (one rank ratio for every layer) is the simplest point of the
space and the baseline every searched plan must beat at equal size, so it is
sized *analytically*: :func:`uniform_plan_for_params` bisects the ratio against
a closed-form parameter count and never builds a model inside the loop.

Which convs are in the space (:func:`decomposable_layers`): every module whose
type is exactly ``nn.Conv2d`` with ``groups == 1`` that is not part of an
already factorised layer. A narrow channel side is *kept* (the RGB input of a
stem conv): its Tucker-2 rank is simply clamped to the mode size, which is how
the STResNet stem is factorised (``r_in = 3``). Only convs with fewer than
``min_channels`` channels on *both* sides are skipped -- there is nothing to
compress there. Whether a layer is worth factorising at a given rank is decided
by parameter count, not by shape: a Tucker-2 that does not save parameters is
left ``full``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .. import layers as L
from ..plan import Plan
from . import baselines as bl

__all__ = [
    "ConvShape",
    "decomposable_layers",
    "conv_shapes",
    "tucker2_params",
    "uniform_specs",
    "plan_params",
    "uniform_plan",
    "uniform_plan_for_params",
]

MIN_CHANNELS = 4


@dataclass(frozen=True)
class ConvShape:
    """What the parameter count of a conv and of its Tucker-2 needs."""

    c_out: int
    c_in: int
    kh: int
    kw: int
    bias: bool

    @property
    def params(self) -> int:
        return self.c_out * self.c_in * self.kh * self.kw + (self.c_out if self.bias else 0)

    @property
    def is_1x1(self) -> bool:
        return self.kh == 1 and self.kw == 1


def _factorised_prefixes(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, L.FACTORISED_TYPES)]


def decomposable_layers(model: nn.Module, min_channels: int = MIN_CHANNELS) -> dict[str, nn.Conv2d]:
    """Plain convs a Tucker-2 can replace, in ``named_modules()`` order.

    Excludes subclasses (e.g. ``MaskedConv2d``), grouped/depthwise convs, convs
    inside an already factorised layer, and convs with fewer than
    ``min_channels`` channels on both sides. A narrow side alone (RGB) is fine.
    """
    done = _factorised_prefixes(model)
    out: dict[str, nn.Conv2d] = {}
    for name, m in model.named_modules():
        if type(m) is not nn.Conv2d or m.groups != 1:
            continue
        if any(name == p or name.startswith(p + ".") for p in done):
            continue
        if max(m.in_channels, m.out_channels) < min_channels:
            continue
        out[name] = m
    return out


def conv_shapes(model: nn.Module, include_1x1: bool = True) -> dict[str, ConvShape]:
    """The shapes of the decomposable convs (optionally without the 1x1 ones)."""
    shapes = {}
    for name, conv in decomposable_layers(model).items():
        c_out, c_in, kh, kw = conv.weight.shape
        s = ConvShape(int(c_out), int(c_in), int(kh), int(kw), conv.bias is not None)
        if include_1x1 or not s.is_1x1:
            shapes[name] = s
    return shapes


def tucker2_params(shape: ConvShape, ranks: tuple[int, int] | list[int]) -> int:
    """Params of the Tucker-2 layer: ``C_in r_in + r_in r_out k k + r_out C_out (+ bias)``."""
    r_out, r_in = ranks
    return (shape.c_in * r_in + r_in * r_out * shape.kh * shape.kw + r_out * shape.c_out
            + (shape.c_out if shape.bias else 0))


def _uniform_spec(shape: ConvShape, ratio: float, multiple: int) -> dict:
    ranks = [bl.uniform_rank(shape.c_out, ratio, multiple), bl.uniform_rank(shape.c_in, ratio, multiple)]
    if tucker2_params(shape, ranks) >= shape.params:
        return {"type": "full"}  # a Tucker-2 that saves nothing is pointless
    return {"type": "tucker2", "ranks": ranks}


def uniform_specs(shapes: dict[str, ConvShape], ratio: float, multiple: int = 8) -> dict[str, dict]:
    """One spec per layer at rank ``uniform_rank(C, ratio, multiple)`` on both channel modes."""
    return {name: _uniform_spec(s, ratio, multiple) for name, s in shapes.items()}


def plan_params(total_params: int, shapes: dict[str, ConvShape], layers: dict[str, dict]) -> int:
    """Total params after replacing the Tucker-2 layers of ``layers`` (the others stay as they are)."""
    total = total_params
    for name, spec in layers.items():
        if spec.get("type") == "tucker2":
            total += tucker2_params(shapes[name], spec["ranks"]) - shapes[name].params
    return total


def _base_ref(model: nn.Module) -> dict | None:
    """``{"arch", "num_classes"}`` for a timm model, so :func:`stresnet.build` can rebuild the plan."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        return None
    ref = {"arch": arch}
    if isinstance(getattr(model, "num_classes", None), int):
        ref["num_classes"] = model.num_classes
    return ref


def _count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _make_plan(model: nn.Module, layers: dict[str, dict], meta: dict) -> Plan:
    return Plan(layers=layers, base=_base_ref(model), meta=meta)


def uniform_plan(model: nn.Module, rank_ratio: float, multiple: int = 8, include_1x1: bool = True) -> Plan:
    """Tucker-2 on every decomposable conv at ``rank_ratio`` of each channel mode (``full`` where it would not save)."""
    shapes = conv_shapes(model, include_1x1)
    layers = uniform_specs(shapes, rank_ratio, multiple)
    params = plan_params(_count_params(model), shapes, layers)
    meta = {"method": "uniform", "rank_ratio": rank_ratio, "multiple": multiple, "params": params}
    return _make_plan(model, layers, meta)


def uniform_plan_for_params(model: nn.Module, max_params: int, multiple: int = 8, include_1x1: bool = True) -> Plan:
    """The uniform plan with the largest rank ratio whose compressed model has ``<= max_params`` params.

    Raises ``ValueError`` when even the smallest ranks do not fit.
    """
    shapes = conv_shapes(model, include_1x1)
    total = _count_params(model)

    def size(ratio: float) -> int:
        return plan_params(total, shapes, uniform_specs(shapes, ratio, multiple))

    ratio = bl.scale_to_budget(lambda r: r, size, max_params, lo=0.0, hi=1.0)
    layers = uniform_specs(shapes, ratio, multiple)
    meta = {"method": "uniform", "rank_ratio": ratio, "multiple": multiple,
            "params": plan_params(total, shapes, layers), "max_params": int(max_params)}
    return _make_plan(model, layers, meta)
