"""Per-layer options of the rank search, each with its estimated loss and its cost row.

Every registered factorisation type that is ``searchable`` offers its candidates
for a layer (:meth:`~stresnet.layers.registry.Factorisation.candidates`), priced by
its own analytic formula (no module is built per option), in the units of
:mod:`stresnet.cost`: ``params``, ``flash`` (int8 bytes), ``macs`` at the
calibration resolution, and ``ram``, the layer's own int8 working set: the largest
input + output pair among its convs (a factorised layer's intermediate tensors are
smaller than its ends, so factorising never raises it; the whole model's peak RAM is
the max over layers). Options that store no fewer parameters than the full layer
are dropped: they can only lose accuracy. ``keep_full=False`` drops ``full`` itself wherever a
smaller option exists, so that every layer is factorised, as uniform ranks factorise it.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..layers import registry
from ..layers.registry import LayerGeometry
from .estimator import ErrorTable, LayerStats
from .ilp import Option

__all__ = ["LayerShape", "layer_options", "admits"]

LayerShape = LayerGeometry  # the geometry one conv sees at the calibration resolution


def admits(fact: registry.Factorisation, module: nn.Module) -> bool:
    """Whether ``fact`` is a searchable type that can replace ``module`` (its exact type; a grouped conv only
    if the type takes grouped ones)."""
    if not fact.searchable or type(module) not in fact.replaces:
        return False
    return fact.grouped or getattr(module, "groups", 1) == 1


def layer_options(shape: LayerGeometry, stats: LayerStats | ErrorTable, tied: bool = True, step: int = 8,
                  module: nn.Module | None = None, types: Sequence[str] | None = None,
                  keep_full: bool = True) -> list[Option]:
    """``full`` plus every searchable type's candidate that stores fewer parameters than the full layer
    (``keep_full=False``: the candidates alone, or ``full`` alone where the layer has none).

    ``stats``: the layer's calibration statistics (an :class:`ErrorTable` alone for a plain conv);
    ``module``: the layer, so that only the types that can replace it are asked (default: a plain conv);
    ``types``: the type names the search space offers this layer (default: every searchable type).
    """
    stats = stats if isinstance(stats, LayerStats) else LayerStats(table=stats)
    module = module if module is not None else nn.Conv2d(1, 1, 1)
    table = stats.table
    in_grid = table.in_grid if table is not None else ()
    full = shape.full_cost()
    options = [Option({"type": "full"}, 0.0, full)]
    for fact in registry.registered():
        if not admits(fact, module) or (types is not None and fact.name not in types):
            continue
        for spec, loss in fact.candidates(shape, table, in_grid, tied, step, stats):
            cost = fact.cost(shape, spec)
            if cost["params"] < full["params"]:
                options.append(Option(spec, loss, cost))
    return options if keep_full or len(options) == 1 else options[1:]
