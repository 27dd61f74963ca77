"""Architecture edits a plan can ask for before factorisation (beyond swapping layers).

The STResNet MCU variants narrow the ResNet stem to ``width`` channels and,
to restore the 64 channels ``layer1`` expects, add a ``1x1`` projection (with
BN and ReLU) after the max-pool: the widest activation of the network (the stem
output at 1/2 resolution) shrinks, which lowers peak RAM on a microcontroller.
Surgery is recorded in the plan (``"surgery": {"stem": {"width": 32, "proj": true}}``),
so the architecture stays (base, plan).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

from torch import nn

__all__ = ["apply_surgery", "SurgeryError"]


class SurgeryError(ValueError):
    """The model cannot take the requested surgery (one-line message)."""


def _stem(model: nn.Module, width: int, proj: bool = False) -> None:
    """Narrow a ResNet stem (``conv1``, ``bn1``, ``maxpool``) to ``width`` channels."""
    for attr in ("conv1", "bn1", "maxpool"):
        if not hasattr(model, attr):
            raise SurgeryError(f"surgery 'stem': model has no {attr!r} (expected a ResNet-style stem)")
    conv: nn.Conv2d = model.conv1
    if not isinstance(conv, nn.Conv2d) or not isinstance(model.bn1, nn.BatchNorm2d):
        raise SurgeryError("surgery 'stem': conv1 must be an nn.Conv2d followed by bn1 (nn.BatchNorm2d)")
    if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
        raise SurgeryError(f"surgery 'stem': width {width!r} must be a positive integer")
    c_stem = conv.out_channels
    if not proj and width != c_stem:
        raise SurgeryError(f"surgery 'stem': width {width} != {c_stem} channels needs \"proj\": true")
    # new layers live where the model does (timm builds on any device/dtype, 'meta' included)
    dd = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    model.conv1 = nn.Conv2d(conv.in_channels, width, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, bias=conv.bias is not None, **dd)
    model.bn1 = nn.BatchNorm2d(width, **dd)
    if proj:
        model.maxpool = nn.Sequential(OrderedDict(
            pool=model.maxpool,
            proj=nn.Conv2d(width, c_stem, 1, bias=False, **dd),
            bn=nn.BatchNorm2d(c_stem, **dd),
            act=nn.ReLU(inplace=True),
        ))


_SURGERIES = {"stem": _stem}


def apply_surgery(model: nn.Module, surgery: Mapping[str, Any]) -> nn.Module:
    """Apply each named edit of ``surgery`` in place."""
    for name, args in surgery.items():
        if name not in _SURGERIES:
            raise SurgeryError(f"surgery {name!r}: unknown (expected one of {', '.join(_SURGERIES)})")
        if not isinstance(args, Mapping):
            raise SurgeryError(f"surgery {name!r}: arguments must be an object, got {args!r}")
        _SURGERIES[name](model, **args)
    return model
