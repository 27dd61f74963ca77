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
from typing import Any, Callable, Literal, Mapping

import torch
from torch import nn

from . import decompose as dec
from . import layers as L
from .surgery import SurgeryError, apply_surgery

__all__ = [
    "PLAN_FORMAT",
    "PlanError",
    "Plan",
    "validate",
    "compress",
    "plan_of",
    "build",
    "load_weights",
]

PLAN_FORMAT = "stresnet-plan/1"
SPEC_TYPES = ("full", "tucker2", "tt", "svd", "lrs", "sparse")
Init = Literal["decompose", "random"]


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


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_spec_syntax(name: str, spec: Any) -> None:
    """Model-independent checks: the spec's type and the form of its numbers."""
    if not isinstance(spec, Mapping):
        raise PlanError(f"layer {name!r}: spec must be an object, got {spec!r}")
    kind = spec.get("type")
    if kind not in SPEC_TYPES:
        raise PlanError(f"layer {name!r}: unknown type {kind!r} (expected one of {', '.join(SPEC_TYPES)})")
    if kind in ("tucker2", "lrs"):
        ranks = spec.get("ranks")
        if not (isinstance(ranks, list) and len(ranks) == 2):
            raise PlanError(f"layer {name!r}: {kind} needs ranks [r_out, r_in], got {ranks!r}")
    if kind == "tt":
        ranks = spec.get("ranks")
        if not (isinstance(ranks, list) and len(ranks) in (2, 4)):
            raise PlanError(f"layer {name!r}: tt needs ranks [r1, r2] or [r1, r2, r3, r4], got {ranks!r}")
        if len(ranks) == 4 and not _valid_factors(spec.get("factors")):
            raise PlanError(f"layer {name!r}: 5-core tt needs factors [[o1, o2], [i1, i2]], got {spec.get('factors')!r}")
    if kind == "svd":
        ranks = [spec.get("rank")]
    if kind not in ("full", "sparse"):
        for r in ranks:
            if not _is_int(r) or r <= 0:
                raise PlanError(f"layer {name!r}: rank {r!r} must be a positive integer")
    if kind in ("lrs", "sparse"):
        d = spec.get("density")
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 < d <= 1:
            raise PlanError(f"layer {name!r}: density {d!r} must be in (0, 1]")


def _valid_factors(f: Any) -> bool:
    return (isinstance(f, list) and len(f) == 2
            and all(isinstance(p, list) and len(p) == 2 and all(_is_int(x) and x > 0 for x in p) for p in f))


def _rank_limits(module: nn.Module, spec: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The (label, maximum) of each rank of ``spec`` on this module, in spec order."""
    kind = spec["type"]
    if isinstance(module, nn.Linear):
        return [("rank", min(module.out_features, module.in_features))]
    c_out, c_in, kh, kw = module.weight.shape
    if kind in ("tucker2", "lrs"):
        return [("r_out", c_out), ("r_in", c_in)]
    if kind == "svd":
        return [("rank", min(c_out, c_in * kh * kw))]
    factors = spec.get("factors")
    if factors is None:
        bounds = dec.tt_rank_bounds((c_out, kh * kw, c_in))
    else:
        (o1, o2), (i1, i2) = factors
        if o1 * o2 != c_out or i1 * i2 != c_in:
            raise PlanError(f"layer factors {factors} do not multiply to C_out={c_out}, C_in={c_in}")
        bounds = dec.tt_rank_bounds((o1, o2, kh * kw, i1, i2))
    return [(f"r{k + 1}", b) for k, b in enumerate(bounds)]


def _spec_ranks(spec: Mapping[str, Any]) -> list[int]:
    return [spec["rank"]] if spec["type"] == "svd" else list(spec.get("ranks", []))


def _check_spec_on_module(name: str, module: nn.Module | None, spec: Mapping[str, Any]) -> None:
    kind = spec["type"]
    if module is None:
        raise PlanError(f"layer {name!r}: no such module in the model")
    if kind == "full":
        return
    allowed = (nn.Conv2d, nn.Linear) if kind == "svd" else (nn.Conv2d,)
    if type(module) not in allowed:
        raise PlanError(f"layer {name!r}: is a {type(module).__name__}, {kind} needs "
                        + " or ".join(t.__name__ for t in allowed))
    if kind == "sparse":
        return  # any plain conv, grouped ones included; no ranks
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise PlanError(f"layer {name!r}: grouped conv (groups={module.groups}) cannot be factorised")
    try:
        limits = _rank_limits(module, spec)
    except PlanError as e:
        raise PlanError(f"layer {name!r}: {e}") from None
    for value, (label, limit) in zip(_spec_ranks(spec), limits):
        if value > limit:
            raise PlanError(f"layer {name!r}: rank {label}={value} exceeds the mode size {limit}")


def validate(model: nn.Module, plan: Plan) -> None:
    """Check every spec of ``plan`` against ``model`` before touching it."""
    modules = dict(model.named_modules())
    for name, spec in plan.layers.items():
        _check_spec_syntax(name, spec)
        _check_spec_on_module(name, modules.get(name), spec)


def _factorise(module: nn.Module, spec: Mapping[str, Any], init: Init, bases: dec.ModeBases | None) -> nn.Module:
    """Build the factorised replacement of ``module`` for ``spec``."""
    kind = spec["type"]
    if kind == "sparse":
        if init == "decompose":
            return L.MaskedConv2d.from_conv(module, spec["density"])
        layer = L.MaskedConv2d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                               padding=module.padding, dilation=module.dilation, groups=module.groups,
                               bias=module.bias is not None, padding_mode=module.padding_mode,
                               density=spec["density"])
        with torch.no_grad():
            layer.mask.copy_(L._topk_mask(layer.weight, spec["density"]))
        return layer
    if isinstance(module, nn.Linear):
        if init == "decompose":
            return L.LowRankLinear.from_linear(module, spec["rank"])
        return L.LowRankLinear(module.in_features, module.out_features, spec["rank"], bias=module.bias is not None)
    if init == "decompose":
        if kind == "tucker2":
            return L.Tucker2Conv2d.from_conv(module, spec["ranks"], bases=bases, n_iter=int(spec.get("n_iter", 0)))
        if kind == "tt" and "factors" in spec:
            return L.TT5Conv2d.from_conv(module, spec["ranks"], spec["factors"])
        if kind == "tt":
            return L.TTConv2d.from_conv(module, spec["ranks"])
        if kind == "svd":
            return L.LowRankConv2d.from_conv(module, spec["rank"])
        return L.LowRankSparseConv2d.from_conv(module, spec["ranks"], spec["density"], bases=bases)
    geometry = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                    dilation=module.dilation, bias=module.bias is not None, padding_mode=module.padding_mode)
    c_in, c_out = module.in_channels, module.out_channels
    if kind == "tucker2":
        return L.Tucker2Conv2d(c_in, c_out, spec["ranks"], **geometry)
    if kind == "tt" and "factors" in spec:
        return L.TT5Conv2d(c_in, c_out, spec["ranks"], spec["factors"], **geometry)
    if kind == "tt":
        return L.TTConv2d(c_in, c_out, spec["ranks"], **geometry)
    if kind == "svd":
        return L.LowRankConv2d(c_in, c_out, spec["rank"], **geometry)
    return L.LowRankSparseConv2d(c_in, c_out, spec["ranks"], spec["density"], **geometry)


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
        new = _factorise(module, spec, init, (bases or {}).get(name))
        new.to(device=module.weight.device, dtype=module.weight.dtype)
        new.train(module.training)
        _set_submodule(model, name, new)
    model.stresnet_surgery = copy.deepcopy(plan.surgery)  # read back by plan_of
    return model


def plan_of(model: nn.Module) -> Plan:
    """Read the plan back from a (compressed) model."""
    layers: dict[str, dict] = {}
    for name, module in model.named_modules():
        if isinstance(module, L.FACTORISED_TYPES) and hasattr(module, "spec"):
            if any(name.startswith(p + ".") for p in layers):
                continue  # the Tucker-2 or masked part inside a low-rank+sparse layer
            layers[name] = module.spec()
    return Plan(layers=layers, surgery=copy.deepcopy(getattr(model, "stresnet_surgery", {})))


def build(
    plan: Plan,
    create: Callable[..., nn.Module] | None = None,
    init: Init = "random",
    **kwargs: Any,
) -> nn.Module:
    """Rebuild a compressed architecture from (base, plan): ``create(arch, **base_kwargs)`` then :func:`compress`.

    ``create`` defaults to ``timm.create_model`` (ultralytics' model yaml when the
    base says ``"library": "ultralytics"``); ``kwargs`` override the plan's base
    arguments (e.g. ``num_classes``).
    """
    if plan.base is None or "arch" not in plan.base:
        raise PlanError("plan: has no base architecture ('base': {'arch': ...}); pass the base model to compress()")
    if create is None and plan.base.get("library") == "ultralytics":  # {"arch": "yolov5s.yaml", ...}
        from .detect.model import build_detector

        return build_detector(plan, nc=kwargs.get("nc") or kwargs.get("num_classes"))
    base = {k: v for k, v in plan.base.items() if k != "arch"}
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

