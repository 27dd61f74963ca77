"""Deployment cost of a model: parameters, MACs, int8 flash and int8 peak activation RAM.

``profile(model, input_size)`` measures a whole model (batch 1, eval mode, under
``torch.no_grad()``; the model's training flags are restored and nothing in it
changes). ``module_cost(module, input_shape)`` is the fast analytic version for
one layer, used by the rank search for every candidate.

This module is the project's definition of the four numbers:

``params`` -- stored parameters
    ``sum(p.numel())`` over the model's parameters (shared ones once). BatchNorm
    weights and biases count (they are parameters: timm's own counting);
    buffers (running statistics, masks) do not. Exception: a ``MaskedConv2d``
    (the sparse part of a low-rank + sparse layer) counts as CSR storage over
    output channels: ``nnz`` kept values + ``nnz`` column indices + ``C_out + 1``
    row pointers, plus its bias if it has one.

``macs`` -- multiply-accumulates of one forward pass at batch 1
    Convolutions and matrix products only (no bias adds, norms, activations or
    pooling; the convention behind "ResNet-18 = 1.81 GMACs"). The whole-model
    figure is ``torch.utils.flop_counter.FlopCounterMode`` flops / 2, corrected
    for every ``MaskedConv2d``: a sparse kernel skips zeros, so its MACs are
    ``(output positions) x nnz`` = dense MACs x density. Per layer (and in
    ``module_cost``): conv ``out.numel() * C_in/groups * prod(kernel)``,
    transposed conv ``in.numel() * C_out/groups * prod(kernel)``, linear
    ``out.numel() * in_features`` (``numel`` of the real tensor, so the 1x1
    convs of a ``TT5Conv2d``, which run on batch ``i1`` or ``o2`` reshapes,
    are counted in full).

``flash_bytes`` -- int8 weight storage
    BatchNorm is folded into the preceding conv and costs nothing separately.
    Every conv / linear stores 1 byte per weight element plus 8 bytes per output
    channel: an int32 bias (always -- folding BN creates one) and an int32
    per-channel requant scale. A ``MaskedConv2d`` stores ``nnz`` 1-byte values
    + an index per value (its position within the output channel's
    ``C_in/groups * kh * kw`` slice: 2 bytes (uint16) when that slice has at most
    65536 entries, else 4) + 4-byte row pointers ``4 * (C_out + 1)``; it adds the
    8 bytes per output channel only when it stands alone -- inside a
    ``LowRankSparseConv2d`` its output is added to the low-rank part's, which
    already carries the bias and scale. A ``TT5Conv2d`` stores its five convs by
    the rule above plus 8 bytes per ``C_out`` for its own output bias and scale
    (its last conv has only ``o1`` channels; its ``bias`` parameter is this
    term, not counted again). Any other parameter (not in a conv / linear /
    BatchNorm / TT5Conv2d: LayerNorm, layer scales, tokens ...) is kept at
    4 bytes per element.

``peak_ram_bytes`` -- peak activation memory of a forward pass at int8
    1 byte per activation element, batch 1; weights are in flash and not
    counted. The model is traced with ``torch.fx`` (a tracer that keeps
    ``MaskedConv2d`` and ``TT5Conv2d`` -- and timm's no-trace modules -- as
    leaves; every other factorised layer is traced through, so its intermediate
    tensors are seen), shapes come from ``ShapeProp``, and the graph's
    execution order is the schedule. A buffer is live from the node that
    creates it until its last user has run; the RAM while a node runs is the
    sum of every live buffer (its inputs, its output, and every tensor still
    waiting for a later user: a residual block's input stays live until the
    add consumes it); the peak is the max over nodes. Nodes that create no new
    buffer:

    * views, which always share their input's buffer (extending its life):
      flatten / reshape / view / transpose / permute / contiguous / squeeze /
      unsqueeze / chunk / split / indexing (``getitem``) / identity / dropout;
    * in-place nodes, which reuse their input's buffer when that buffer has no
      later user (otherwise they allocate a new one): BatchNorm (folded into
      the conv) and activations (ReLU, SiLU, GELU, sigmoid, ...);
    * an ``add`` reuses the buffer of one of its inputs that has no later user
      and is as large as the output (otherwise it allocates a new one).

    Weights and anything computed only from them (``get_attr`` nodes) take no
    RAM. A leaf ``TT5Conv2d`` whose inner convs' largest input + output exceeds
    its own input + output adds the excess while it runs. Where does the peak
    fall? ``Profile.peak_ram_at`` names the node.

    If fx tracing (or shape propagation) fails, the fallback (``ram_method =
    "leaf-max"``) is the max over calls of leaf modules -- excluding the view /
    in-place kinds above -- of input + output bytes (it ignores residual
    buffers). Otherwise ``ram_method = "fx-liveness"``.

Worked example, timm ``resnet18`` at 224: the stem conv holds its 3x224x224
input (150,528 B) and 64x112x112 output (802,816 B) = 953,344 B; BN and ReLU
work in place; the max-pool then holds the 802,816 B input and its 64x56x56
output (200,704 B) = 1,003,520 B, the peak (later stages are smaller).
"""
from __future__ import annotations

import copy
import math
import operator
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .layers import LowRankSparseConv2d, MaskedConv2d, TT5Conv2d, registry
from .layers.registry import BYTES_PER_CHANNEL, ROW_PTR_BYTES
from .plan import Plan, PlanError, validate
from .surgery import SurgeryError, apply_surgery
from .utils.modes import eval_mode

__all__ = ["LayerCost", "Profile", "profile", "module_cost", "live_beside", "plan_params", "format_table", "BYTES_PER_CHANNEL"]

OTHER_PARAM_BYTES = 4

_LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LayerCost:
    """One leaf conv / linear: stored params, MACs (all its calls), int8 flash and int8 output bytes."""

    name: str
    kind: str
    params: int
    macs: int
    flash_bytes: int
    out_bytes: int


@dataclass(frozen=True)
class Profile:
    """Whole-model cost at batch 1 (see the module docstring for the rules)."""

    params: int
    macs: int
    flash_bytes: int
    peak_ram_bytes: int
    input_size: tuple
    layers: tuple[LayerCost, ...] = ()
    ram_method: str = "fx-liveness"
    peak_ram_at: str = ""

    def budget_costs(self) -> dict[str, int]:
        """The four totals a budget limits, under the budget's names (``stresnet.search.budgets``): params, int8
        flash, MACs and peak RAM."""
        return {"params": self.params, "flash": self.flash_bytes, "macs": self.macs, "ram": self.peak_ram_bytes}

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "macs": self.macs,
            "flash_bytes": self.flash_bytes,
            "peak_ram_bytes": self.peak_ram_bytes,
            "input_size": list(self.input_size),
            "ram_method": self.ram_method,
            "peak_ram_at": self.peak_ram_at,
            "params_m": self.params / 1e6,
            "gmacs": self.macs / 1e9,
            "flash_kib": self.flash_bytes / 1024,
            "peak_ram_kib": self.peak_ram_bytes / 1024,
            "layers": [asdict(layer) for layer in self.layers],
        }


def format_table(profiles: Mapping[str, Profile]) -> str:
    """An aligned text table, one row per model: params (M), GMACs, int8 flash (KiB), peak RAM (KiB)."""
    header = ("model", "params (M)", "GMACs", "int8 flash (KiB)", "peak RAM (KiB)")
    rows = [
        (name, f"{p.params / 1e6:.3f}", f"{p.macs / 1e9:.3f}", f"{p.flash_bytes / 1024:,.1f}",
         f"{p.peak_ram_bytes / 1024:,.1f}")
        for name, p in profiles.items()
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Iterable[str]) -> str:
        cells = list(cells)
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return "\n".join([line(header), line("-" * w for w in widths), *(line(r) for r in rows)])


# --------------------------------------------------------------------------- static (shape-free) costs


def _nnz(m: MaskedConv2d) -> int:
    return int(torch.count_nonzero(m.mask))


def _leaf_static(m: nn.Module, in_lrs: bool) -> tuple[int, int]:
    """(params, flash bytes) of one leaf conv / linear."""
    bias = m.bias.numel() if m.bias is not None else 0
    out_ch = m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
    if isinstance(m, MaskedConv2d):
        nnz = _nnz(m)
        slice_len = m.weight[0].numel()  # C_in/groups * kh * kw
        index_bytes = 2 if slice_len <= 65536 else 4
        params = 2 * nnz + out_ch + 1 + bias
        flash = nnz * (1 + index_bytes) + ROW_PTR_BYTES * (out_ch + 1)
        if not in_lrs:
            flash += BYTES_PER_CHANNEL * out_ch
        return params, flash
    weights = m.weight.numel()
    return weights + bias, weights + BYTES_PER_CHANNEL * out_ch


def _static(model: nn.Module) -> tuple[int, int, dict[str, tuple[nn.Module, int, int]]]:
    """Total params, total flash, and ``{leaf name: (module, params, flash)}`` of every leaf conv / linear."""
    in_lrs = {id(m.sparse) for m in model.modules() if isinstance(m, LowRankSparseConv2d)}
    leaves: dict[str, tuple[nn.Module, int, int]] = {}
    seen: set[int] = set()
    params = flash = 0
    for name, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if isinstance(m, _LAYER_TYPES):
            p, f = _leaf_static(m, id(m) in in_lrs)
            leaves[name] = (m, p, f)
            params, flash = params + p, flash + f
            continue
        n = sum(p.numel() for p in own)
        params += n
        if isinstance(m, TT5Conv2d):
            flash += BYTES_PER_CHANNEL * m.out_split.out_channels * m.factors[0][1]
        elif not isinstance(m, nn.modules.batchnorm._BatchNorm):
            flash += OTHER_PARAM_BYTES * n
    return params, flash, leaves


# --------------------------------------------------------------------------- MACs from shapes


def _leaf_macs(m: nn.Module, in_numel: int, out_numel: int) -> int:
    """MACs of one call of a leaf conv / linear given its input and output element counts."""
    if isinstance(m, nn.Linear):
        return out_numel * m.in_features
    kk = math.prod(m.kernel_size)
    if m.transposed:
        return in_numel * (m.out_channels // m.groups) * kk
    if isinstance(m, MaskedConv2d):  # a sparse kernel skips zeros: positions x nnz
        return out_numel // m.out_channels * _nnz(m)
    return out_numel * (m.in_channels // m.groups) * kk


def _conv_out_hw(m: nn.Conv2d, hw: tuple[int, int]) -> tuple[int, int]:
    if isinstance(m.padding, str):
        if m.padding == "same":
            return hw
        pads = (0, 0)
    else:
        pads = m.padding
    return tuple(
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip(hw, m.kernel_size, m.stride, pads, m.dilation)
    )  # type: ignore[return-value]


_SHAPE_KEEPING = (nn.modules.batchnorm._BatchNorm, nn.Identity, nn.modules.dropout._DropoutNd)


def _analytic(m: nn.Module, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]] | None:
    """(MACs, output shape) of ``m`` on a per-sample input ``shape``, or None when not analytic."""
    if type(m) in (nn.Conv2d, MaskedConv2d):
        if len(shape) != 3:
            return None
        h, w = _conv_out_hw(m, shape[1:])
        return _leaf_macs(m, 0, m.out_channels * h * w), (m.out_channels, h, w)
    if type(m) is nn.Linear:
        out = (*shape[:-1], m.out_features)
        return _leaf_macs(m, 0, math.prod(out)), out
    if isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward:  # Tucker2, LowRankConv2d ...
        macs = 0
        for child in m:
            r = _analytic(child, shape)
            if r is None:
                return None
            macs, shape = macs + r[0], r[1]
        return macs, shape
    if type(m) is LowRankSparseConv2d:
        a, b = _analytic(m.lowrank, shape), _analytic(m.sparse, shape)
        return None if a is None or b is None else (a[0] + b[0], a[1])
    if type(m) is TT5Conv2d:
        if len(shape) != 3:
            return None
        (o1, o2), (i1, _) = m.factors
        _, h, w = shape
        ho, wo = _conv_out_hw(m.core, (h, w))
        r4, r3, r2 = m.in_split.out_channels, m.in_mix.out_channels, m.core.out_channels
        macs = (
            i1 * h * w * r4 * m.in_split.in_channels  # in_split on (i1, i2, h, w)
            + h * w * r3 * m.in_mix.in_channels  # in_mix on (i1*r4, h, w)
            + _leaf_macs(m.core, 0, r2 * ho * wo)
            + ho * wo * m.out_mix.out_channels * r2  # out_mix
            + o2 * ho * wo * o1 * m.out_split.in_channels  # out_split on (o2, r1, ho, wo)
        )
        return macs, (o1 * o2, ho, wo)
    if isinstance(m, _SHAPE_KEEPING) or _is_activation(m):
        return 0, shape
    return None


# --------------------------------------------------------------------------- recording a real forward


def _numel(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel()
    if isinstance(x, (tuple, list)):
        return sum(_numel(v) for v in x)
    if isinstance(x, dict):
        return sum(_numel(v) for v in x.values())
    return 0


class _Recorder:
    """Forward hooks on every leaf module: per call (input elements, output elements)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: dict[str, list[tuple[int, int]]] = {}
        self.modules: dict[str, nn.Module] = {}
        self._handles = []
        for name, m in model.named_modules():
            if isinstance(m, _LAYER_TYPES) or next(m.children(), None) is None:
                self.modules[name] = m
                self._handles.append(m.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable:
        def hook(_m: nn.Module, args: tuple, out: Any) -> None:
            self.calls.setdefault(name, []).append((_numel(args), _numel(out)))

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def macs(self, name: str) -> int:
        m = self.modules[name]
        return sum(_leaf_macs(m, i, o) for i, o in self.calls.get(name, ()))

    def leaf_max(self) -> tuple[int, str]:
        best, at = 0, ""
        for name, calls in self.calls.items():
            if _is_inplace_module(self.modules[name]) or _is_view_module(self.modules[name]):
                continue
            for i, o in calls:
                if i + o > best:
                    best, at = i + o, name
        return best, at


def _sample_input(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    ref = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- fx liveness

_ACT_NAMES = {
    "relu", "relu_", "relu6", "silu", "silu_", "gelu", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "mish", "selu",
    "celu", "softplus", "hardtanh", "hardtanh_", "prelu", "batch_norm", "clamp", "clamp_", "swish",
}
_VIEW_NAMES = {
    "flatten", "reshape", "view", "transpose", "permute", "contiguous", "squeeze", "unsqueeze", "chunk",
    "split", "unbind", "narrow", "select", "getitem", "identity", "dropout", "dropout_", "view_as",
    "reshape_as", "t", "expand", "expand_as", "detach",
}
_ADD_TARGETS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__", "__radd__"}


def _is_activation(m: nn.Module) -> bool:
    mod = type(m).__module__
    return mod.startswith("torch.nn.modules.activation") or mod.startswith("timm.layers.activations")


def _is_inplace_module(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or _is_activation(m)


def _is_view_module(m: nn.Module) -> bool:
    return isinstance(m, (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd))


def _node_kind(node: Any, modules: Mapping[str, nn.Module]) -> str:
    """'view', 'inplace', 'add' or 'new' (see the module docstring)."""
    if node.op == "call_module":
        m = modules[node.target]
        if _is_view_module(m):
            return "view"
        return "inplace" if _is_inplace_module(m) else "new"
    if node.op == "call_function":
        if node.target in _ADD_TARGETS:
            return "add"
        name = getattr(node.target, "__name__", "")
    elif node.op == "call_method":
        if node.target in _ADD_METHODS:
            return "add"
        name = node.target
    else:
        return "new"
    if name in _VIEW_NAMES:
        return "view"
    return "inplace" if name in _ACT_NAMES else "new"


def _node_bytes(node: Any) -> int:
    meta = node.meta.get("tensor_meta")

    def count(t: Any) -> int:
        if t is None:
            return 0
        if hasattr(t, "shape") and hasattr(t, "dtype"):
            return math.prod(t.shape)
        if isinstance(t, (tuple, list)):
            return sum(count(v) for v in t)
        if isinstance(t, dict):
            return sum(count(v) for v in t.values())
        return 0

    return count(meta)


class _Tracer(torch.fx.Tracer):
    def __init__(self) -> None:
        leaves: tuple[type, ...] = (MaskedConv2d, TT5Conv2d)
        functions: tuple = ()
        try:  # timm's own no-trace registry (modules and functions its fx feature extraction wraps)
            from timm.layers import get_notrace_functions, get_notrace_modules

            leaves += tuple(get_notrace_modules())
            functions = tuple(get_notrace_functions())
        except Exception:  # noqa: BLE001 - timm absent or changed: plain tracing
            pass
        super().__init__(autowrap_functions=functions)
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, qualname)


def _fx_peak(model: nn.Module, x: torch.Tensor,
             inner_peak: Mapping[str, int]) -> tuple[int, str, dict[str, tuple[int, int]]]:
    """Liveness peak over the traced graph and where it falls; ``inner_peak`` = internal working set of
    leaf modules. Also, per module call, ``(beside, kept)``: the bytes live beside it (everything live
    while it runs but its own inputs and output: a residual block's input waiting for the add, say),
    and the bytes of its inputs that outlive it (still needed by a later node)."""
    from torch.fx.passes.shape_prop import ShapeProp

    graph = _Tracer().trace(model)
    gm = torch.fx.GraphModule(model, graph)
    ShapeProp(gm).propagate(x)
    modules = dict(model.named_modules())
    nodes = list(graph.nodes)
    idx = {n: i for i, n in enumerate(nodes)}

    const: set = set()
    buf_of: dict = {}  # node -> buffer id
    members: dict[int, list] = {}  # buffer id -> nodes sharing it
    size: dict[int, int] = {}
    start: dict[int, int] = {}

    def dies_at(b: int, i: int) -> bool:
        return all(idx[u] <= i for p in members[b] for u in p.users)

    def new_buffer(n: Any, nbytes: int, i: int) -> None:
        b = len(size)
        buf_of[n], members[b], size[b], start[b] = b, [n], nbytes, i

    for i, n in enumerate(nodes):
        if n.op == "output":
            continue
        if n.op == "get_attr" or (n.op != "placeholder" and n.all_input_nodes
                                  and all(a in const for a in n.all_input_nodes)):
            const.add(n)
            continue
        nbytes = _node_bytes(n)
        if nbytes == 0:
            const.add(n)  # non-tensor values (sizes, shapes)
            continue
        inputs = [a for a in n.all_input_nodes if a in buf_of]
        kind = _node_kind(n, modules)
        reuse = None
        if kind == "view" and inputs:
            reuse = buf_of[inputs[0]]
        elif kind == "inplace" and inputs and dies_at(buf_of[inputs[0]], i):
            reuse = buf_of[inputs[0]]
        elif kind == "add":
            reuse = next((buf_of[a] for a in inputs if size[buf_of[a]] >= nbytes and dies_at(buf_of[a], i)), None)
        if reuse is None:
            new_buffer(n, nbytes, i)
        else:
            buf_of[n] = reuse
            members[reuse].append(n)
            size[reuse] = max(size[reuse], nbytes)

    delta = [0] * (len(nodes) + 1)
    for b, nodes_b in members.items():
        end = max(max((idx[u] for p in nodes_b for u in p.users), default=start[b]), start[b])
        delta[start[b]] += size[b]
        delta[end + 1] -= size[b]
    best, at, live = 0, "", 0
    beside: dict[str, tuple[int, int]] = {}
    for i, n in enumerate(nodes):
        live += delta[i]
        total = live
        if n.op == "call_module":
            ends = _node_bytes(n) + sum(_node_bytes(a) for a in n.all_input_nodes if a in buf_of)
            kept = sum(_node_bytes(a) for a in n.all_input_nodes
                       if a in buf_of and not dies_at(buf_of[a], i))
            old = beside.get(str(n.target), (0, 0))
            beside[str(n.target)] = (max(old[0], live - ends), max(old[1], kept))
            if n.target in inner_peak:
                total += max(0, inner_peak[n.target] - ends)
        if total > best:
            best, at = total, n.name if n.op != "call_module" else str(n.target)
    return best, at, beside


# --------------------------------------------------------------------------- public API


def profile(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224)) -> Profile:
    """Params, MACs, int8 flash and int8 peak RAM of ``model`` on one ``input_size`` sample (batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    input_size = tuple(int(s) for s in input_size)
    with eval_mode(model):
        params, flash, leaves = _static(model)
        x = _sample_input(model, (1, *input_size))
        rec = _Recorder(model)
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                model(x)
        finally:
            rec.remove()
        macs = counter.get_total_flops() // 2
        layers = []
        for name, (m, p, f) in leaves.items():
            calls = rec.calls.get(name, [])
            layer_macs = rec.macs(name)
            if isinstance(m, MaskedConv2d):  # FlopCounterMode counted it dense
                dense = sum(o * (m.in_channels // m.groups) * math.prod(m.kernel_size) for _, o in calls)
                macs -= dense - layer_macs
            layers.append(LayerCost(name, type(m).__name__, p, layer_macs, f, max((o for _, o in calls), default=0)))

        # internal working set of modules the tracer keeps whole (their inner convs' largest in + out)
        inner = {}
        for name, m in model.named_modules():
            if isinstance(m, TT5Conv2d):
                inner[name] = max((i + o for sub in m.named_modules() if sub[0]
                                   for i, o in rec.calls.get(f"{name}.{sub[0]}", ())), default=0)
        try:
            with torch.no_grad():
                peak, at, _ = _fx_peak(model, x, inner)
            method = "fx-liveness"
        except Exception:  # noqa: BLE001 - untraceable model: per-leaf estimate
            peak, at = rec.leaf_max()
            method = "leaf-max"
    return Profile(int(params), int(macs), int(flash), int(peak), input_size, tuple(layers), method, at)


def live_beside(model: nn.Module, input_size: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Per module (by name): ``(beside, kept)`` int8 bytes, by the liveness rules above: what is live
    beside it while it runs, and how much of its input outlives it.

    The rank search prices each layer's own working set; what else is live then (a residual
    block's input, the other branch of a fork) does not depend on how the layer is factorised,
    and an input that outlives the layer stays live through every step of a factorised one.
    Adding both keeps the search's per-layer RAM bound at or above the profiled peak. Empty when
    the model cannot be traced.
    """
    with eval_mode(model), torch.no_grad():
        try:
            return _fx_peak(model, _sample_input(model, (1, *input_size)), {})[2]
        except Exception:  # noqa: BLE001 - untraceable: no correction (profile falls back to leaf-max too)
            return {}


def module_cost(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """``{"params", "flash", "macs"}`` of one small module on an input of ``input_shape``.

    ``input_shape`` is one input tensor's shape with or without its batch
    dimension: ``(C, H, W)`` / ``(N, C, H, W)`` for convs, ``(F,)`` / ``(N, F)``
    / ``(N, ..., F)`` for linears. Costs are per sample (batch 1; ``N`` is
    ignored), by the rules of the module docstring, so they add up to what
    ``profile`` reports. Analytic (no forward pass) for ``nn.Conv2d``,
    ``MaskedConv2d``, ``nn.Linear``, ``TT5Conv2d``, ``LowRankSparseConv2d`` and
    ``nn.Sequential`` chains of these (plus BN / activations / identity);
    anything else runs one forward pass with hooks.
    """
    shape = tuple(int(s) for s in input_shape)
    params, flash, leaves = _static(module)
    conv_like = any(isinstance(m, nn.modules.conv._ConvNd) for m, _, _ in leaves.values())
    if conv_like and len(shape) == 4:
        shape = shape[1:]
    elif not conv_like and len(shape) >= 2:
        shape = shape[1:]
    res = _analytic(module, shape)
    if res is not None:
        macs = res[0]
    else:
        macs = _traced_macs(module, shape)
    return {"params": float(params), "flash": float(flash), "macs": float(macs)}


def _traced_macs(module: nn.Module, shape: tuple[int, ...]) -> int:
    """MACs of one real forward pass (batch 1) summed over the leaf convs / linears."""
    rec = _Recorder(module)
    try:
        with eval_mode(module), torch.no_grad():
            module(_sample_input(module, (1, *shape)))
    finally:
        rec.remove()
    return sum(rec.macs(name) for name, m in rec.modules.items() if isinstance(m, _LAYER_TYPES))


# --------------------------------------------------------------------------- params of a plan, without building it


def _spec_params(module: nn.Module, spec: Mapping[str, Any]) -> int:
    """Params of ``module`` once ``spec`` is applied: the type's own formula (``full``: as stored)."""
    if spec["type"] == "full":
        return _static(module)[0]
    return registry.for_spec(spec).params(module, spec)


def prepared_for_plan(model: nn.Module, plan: Plan | Mapping[str, Any]) -> tuple[nn.Module, Plan]:
    """The model as ``compress`` would see it (after the plan's surgery, on a copy), validated against the plan."""
    plan = plan if isinstance(plan, Plan) else Plan.from_dict(plan)
    if plan.surgery:
        model = copy.deepcopy(model)
        try:
            apply_surgery(model, plan.surgery)
        except SurgeryError as e:
            raise PlanError(str(e)) from None
    validate(model, plan)
    return model, plan


def plan_params(model: nn.Module, plan: Plan | Mapping[str, Any]) -> int:
    """Total params of ``compress(model, plan)`` without building it (this module's definition)."""
    model, plan = prepared_for_plan(model, plan)
    total = _static(model)[0]
    for name, spec in plan.factorised().items():
        module = model.get_submodule(name)
        total += _spec_params(module, spec) - _static(module)[0]
    return total
