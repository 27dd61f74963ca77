"""The registry of factorisation types.

A factorisation type is one idea: a plan spec (``{"type": "tucker2", "ranks": ...}``),
the module it becomes, which modules it can replace and up to which ranks, and what
it costs. Plan validation, :func:`~stresnet.plan.compress` / ``plan_of``, the search's
cost rows, the baselines' sizing and the detector's BatchNorm folding all look the
type up here instead of each keeping an if-ladder, so a new type is one new module
that subclasses :class:`Factorisation` and calls :func:`register` (from anywhere:
the registry is open, a test or a plug-in can add a type without editing stresnet).

Costs are analytic, per sample (batch 1), in the units of :mod:`stresnet.cost`:
``params`` (stored numbers), ``flash`` (int8 bytes), ``macs`` and ``ram`` (the
layer's own int8 working set: the largest input + output pair among its convs).
``tests/test_registry.py`` checks every registered type's formula against the
profile of the module it builds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from torch import nn

from .. import decompose as dec

__all__ = [
    "BYTES_PER_CHANNEL",
    "ROW_PTR_BYTES",
    "Init",
    "SpecError",
    "LayerGeometry",
    "Factorisation",
    "register",
    "unregister",
    "get",
    "for_spec",
    "registered",
    "spec_types",
    "layer_types",
]

BYTES_PER_CHANNEL = 8  # int8 deployment: an int32 bias + an int32 per-channel requant scale per output channel
ROW_PTR_BYTES = 4  # CSR row pointers of a sparse kernel
Init = Literal["decompose", "random"]
Cost = dict[str, float]


class SpecError(ValueError):
    """A spec that does not fit its type or its module; the one-line message omits the layer name
    (:mod:`stresnet.plan` adds it)."""


@dataclass(frozen=True)
class LayerGeometry:
    """What a cost formula needs to know of the conv (or linear) a spec replaces.

    A linear layer is a 1x1 conv over ``hw_in = hw_out`` positions (tokens; 1 for a
    classifier head), so one set of formulas serves both.
    """

    c_in: int
    c_out: int
    kk: int  # kh * kw
    hw_in: int  # H_in * W_in
    hw_out: int  # H_out * W_out
    bias: bool
    groups: int = 1
    kernel_size: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, module: nn.Module, in_hw: Sequence[int] = (1, 1)) -> "LayerGeometry":
        """The geometry of ``module`` (an ``nn.Conv2d`` or ``nn.Linear``) on an input of spatial size ``in_hw``."""
        if isinstance(module, nn.Linear):
            hw = math.prod(in_hw)
            return cls(module.in_features, module.out_features, 1, hw, hw, module.bias is not None)
        h, w = in_hw
        out = []
        pads = module.padding if not isinstance(module.padding, str) else (
            tuple((d * (k - 1)) // 2 for k, d in zip(module.kernel_size, module.dilation))
            if module.padding == "same" else (0, 0))
        for size, k, s, p, d in zip((h, w), module.kernel_size, module.stride, pads, module.dilation):
            out.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        kh, kw = module.kernel_size
        return cls(module.in_channels, module.out_channels, kh * kw, h * w, out[0] * out[1],
                   module.bias is not None, module.groups, (kh, kw))

    @property
    def weights(self) -> int:
        """Entries of the dense kernel."""
        return self.c_out * (self.c_in // self.groups) * self.kk

    def cost(self, spec: Mapping[str, Any]) -> Cost:
        """The cost row of ``spec`` on this layer (by the registered type's formula)."""
        return for_spec(spec).cost(self, spec)

    def full_cost(self) -> Cost:
        return self.cost({"type": "full"})


class Factorisation:
    """One factorisation type. Subclass it in one module and :func:`register` an instance.

    Class attributes state what the type is; methods state its spec, limits,
    builder and cost. Defaults describe a type with no ranks that replaces an
    ungrouped ``nn.Conv2d``.
    """

    name: str = ""  # registry key, e.g. "tt5"
    spec_type: str = ""  # the plan's "type", e.g. "tt" (several registered types may share one; see ``claims``)
    replaces: tuple[type[nn.Module], ...] = (nn.Conv2d,)  # exact module types it can replace
    grouped: bool = False  # may replace grouped (e.g. depthwise) convs
    builds: tuple[type[nn.Module], ...] = ()  # the module types it builds (``plan_of`` reads their ``spec()``)
    folds_bn: bool = False  # its last op is a plain conv that a following BatchNorm folds into
    searchable: bool = False  # the rank search offers it (needs ``candidates``)
    input_conv: str | None = None  # the built module's one conv that sees its input ("" = itself; None = several)
    output_layer: str | None = None  # the built module's one layer that makes its output (timm's classifier name)

    def claims(self, spec: Mapping[str, Any]) -> bool:
        """Whether this type handles ``spec`` (types sharing a ``spec_type`` tell their specs apart here)."""
        return True

    # ------------------------------------------------------------------ spec
    def check_spec(self, spec: Mapping[str, Any]) -> None:
        """Model-independent checks of the spec's fields (raise :class:`SpecError`)."""

    def ranks(self, spec: Mapping[str, Any]) -> list[int]:
        """The spec's ranks, in the order of :meth:`rank_limits`."""
        return []

    def rank_limits(self, module: nn.Module, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
        """``(label, maximum)`` of each rank on ``module``."""
        return []

    def check_module(self, module: nn.Module, spec: Mapping[str, Any]) -> None:
        """Whether ``module`` can take ``spec``: its type, its groups and every rank within its limit."""
        if type(module) not in self.replaces:
            raise SpecError(f"is a {type(module).__name__}, {self.spec_type} needs "
                            + " or ".join(t.__name__ for t in self.replaces))
        if isinstance(module, nn.Conv2d) and module.groups != 1 and not self.grouped:
            raise SpecError(f"grouped conv (groups={module.groups}) cannot be factorised")
        for value, (label, limit) in zip(self.ranks(spec), self.rank_limits(module, spec)):
            if value > limit:
                raise SpecError(f"rank {label}={value} exceeds the mode size {limit}")

    # ------------------------------------------------------------------ module
    def build(self, module: nn.Module, spec: Mapping[str, Any], init: Init = "decompose",
              bases: dec.ModeBases | None = None) -> nn.Module:
        """The replacement of ``module``: initialised by decomposing it (``"decompose"``) or empty (``"random"``)."""
        raise NotImplementedError(f"factorisation {self.name!r} has no builder")

    # ------------------------------------------------------------------ cost
    def cost(self, g: LayerGeometry, spec: Mapping[str, Any]) -> Cost:
        """``{"params", "flash", "macs", "ram"}`` of the built layer on geometry ``g``."""
        raise NotImplementedError(f"factorisation {self.name!r} has no cost formula")

    def params(self, module: nn.Module, spec: Mapping[str, Any]) -> int:
        """Stored params of ``module`` once ``spec`` is applied (no module is built)."""
        return int(self.cost(LayerGeometry.of(module), spec)["params"])

    # ------------------------------------------------------------------ baselines and search
    def from_mode_ranks(self, g: LayerGeometry, r_out: int, r_in: int) -> dict | None:
        """The spec a per-mode baseline (uniform, energy, VBMF) builds from its two channel-mode ranks,
        or None when this type is not sized that way."""
        return None

    def candidates(self, g: LayerGeometry, loss: Callable[[int, int], float] | None, in_grid: Sequence[int],
                   tied: bool, step: int, stats: Any = None) -> list[tuple[dict, float]]:
        """``(spec, estimated loss)`` pairs the search may choose for this layer. ``loss(r_out, r_in)``
        is the calibration estimator's Tucker-2 table, defined for ``r_in`` on ``in_grid`` (None, with an
        empty grid, where the layer has no channel modes to cut: a grouped conv). ``stats`` is the
        layer's :class:`~stresnet.search.estimator.LayerStats` (e.g. its magnitude-pruning loss).
        The search only asks types whose ``replaces`` and ``grouped`` admit the layer."""
        return []


# ---------------------------------------------------------------------- the registry

_REGISTRY: dict[str, Factorisation] = {}


def register(fact: Factorisation) -> Factorisation:
    """Add a factorisation type (its ``name`` must be new); returns it, so a module can keep the instance."""
    if not fact.name or not fact.spec_type:
        raise ValueError(f"{type(fact).__name__}: a factorisation needs a name and a spec_type")
    if fact.name in _REGISTRY:
        raise ValueError(f"factorisation {fact.name!r} is already registered")
    _REGISTRY[fact.name] = fact
    return fact


def unregister(name: str) -> None:
    """Remove a type (tests and plug-ins that registered one)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Factorisation:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown factorisation {name!r} (registered: {', '.join(_REGISTRY)})") from None


def registered() -> Iterator[Factorisation]:
    return iter(list(_REGISTRY.values()))


def spec_types() -> tuple[str, ...]:
    """Every plan ``type`` some registered factorisation handles, in registration order."""
    return tuple(dict.fromkeys(f.spec_type for f in _REGISTRY.values()))


def for_spec(spec: Mapping[str, Any]) -> Factorisation:
    """The registered type that handles ``spec`` (raises :class:`SpecError` for an unknown ``type``)."""
    kind = spec.get("type") if isinstance(spec, Mapping) else None
    matches = [f for f in _REGISTRY.values() if f.spec_type == kind]
    if not matches:
        raise SpecError(f"unknown type {kind!r} (expected one of {', '.join(spec_types())})")
    # the most specific claimant wins: later registrations refine earlier ones of the same spec type
    for f in reversed(matches):
        if f.claims(spec):
            return f
    return matches[0]


def layer_types() -> tuple[type[nn.Module], ...]:
    """The module types factorisations build (what ``plan_of`` reads back)."""
    return tuple(dict.fromkeys(t for f in _REGISTRY.values() for t in f.builds))


# ---------------------------------------------------------------------- shared spec checks

def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_positive_ranks(ranks: Sequence[Any]) -> None:
    for r in ranks:
        if not is_int(r) or r <= 0:
            raise SpecError(f"rank {r!r} must be a positive integer")


def check_rank_list(spec: Mapping[str, Any], lengths: Sequence[int], form: str) -> list[int]:
    """``spec["ranks"]``, checked to be a list of one of ``lengths`` positive integers."""
    ranks = spec.get("ranks")
    if not (isinstance(ranks, list) and len(ranks) in lengths):
        raise SpecError(f"{spec['type']} needs ranks {form}, got {ranks!r}")
    check_positive_ranks(ranks)
    return ranks


def check_density(spec: Mapping[str, Any]) -> float:
    d = spec.get("density")
    if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 < d <= 1:
        raise SpecError(f"density {d!r} must be in (0, 1]")
    return float(d)
