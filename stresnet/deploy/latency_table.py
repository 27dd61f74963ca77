"""Measured latency tables: every layer option timed alone in onnxruntime, once per shape signature.

A network's batch-1 latency is predicted as a sum: ``rest + sum over its searched layers of the
chosen option's latency``, each layer timed alone (an ONNX file of that one factorised layer, built
by the factorisation registry) and cached in a JSON file by :class:`LayerSignature` key, so a
search over thousands of options or a re-run of ``stresnet bench latency --predict`` times each
shape once. ``rest`` (BN-folded activations, pooling, adds, the head, and, negatively, the per-run
overhead every layer timed alone pays once) is measured once per network as

    rest = latency(reference network) - sum of latency(reference network's layers, each alone)

with the searched layers of the reference at small Tucker-2 ranks (``reference="floor"``, the
default) or dense (``"dense"``, the base itself). The floor keeps both terms small: with the dense
base, ``rest`` is the difference of two numbers ~10x larger than a compressed model's latency, and
their timing noise lands on it whole. Timing is :func:`stresnet.deploy.latency.bench_latency`'s
(round-robin rounds, one onnxruntime session alive at a time), read as the 10th percentile of each
model's samples (:data:`~stresnet.deploy.latency.QUIET`: the machine's quiet latency).

A layer timed alone also pays one onnxruntime call (binding, output allocation, waking the thread
pool): tens of microseconds, as much as a small factorised layer computes, and it drifts with the
machine's state. Every chunk of layers is therefore timed together with an anchor,
:class:`CallOverhead` (one call with almost no compute) on the same input, in the same calls,
and a layer's latency is its p10 minus that chunk's anchor p10, each a median over the passes of
:func:`measure_layers` (:func:`net_ms`).
Options of one layer that land in different chunks (a search times thousands) then compare without
each chunk's overhead, and ``rest`` is what the network pays besides its searched layers, positive.

The larger errors came from what looked like machine state: the same small model measured 2.3 ms in
one run and 4.2 ms in another (pico at 224 px), while ResNet-18 moved by 4 %. The cause was subnormal
floats: random weights (every entry here is timed with random weights) underflow into them in some
draws, and x86 computes on them tens of times slower. Timing now flushes them to zero (see
:func:`~stresnet.deploy.latency.bench_latency`; tables timed without the flush are format /2 and are
refused). ``stresnet bench latency --predict`` also times each plan's reference network in the same
run as the networks it checks (:func:`adopt_networks`), so what drift is left is shared.
What is left is the VM itself: it loses most of its second core in spells, short ones that the
p10 and the passes of :func:`measure_layers` ride out and long ones they do not (see
:data:`~stresnet.deploy.latency.QUIET`). With the flush and the p10 (with and without passes),
seven fresh ``bench latency --predict`` runs over the ten zoo variants had worst errors of 8 % to
25 %, the smallest networks the worst.

On a later, quieter machine (an AMD EPYC VM) the errors were systematic instead, 42-50 % over for the 32x
variant in three fresh runs with identical entries, from two causes of the fill, both fixed: a few warm-up runs
of a small layer ended before an idle core was back (see :data:`~stresnet.deploy.latency.WARMUP_MS`), and
layers timed plan by plan in small chunks measured higher than in one fill (see :func:`predict_vs_measured`).
That machine too has slow spells lasting minutes, in which a small network runs about 35 % slower (32x: 3.8-3.9
instead of 2.84 ms) while ResNet-18 moves by 2 %, and layers timed alone by about 13 %. A ``--predict`` run that
fell wholly in one (networks, references and table all timed in it) was still within 5.3 % for every network;
a spell that starts or ends between the bench and the fill would not be.
"""
from __future__ import annotations

import copy
import hashlib
import math
import platform
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from torch import nn
from torch.nn.utils import skip_init

from ..layers import registry
from ..plan import Plan, build, compress
from ..search.latency_costs import FULL, LatencyCosts, LatencyError, LayerSignature, spec_key
from ..search.pipeline import SearchSpace, decomposable_convs, input_shapes
from ..utils.io import atomic_write_json
from ..utils.provenance import cpu_model
from .latency import QUIET, bench_latency
from .tables import text_table

__all__ = ["FORMAT", "ANCHOR", "LatencyTable", "CallOverhead", "net_ms", "layer_module", "measure_layers",
           "measure_network", "latency_costs", "search_latency", "predict_plan", "plan_reference", "adopt_networks", "plan_for_name", "predict_vs_measured", "format_prediction"]

FORMAT = "stresnet-latency/3"  # /2: entries carry their chunk's call overhead; /3: subnormals flushed, "ms":
# the median over passes of the p10 (see measure_layers)
Reference = Literal["floor", "dense"]
FLOOR_RANK = 8  # the reference's Tucker-2 ranks: the smallest grid step the search offers
CHUNK = 24  # layers timed per bench_latency call: the cache is saved after each, so an interrupted fill keeps most
ANCHOR = "call overhead"  # the anchor's name among a chunk's models (never a LayerSignature key: those start with a kind)
Timer = Callable[..., dict]  # bench_latency's signature; tests pass a fake one


def runtime_env() -> dict[str, Any]:
    """What a cached latency is only valid for: the onnxruntime version and the CPU."""
    import os

    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "cpu": cpu_model() or platform.machine(),
            "cpu_count": os.cpu_count()}


class LatencyTable:
    """A JSON cache of measured latencies: ``layers`` by :meth:`LayerSignature.key`, ``networks`` by
    :func:`network_key`, each ``{"ms", "median_ms", "samples", "other_cores"}`` (``ms``: the
    :data:`~stresnet.deploy.latency.QUIET` statistic every prediction uses; ``other_cores``: how many cores'
    worth of CPU other processes used while it was timed; above ~0.25 the value is suspect); a layer's
    entry adds ``overhead_ms``, its chunks' :class:`CallOverhead` p10 (see :func:`net_ms`), and ``passes``.

    A table belongs to one runtime and CPU (``env``); loading one measured elsewhere is an error
    rather than a silent mix of two machines' numbers.
    """

    def __init__(self, path: str | Path | None = None, env: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.env = dict(env) if env is not None else None
        self.layers: dict[str, dict[str, float]] = {}
        self.networks: dict[str, dict[str, float]] = {}
        self.pending: dict[str, list[dict[str, float]]] = {}  # passes timed so far of layers not yet complete

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, Any] | None = None) -> "LatencyTable":
        """The table at ``path`` (empty when the file does not exist yet), checked against ``env``
        (default: this machine's :func:`runtime_env`)."""
        import json

        env = dict(env) if env is not None else runtime_env()
        table = cls(path, env)
        path = Path(path)
        if not path.is_file():
            return table
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise LatencyError(f"latency table {path}: not readable JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise LatencyError(f"latency table {path}: not a {FORMAT} file (found {found!r}): measure a new one")
        if data.get("env") != env:
            raise LatencyError(f"latency table {path} was measured on {data.get('env')}, this is {env}: "
                               "use another file")
        table.layers = dict(data.get("layers", {}))
        table.networks = dict(data.get("networks", {}))
        table.pending = {k: list(v) for k, v in data.get("pending", {}).items()}
        return table

    def save(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, {"format": FORMAT, "env": self.env, "layers": self.layers,
                                          "networks": self.networks, "pending": self.pending})

    def busy_entries(self, threshold: float = 0.25) -> int:
        """How many entries were timed while other processes used more than ``threshold`` cores."""
        rows = [*self.layers.values(), *self.networks.values()]
        return sum(1 for r in rows if (r.get("other_cores") or 0.0) > threshold)


class CallOverhead(nn.Module):
    """The anchor: one onnxruntime call on the layer's input that computes next to nothing (a one-element
    slice plus one), so its latency is what every call pays besides the layer's own work."""

    def forward(self, x):
        return x[(slice(None),) + (slice(0, 1),) * (x.dim() - 1)] + 1.0


def net_ms(entry: Mapping[str, float]) -> float:
    """A layer's own latency: its p10 minus its chunk's call overhead (never below zero)."""
    return max(0.0, float(entry["ms"]) - float(entry.get("overhead_ms", 0.0)))


def layer_module(sig: LayerSignature, spec: Mapping[str, Any]) -> nn.Module:
    """The module ``spec`` becomes on a layer of signature ``sig`` (random weights: speed does not depend on them).

    Only a ``full`` spec times the dense layer itself; every other type builds its own modules
    (``init="random"``) and reads nothing of the dense one but its geometry, so that one is left uninitialised
    (``skip_init``): the random fill of a 512x512x3x3 kernel cost more than its export, once per option and pass.
    """
    if sig.kind == "linear":
        cls, args = nn.Linear, (sig.c_in, sig.c_out, sig.bias)
    else:
        cls, args = nn.Conv2d, (sig.c_in, sig.c_out, sig.kernel, sig.stride, sig.padding, sig.dilation, sig.groups,
                                sig.bias, sig.padding_mode)
    dense: nn.Module = cls(*args) if spec.get("type") == "full" else skip_init(cls, *args)
    try:
        fact = registry.for_spec(spec)
        fact.check_module(dense, spec)
    except registry.SpecError as e:
        raise LatencyError(f"latency table: {sig.key(spec, 0)}: {e}") from None
    return fact.build(dense, spec, init="random").eval()


def _entry(result: Mapping[str, Any], name: str) -> dict[str, float]:
    row = result["models"][name]["onnxruntime"]
    return {"ms": float(row[QUIET]), "median_ms": float(row["median_ms"]), "samples": int(row["samples"]),
            "other_cores": result["env"].get("other_processes_cores")}


def measure_layers(
    table: LatencyTable,
    requests: Mapping[str, tuple[LayerSignature, Mapping[str, Any]]],
    threads: int,
    warmup: int = 5,
    iters: int = 30,
    rounds: int = 5,
    timer: Timer = bench_latency,
    progress: bool = False,
) -> dict[str, float]:
    """Latency (ms, :func:`net_ms`: without the call overhead) of each requested ``key: (signature, spec)``;
    only keys the table lacks are timed.

    Layers sharing an input shape are timed together with a :class:`CallOverhead` anchor, in ``rounds``
    passes over every missing layer (``iters / rounds`` runs each per pass), so a layer's samples are spread
    over the whole fill rather than the second its chunk takes: a burst in which the VM loses a core then
    spoils one pass of a layer, not all of them. An entry is the median over passes of each pass's p10 (and
    its anchor's likewise). Passes done are saved in the table's ``pending`` part after every chunk, so an
    interrupted fill resumes where it stopped.
    """
    import statistics

    from tqdm import tqdm

    missing = [key for key in requests if key not in table.layers]
    per_pass = max(1, iters // rounds)
    for done in range(rounds):
        by_shape: dict[tuple[int, ...], list[str]] = {}
        for key in missing:
            if len(table.pending.get(key, [])) <= done:
                by_shape.setdefault(requests[key][0].input_shape, []).append(key)
        chunks = [(shape, keys[i:i + CHUNK]) for shape, keys in by_shape.items() for i in range(0, len(keys), CHUNK)]
        for shape, keys in tqdm(chunks, desc=f"latency table, pass {done + 1}/{rounds}",
                                disable=not progress or not chunks, leave=False):
            models = {ANCHOR: CallOverhead(), **{key: layer_module(*requests[key]) for key in keys}}
            result = timer(models, shape, threads=threads, warmup=warmup, iters=per_pass, baseline=None, rounds=1,
                           backends=("onnxruntime",), with_macs=False)
            overhead = _entry(result, ANCHOR)["ms"]
            for key in keys:
                table.pending.setdefault(key, []).append({**_entry(result, key), "overhead_ms": overhead})
            table.save()
    for key in missing:
        passes = table.pending.pop(key)
        table.layers[key] = {
            **{f: statistics.median(r[f] for r in passes) for f in ("ms", "overhead_ms", "median_ms")},
            "samples": sum(r["samples"] for r in passes), "passes": len(passes),
            "other_cores": max((r["other_cores"] for r in passes if r["other_cores"] is not None), default=None)}
    if missing:
        table.save()
    return {key: net_ms(table.layers[key]) for key in requests}


def network_key(model: nn.Module, input_size: Sequence[int], threads: int) -> str:
    """A network's cache key: its class, a hash of its module tree (every layer's shape), input size, threads."""
    digest = hashlib.sha256(repr(model).encode()).hexdigest()[:16]
    return f"{type(model).__name__} {digest} @{'x'.join(map(str, input_size))} t{int(threads)}"


def measure_network(
    table: LatencyTable,
    model: nn.Module,
    input_size: Sequence[int],
    threads: int,
    warmup: int = 10,
    iters: int = 50,
    rounds: int = 5,
    timer: Timer = bench_latency,
) -> float:
    """Whole-network latency (ms), timed once per :func:`network_key` and cached."""
    key = network_key(model, input_size, threads)
    if key not in table.networks:
        result = timer({key: model}, tuple(input_size), threads=threads, warmup=warmup, iters=iters, baseline=None,
                       rounds=rounds, backends=("onnxruntime",), with_macs=False)
        table.networks[key] = _entry(result, key)
        table.save()
    return table.networks[key]["ms"]


def reference_spec(sig: LayerSignature, reference: Reference) -> dict:
    """The spec of one searched layer in the reference network that ``rest`` is measured on."""
    if reference == "dense" or sig.kind != "conv" or sig.groups != 1:
        return dict(FULL)
    return {"type": "tucker2", "ranks": [min(FLOOR_RANK, sig.c_out), min(FLOOR_RANK, sig.c_in)]}


def reference_network(model: nn.Module, layers: Mapping[str, LayerSignature], reference: Reference) -> nn.Module:
    """``model`` with its searched ``layers`` at the reference specs: the network ``rest`` is measured on."""
    ref_plan = Plan(layers={n: s for n, sig in layers.items() if (s := reference_spec(sig, reference))["type"] != "full"})
    return compress(copy.deepcopy(model), ref_plan, init="random") if ref_plan.layers else model


def latency_costs(
    table: LatencyTable,
    model: nn.Module,
    layers: Mapping[str, LayerSignature],
    options: Mapping[str, Iterable[Mapping[str, Any]]],
    input_size: Sequence[int],
    threads: int,
    reference: Reference = "floor",
    timer: Timer = bench_latency,
    progress: bool = False,
) -> LatencyCosts:
    """Measured latency of every option of every searched layer of ``model`` (a dense network whose
    ``layers`` are the searched ones), and ``rest_ms`` from the reference network (see the module doc)."""
    if reference not in ("floor", "dense"):
        raise LatencyError(f"latency reference {reference!r}: expected 'floor' or 'dense'")
    refs = {name: reference_spec(sig, reference) for name, sig in layers.items()}
    wanted = _wanted(layers, options, threads, reference)
    ms = measure_layers(table, _requests(layers, wanted), threads, timer=timer, progress=progress)
    total = measure_network(table, reference_network(model, layers, reference), input_size, threads, timer=timer)
    rest = total - math.fsum(ms[layers[n].key(s, threads)] for n, s in refs.items())
    per_layer = {name: {spec_key(spec): ms[key] for key, spec in row.items()} for name, row in wanted.items()}
    return LatencyCosts(rest, per_layer, threads=int(threads), source=str(table.path) if table.path else None)


def _wanted(layers: Mapping[str, LayerSignature], options: Mapping[str, Iterable[Mapping[str, Any]]], threads: int,
            reference: Reference) -> dict[str, dict[str, dict]]:
    """Per searched layer, the specs to time (``{spec key: spec}``): dense, every option, and the reference's."""
    wanted: dict[str, dict[str, dict]] = {}
    for name, specs in options.items():
        wanted[name] = {}
        for spec in [FULL, *specs, reference_spec(layers[name], reference)]:
            wanted[name].setdefault(layers[name].key(spec, threads), dict(spec))
    return wanted


def _requests(layers: Mapping[str, LayerSignature], wanted: Mapping[str, Mapping[str, dict]]
              ) -> dict[str, tuple[LayerSignature, dict]]:
    """:func:`_wanted` as :func:`measure_layers` takes it: ``{spec key: (signature, spec)}``."""
    return {key: (layers[name], spec) for name, row in wanted.items() for key, spec in row.items()}


def search_latency(
    model: nn.Module,
    space: SearchSpace,
    table: LatencyTable,
    threads: int,
    reference: Reference = "floor",
    timer: Timer = bench_latency,
    progress: bool = True,
) -> LatencyCosts:
    """The latency of every option of a search space (a :data:`~stresnet.search.pipeline.LatencySource`
    once ``table`` and ``threads`` are bound), at the space's input size."""
    options = {name: [o.spec for o in opts] for name, opts in space.options.items()}
    return latency_costs(table, model, space.signatures, options, space.input_size, threads, reference, timer,
                         progress)


def _searched_layers(base: nn.Module, plan: Plan, input_size: Sequence[int]) -> dict[str, LayerSignature]:
    """Signatures of the layers a prediction sums over: the base's decomposable convs and the plan's layers."""
    modules = dict(decomposable_convs(base))
    for name in plan.layers:
        modules.setdefault(name, base.get_submodule(name))
    shapes = input_shapes(base, modules, input_size)
    return {name: LayerSignature.of(m, shapes[name]) for name, m in modules.items() if name in shapes}


def _plan_layers(plan: Plan, input_size: Sequence[int], num_classes: int | None
                 ) -> tuple[nn.Module, dict[str, LayerSignature], dict[str, dict]]:
    """The dense base a prediction for ``plan`` starts from, its searched layers, and the plan's spec of each."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    base = build(Plan(base=plan.base, surgery=plan.surgery), **kwargs).eval()
    layers = _searched_layers(base, plan, input_size)
    return base, layers, {name: plan.layers.get(name, FULL) for name in layers}


def predict_plan(
    table: LatencyTable,
    plan: Plan,
    input_size: Sequence[int],
    threads: int,
    num_classes: int | None = None,
    reference: Reference = "floor",
    timer: Timer = bench_latency,
) -> dict[str, float]:
    """Predicted batch-1 latency (ms) of ``plan``'s model: its base (with the plan's surgery) built dense,
    ``rest_ms`` measured on the reference, plus every searched layer's chosen spec timed alone."""
    return _predict(table, *_plan_layers(plan, input_size, num_classes), input_size, threads, reference, timer)


def _predict(table: LatencyTable, base: nn.Module, layers: Mapping[str, LayerSignature], specs: Mapping[str, dict],
             input_size: Sequence[int], threads: int, reference: Reference, timer: Timer) -> dict[str, float]:
    """:func:`predict_plan` once the plan's base, searched layers and specs are built (:func:`_plan_layers`)."""
    costs = latency_costs(table, base, layers, {n: [s] for n, s in specs.items()}, input_size, threads, reference,
                          timer)
    return {"predicted_ms": costs.total(specs), "rest_ms": costs.rest_ms, "layers": len(layers)}


def plan_reference(plan: Plan, input_size: Sequence[int], num_classes: int | None = None,
                   reference: Reference = "floor") -> nn.Module:
    """The reference network behind :func:`predict_plan`'s ``rest_ms`` for ``plan``."""
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    base = build(Plan(base=plan.base, surgery=plan.surgery), **kwargs).eval()
    return reference_network(base, _searched_layers(base, plan, input_size), reference).eval()


def adopt_networks(table: LatencyTable, bench: Mapping[str, Any], names: Mapping[str, nn.Module]) -> None:
    """Store networks timed in a :func:`bench_latency` run (``{name in the run: model}``) in ``table``,
    replacing earlier timings: a reference timed in the same run as the networks a prediction is checked
    against shares their machine state (on this VM the state of the moment moved a small model from 2.3 to
    4.2 ms between runs, and a reference timed minutes apart carried that into every prediction)."""
    for name, model in names.items():
        table.networks[network_key(model, bench["input_size"], bench["threads"])] = _entry(bench, name)
    table.save()


def plan_for_name(name: str) -> Plan:
    """The plan behind a model name ``stresnet bench latency`` accepts: a plan file, a zoo variant, or a
    plain timm architecture (its dense self)."""
    from ..zoo.models import VARIANTS, packaged_plan

    if name in VARIANTS:
        return packaged_plan(name)
    if name.endswith(".json") or Path(name).is_file():
        return Plan.load(name)
    return Plan(base={"arch": name})


def predict_vs_measured(
    bench: Mapping[str, Any],
    plans: Mapping[str, Plan],
    table: LatencyTable,
    num_classes: int | None = None,
    reference: Reference = "floor",
    timer: Timer = bench_latency,
) -> dict[str, dict[str, float]]:
    """Per model of a :func:`~stresnet.deploy.latency.bench_latency` result: predicted ms (from ``table``,
    filled as needed), the run's measured onnxruntime p10, and the relative error (pred - meas) / meas.

    The layers of every plan are timed in one :func:`measure_layers` fill before any prediction, as a search's
    options are. Filled plan by plan (a few new layers per chunk), the entries of the ten zoo variants came out
    0.02-0.09 ms higher each on this machine than the same layers timed in one fill (the 14x14 layers, measured
    in one process after the other), and the smallest variants were over-predicted by 17 % (16x, 32x); in one
    fill, two fresh runs were within 7 % for every variant."""
    size, threads = bench["input_size"], bench["threads"]
    built = {name: _plan_layers(plan, size, num_classes) for name, plan in plans.items()}
    requests: dict[str, tuple[LayerSignature, dict]] = {}
    for _, layers, specs in built.values():  # every plan's layers timed in one fill, as a search's are
        requests.update(_requests(layers, _wanted(layers, {n: [s] for n, s in specs.items()}, threads, reference)))
    measure_layers(table, requests, threads, timer=timer)
    out = {}
    for name in plans:
        pred = _predict(table, *built[name], size, threads, reference, timer)
        measured = bench["models"][name]["onnxruntime"][QUIET]
        out[name] = {**pred, "measured_ms": measured, "rel_error": (pred["predicted_ms"] - measured) / measured}
    return out


def format_prediction(rows: Mapping[str, Mapping[str, float]], table: LatencyTable | None = None) -> str:
    """A text table: predicted vs measured onnxruntime ms and the relative error per model."""
    body = [[name, f"{r['predicted_ms']:.2f}", f"{r['measured_ms']:.2f}", f"{100 * r['rel_error']:+.1f}%",
             f"{r['rest_ms']:.2f}", str(r["layers"])] for name, r in rows.items()]
    lines = ["predicted (rest + sum of layers timed alone) vs measured onnxruntime latency, both the p10 of their "
             "samples (the machine's quiet latency)",
             *text_table(["model", "predicted ms", "measured ms", "error", "rest ms", "layers"], body)]
    if rows:
        worst = max(abs(r["rel_error"]) for r in rows.values())
        lines.append(f"largest |error|: {100 * worst:.1f}%")
    busy = table.busy_entries() if table is not None else 0
    if busy:
        lines.append(f"warning: {busy} table entries were timed while other processes used > 0.25 cores")
    return "\n".join(lines)
