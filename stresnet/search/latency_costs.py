"""Latency as a search cost: the shape signature of a layer option, and the per-option lookup the ILP reads.

Latency cannot be computed from a formula the way params or MACs are: it is measured on the target
runtime (:mod:`stresnet.deploy.latency_table`) and cached by shape signature. The search sits below
deploy, so it never measures: the caller hands it a :class:`LatencyCosts` (measured or cached values).
What lives here is pure bookkeeping (no timing, no onnxruntime), shared by the search and the measurer:

* :class:`LayerSignature` -- what one layer's batch-1 latency depends on besides its spec;
  with a spec and a thread count it makes the cache key (:meth:`LayerSignature.key`);
* :class:`LatencyCosts` -- per layer, the latency of every spec the search may choose, plus the
  constant ``rest_ms`` (activations, pooling, adds, the head: all that no option changes), so that
  a plan's predicted latency is ``rest_ms + sum over layers of the chosen spec's latency`` -- linear,
  as the ILP needs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import nn

__all__ = ["LatencyError", "LayerSignature", "LatencyCosts", "spec_key", "FULL"]

FULL: dict = {"type": "full"}


class LatencyError(ValueError):
    """A latency table that is missing, incomplete or measured elsewhere (one-line message)."""


def spec_key(spec: Mapping[str, Any]) -> str:
    """A canonical text of a spec (key order does not matter)."""
    return json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)  # type: ignore[return-value]


@dataclass(frozen=True)
class LayerSignature:
    """The dense conv or linear a spec replaces, and the shape of its input (batch excluded).

    Two layers with equal signatures run the same ops on the same shapes, so one measurement
    serves both (ResNet-18 at 224 px has 20 searched convs but 13 signatures).
    """

    kind: str  # "conv" or "linear"
    c_in: int
    c_out: int
    input_shape: tuple[int, ...]  # without the batch: (C, H, W) for a conv, (..., C) for a linear
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] | str = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, module: nn.Module, input_shape: Sequence[int]) -> "LayerSignature":
        """The signature of an ``nn.Conv2d`` or ``nn.Linear`` on an input of (non-batch) shape ``input_shape``."""
        shape = tuple(int(s) for s in input_shape)
        if isinstance(module, nn.Linear):
            return cls("linear", module.in_features, module.out_features, shape, bias=module.bias is not None)
        if not isinstance(module, nn.Conv2d):
            raise LatencyError(f"a latency signature needs an nn.Conv2d or nn.Linear, got {type(module).__name__}")
        pad = module.padding if isinstance(module.padding, str) else _pair(module.padding)
        return cls("conv", module.in_channels, module.out_channels, shape, _pair(module.kernel_size),
                   _pair(module.stride), pad, _pair(module.dilation), module.groups, module.bias is not None,
                   module.padding_mode)

    def key(self, spec: Mapping[str, Any], threads: int) -> str:
        """The cache key of ``spec`` on this layer at ``threads`` intra-op threads (readable in the JSON)."""
        shape = "x".join(map(str, self.input_shape))
        if self.kind == "linear":
            where = f"linear {self.c_in}>{self.c_out} b{int(self.bias)}"
        else:
            pad = self.padding if isinstance(self.padding, str) else "x".join(map(str, self.padding))
            mode = "" if self.padding_mode == "zeros" else f" {self.padding_mode}"
            where = (f"conv {self.c_in}>{self.c_out} k{self.kernel[0]}x{self.kernel[1]} "
                     f"s{self.stride[0]}x{self.stride[1]} p{pad} d{self.dilation[0]}x{self.dilation[1]} "
                     f"g{self.groups} b{int(self.bias)}{mode}")
        return f"{where} @{shape} t{int(threads)} {spec_key(spec)}"


@dataclass
class LatencyCosts:
    """Measured batch-1 latency (ms) of the options of each searched layer, and the rest of the network.

    ``layers[name][spec_key(spec)]`` is the latency of ``spec`` on layer ``name`` run alone;
    ``rest_ms`` is what the network costs beyond its searched layers (it may be negative: it also
    takes back the per-run overhead that every layer measured alone pays once).
    """

    rest_ms: float
    layers: dict[str, dict[str, float]] = field(default_factory=dict)
    threads: int | None = None
    source: str | None = None  # where the values come from (the cache file), for reports

    def of(self, name: str, spec: Mapping[str, Any]) -> float:
        """The latency of ``spec`` on layer ``name`` (LatencyError when it was not measured)."""
        try:
            return self.layers[name][spec_key(spec)]
        except KeyError:
            raise LatencyError(f"layer {name!r}: no latency for {spec_key(spec)} in the latency table") from None

    def total(self, specs: Mapping[str, Mapping[str, Any]]) -> float:
        """Predicted latency of a plan (``specs``: layer -> spec; layers not listed stay full)."""
        return self.rest_ms + math.fsum(self.of(n, specs.get(n, FULL)) for n in sorted(self.layers))

    def covers(self, specs: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether every spec of the plan on a searched layer was measured."""
        return all(spec_key(specs.get(n, FULL)) in row for n, row in self.layers.items())
