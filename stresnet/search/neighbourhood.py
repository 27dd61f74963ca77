"""A search restricted to a neighbourhood of a known plan (a trust region around an anchor).

Why: the estimator tables price each layer's error *before* any fine-tune. Near a plan that is known to
fine-tune well (uniform ranks, say) that price tells which layers to shrink a little and which to grow;
far from it, the ILP trades capacity the fine-tune would have used for zero-shot error it would have
recovered. ``radius`` bounds every rank's move from the anchor to ``radius`` grid steps, so that the
search keeps the anchor's shape and only spends what the tables say is worth moving: the anchor itself
stays a feasible answer, so the searched plan's estimated loss is never above the anchor's.

The rule, per layer the space searches:

* the anchor factorises it: options of the anchor's type whose every rank is within ``radius * step``
  of the anchor's (``radius: 0`` is the anchor itself);
* the anchor keeps it full: it stays full.

Any type whose spec has ranks (:meth:`~stresnet.layers.registry.Factorisation.ranks`) works this way.
"""
from __future__ import annotations

from typing import Mapping

from ..layers import registry
from ..plan import Plan, PlanError
from .ilp import Option

__all__ = ["AnchorError", "near_anchor"]


class AnchorError(PlanError):
    """The anchor plan does not fit the search space. The message is one line, naming the layer."""


def _within(spec: Mapping, anchor: Mapping, reach: int) -> bool:
    """Whether ``spec`` is ``anchor``'s type with every rank at most ``reach`` away from the anchor's."""
    if spec["type"] != anchor["type"]:
        return False
    fact = registry.for_spec(anchor)
    ranks, anchor_ranks = fact.ranks(spec), fact.ranks(anchor)
    if not anchor_ranks:  # a type without ranks (e.g. sparse at a density): only the anchor's own spec
        return dict(spec) == dict(anchor)
    return len(ranks) == len(anchor_ranks) and all(abs(a - b) <= reach for a, b in zip(ranks, anchor_ranks))


def near_anchor(options: Mapping[str, list[Option]], anchor: Plan, radius: int, step: int
                ) -> dict[str, list[Option]]:
    """Each layer's options within ``radius`` grid steps (of ``step`` channels) of ``anchor``'s spec for it.

    Raises :class:`AnchorError` when the anchor factorises a layer the space does not search, changes the
    architecture (surgery), or asks a spec whose neighbourhood holds no option of the space (a rank off the
    grid with ``radius: 0``, a type the space does not offer the layer)."""
    if radius < 0:
        raise AnchorError(f"radius {radius} must be 0 or more grid steps")
    if anchor.surgery:
        raise AnchorError("the anchor plan changes the architecture (surgery); the search keeps it as it is")
    unknown = sorted(set(anchor.layers) - set(options))
    if unknown:
        raise AnchorError(f"the anchor plan factorises {unknown[0]!r}, which the search space does not search"
                          + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    reach = radius * step
    kept: dict[str, list[Option]] = {}
    for name, opts in options.items():
        spec = anchor.layers.get(name)
        if spec is None or spec["type"] == "full":
            kept[name] = [o for o in opts if o.spec["type"] == "full"]
        else:
            kept[name] = [o for o in opts if _within(o.spec, spec, reach)]
        if not kept[name]:
            raise AnchorError(f"layer {name!r}: no option of the search space lies within {radius} grid steps "
                              f"of the anchor's {dict(spec) if spec else {'type': 'full'}}")
    return kept
