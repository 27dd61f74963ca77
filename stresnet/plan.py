"""Rank plans: a compressed network is a base architecture plus a JSON plan.

A plan maps module names to a factorisation spec::

    {"format": "stresnet-plan/1",
     "base": {"arch": "resnet18", "num_classes": 10},          # optional
     "surgery": {"stem": {"width": 32, "proj": true}},          # optional
     "layers": {"conv1": {"type": "tucker2", "ranks": [16, 3]},
                "layer4.0.conv2": {"type": "tt", "ranks": [64, 64]},
                "fc": {"type": "svd", "rank": 64}}}

Specs: ``full`` (leave it; the default for unlisted modules), ``tucker2`` with
``ranks = [r_out, r_in]`` (kernel mode order), ``tt`` with ``ranks = [r1, r2]``
(3-core layout) or ``[r1, r2, r3, r4]`` plus ``factors = [[o1, o2], [i1, i2]]``
(5-core layout), ``svd`` with ``rank`` (conv or linear), ``lrs`` with
``ranks`` and ``density`` (Tucker-2 plus a sparse residual), and ``sparse``
with ``density`` (a conv, grouped ones included, pruned by weight magnitude:
:class:`~stresnet.layers.MaskedConv2d`). Densities are in ``(0, 1]``: the
fraction of the kernel's entries kept (``round(density * numel)`` of them).
``init="decompose"`` keeps the largest-magnitude entries of the kernel
(``sparse``) or of its Tucker-2 residual (``lrs``); ``init="random"`` applies
the same magnitude rule to the random kernel of a ``sparse`` layer, so its cost
is right before a checkpoint is loaded (the mask is a buffer: loading replaces it).
These are the built-in types; each is a module of :mod:`stresnet.layers` and the
plan asks the registry (:mod:`stresnet.layers.registry`) for a spec's checks,
limits and builder, so a type registered from outside works here unchanged.

:func:`compress` applies a plan to any ``nn.Module`` (timm, torchvision,
ultralytics); :func:`plan_of` reads it back from a model; :func:`build`
rebuilds a compressed architecture from (base, plan) so a checkpoint can be
loaded into it. Every error is a :class:`PlanError` whose one-line message
names the module and the offending value.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from . import decompose as dec
from .layers import registry
from .layers.registry import Init, SpecError
from .surgery import SurgeryError, apply_surgery

__all__ = [
    "PLAN_FORMAT",
    "PlanError",
    "Plan",
    "validate",
    "compress",
    "plan_of",
    "build",
    "register_builder",
    "load_weights",
]

PLAN_FORMAT = "stresnet-plan/1"


class PlanError(ValueError):
    """A plan, or a checkpoint for it, does not fit the model. The message is one line."""


@dataclass
class Plan:
    """A base architecture reference, optional surgery, and per-module factorisation specs."""

    layers: dict[str, dict] = field(default_factory=dict)
    base: dict | None = None
    surgery: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"format": PLAN_FORMAT}
        if self.base is not None:
            out["base"] = self.base
        if self.surgery:
            out["surgery"] = self.surgery
        if self.meta:
            out["meta"] = self.meta
        out["layers"] = {k: self.layers[k] for k in self.layers}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "plan") -> "Plan":
        if not isinstance(data, Mapping):
            raise PlanError(f"{source}: expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format", PLAN_FORMAT)
        if fmt != PLAN_FORMAT:
            raise PlanError(f"{source}: unknown plan format {fmt!r} (expected {PLAN_FORMAT!r})")
        layers = data.get("layers", {})
        if not isinstance(layers, Mapping):
            raise PlanError(f"{source}: 'layers' must be an object mapping module names to specs")
        for name, spec in layers.items():
            _check_spec_syntax(name, spec)
        return cls(
            layers={k: dict(v) for k, v in layers.items()},
            base=dict(data["base"]) if data.get("base") is not None else None,
            surgery=dict(data.get("surgery", {})),
            meta=dict(data.get("meta", {})),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"{source}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise PlanError(f"plan file {path}: {e.strerror or e}") from None
        return cls.from_json(text, source=f"plan {path}")

    def save(self, path: str | Path) -> None:
        from .utils.io import atomic_write_text

        atomic_write_text(path, self.to_json())

    def factorised(self) -> dict[str, dict]:
        """The layers whose spec is not ``full``."""
        return {k: v for k, v in self.layers.items() if v.get("type") != "full"}


def _check_spec_syntax(name: str, spec: Any) -> None:
    """Model-independent checks: the spec's type and the form of its fields (by the type's own rules)."""
    if not isinstance(spec, Mapping):
        raise PlanError(f"layer {name!r}: spec must be an object, got {spec!r}")
    try:
        registry.for_spec(spec).check_spec(spec)
    except SpecError as e:
        raise PlanError(f"layer {name!r}: {e}") from None


def _check_spec_on_module(name: str, module: nn.Module | None, spec: Mapping[str, Any]) -> None:
    if module is None:
        raise PlanError(f"layer {name!r}: no such module in the model")
    try:
        registry.for_spec(spec).check_module(module, spec)
    except SpecError as e:
        raise PlanError(f"layer {name!r}: {e}") from None


def validate(model: nn.Module, plan: Plan) -> None:
    """Check every spec of ``plan`` against ``model`` before touching it."""
    modules = dict(model.named_modules())
    for name, spec in plan.layers.items():
        _check_spec_syntax(name, spec)
        _check_spec_on_module(name, modules.get(name), spec)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def compress(
    model: nn.Module,
    plan: Plan | Mapping[str, Any],
    init: Init = "decompose",
    bases: Mapping[str, dec.ModeBases] | None = None,
) -> nn.Module:
    """Apply ``plan`` to ``model`` in place and return it.

    ``init="decompose"`` initialises each factorised layer from the trained
    kernel it replaces; ``"random"`` only builds the architecture (fast; for
    loading a checkpoint or training from scratch). ``bases`` optionally
    supplies cached :func:`stresnet.decompose.mode_bases` per layer name.
    The whole plan is validated before anything changes.
    """
    plan = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    if plan.surgery:
        try:
            apply_surgery(model, plan.surgery)
        except SurgeryError as e:
            raise PlanError(str(e)) from None
    validate(model, plan)
    for name, spec in plan.factorised().items():
        module = model.get_submodule(name)
        new = registry.for_spec(spec).build(module, spec, init, (bases or {}).get(name))
        new.to(device=module.weight.device, dtype=module.weight.dtype)
        new.train(module.training)
        _set_submodule(model, name, new)
    model.stresnet_surgery = copy.deepcopy(plan.surgery)  # read back by plan_of
    return model


def plan_of(model: nn.Module) -> Plan:
    """Read the plan back from a (compressed) model."""
    layers: dict[str, dict] = {}
    for name, module in model.named_modules():
        if isinstance(module, registry.layer_types()) and hasattr(module, "spec"):
            if any(name.startswith(p + ".") for p in layers):
                continue  # the Tucker-2 or masked part inside a low-rank+sparse layer
            layers[name] = module.spec()
    return Plan(layers=layers, surgery=copy.deepcopy(getattr(model, "stresnet_surgery", {})))


BUILDERS_GROUP = "stresnet.builders"
"""Entry-point group of base builders for libraries other than timm: ``name = "module:function"``."""
_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_builder(library: str, builder: Callable[..., nn.Module]) -> None:
    """Let :func:`build` create plans whose base says ``"library": library``.

    ``builder(plan, **kwargs)`` returns the compressed architecture. Installed
    packages plug in through the ``stresnet.builders`` entry-point group instead
    (the ultralytics detector does), so the core never imports them.
    """
    _BUILDERS[library] = builder


def _builder(library: str) -> Callable[..., nn.Module]:
    if library not in _BUILDERS:
        from importlib.metadata import entry_points

        for ep in entry_points(group=BUILDERS_GROUP):
            if ep.name == library:
                _BUILDERS[library] = ep.load()
                break
        else:
            raise PlanError(f"plan: no builder for base library {library!r} "
                            f"(none registered in the {BUILDERS_GROUP!r} entry points)")
    return _BUILDERS[library]


def build(
    plan: Plan,
    create: Callable[..., nn.Module] | None = None,
    init: Init = "random",
    **kwargs: Any,
) -> nn.Module:
    """Rebuild a compressed architecture from (base, plan): ``create(arch, **base_kwargs)`` then :func:`compress`.

    ``create`` defaults to ``timm.create_model``; a base that names another
    ``"library"`` (e.g. ``"ultralytics"``) is built by that library's registered
    builder. ``kwargs`` override the plan's base arguments (e.g. ``num_classes``).
    """
    if plan.base is None or "arch" not in plan.base:
        raise PlanError("plan: has no base architecture ('base': {'arch': ...}); pass the base model to compress()")
    if create is None and plan.base.get("library") not in (None, "timm"):
        return _builder(plan.base["library"])(plan, **kwargs)
    base = {k: v for k, v in plan.base.items() if k not in ("arch", "library")}
    base.update(kwargs)
    if create is None:
        import timm

        create = timm.create_model
    model = create(plan.base["arch"], **base)
    return compress(model, plan, init=init)


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a safetensors checkpoint, naming the first tensor whose shape does not fit the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise PlanError(f"checkpoint {path}: no such file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PlanError(f"checkpoint {path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise PlanError(f"checkpoint {path}: {key!r} has shape {list(value.shape)} "
                            f"but the model (plan) needs {list(own[key].shape)}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise PlanError(f"checkpoint {path}: does not match the model: {what} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    model.load_state_dict(state, strict=strict)
    return model

