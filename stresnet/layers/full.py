"""``full``: the module as it is (the default for every module a plan does not list)."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .registry import BYTES_PER_CHANNEL, Cost, Factorisation, LayerGeometry, register


def dense_cost(g: LayerGeometry) -> Cost:
    """A plain (possibly grouped) conv or linear: 1 int8 byte a weight + bias and requant scale per channel."""
    return {
        "params": g.weights + g.c_out * g.bias,
        "flash": g.weights + BYTES_PER_CHANNEL * g.c_out,
        "macs": g.hw_out * g.weights,
        "ram": g.c_in * g.hw_in + g.c_out * g.hw_out,
    }


class Full(Factorisation):
    name = spec_type = "full"
    replaces = ()
    grouped = True
    folds_bn = True
    input_conv = ""
    output_layer = ""

    def check_module(self, module: nn.Module, spec: Mapping[str, Any]) -> None:
        """Any module may stay as it is."""

    def build(self, module: nn.Module, spec: Mapping[str, Any], init: str = "decompose", bases: Any = None) -> nn.Module:
        return module

    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        return dense_cost(g)


FULL = register(Full())
