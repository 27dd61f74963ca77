"""Per-layer options of the rank search, each with its estimated loss and its cost row.

Every registered factorisation type that is ``searchable`` offers its candidates
for a layer (:meth:`~stresnet.layers.registry.Factorisation.candidates`), priced by
its own analytic formula (no module is built per option), in the units of
:mod:`stresnet.cost`: ``params``, ``flash`` (int8 bytes), ``macs`` at the
calibration resolution, and ``ram``, the layer's own int8 working set: the largest
input + output pair among its convs (a factorised layer's intermediate tensors are
smaller than its ends, so factorising never raises it; the whole model's peak RAM is
the max over layers). Options that store no fewer parameters than the full layer
are dropped: they can only lose accuracy.
"""
from __future__ import annotations

from ..layers import registry
from ..layers.registry import LayerGeometry
from .estimator import ErrorTable
from .ilp import Option

__all__ = ["LayerShape", "layer_options"]

LayerShape = LayerGeometry  # the geometry one conv sees at the calibration resolution


def layer_options(shape: LayerGeometry, table: ErrorTable, tied: bool = True, step: int = 8) -> list[Option]:
    """``full`` plus every searchable type's candidate that stores fewer parameters than the full conv."""
    full = shape.full_cost()
    options = [Option({"type": "full"}, 0.0, full)]
    for fact in registry.registered():
        if not fact.searchable:
            continue
        for spec, loss in fact.candidates(shape, table, table.in_grid, tied, step):
            cost = fact.cost(shape, spec)
            if cost["params"] < full["params"]:
                options.append(Option(spec, loss, cost))
    return options
