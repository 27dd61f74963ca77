"""Latency tables and the latency budget, with a fake timer: no test here times anything.

The fake timer stands in for ``bench_latency`` and prices a model by its MACs (``stresnet.cost.profile``),
which are exactly additive over layers: the sum-of-layers prediction must then equal the whole network's
fake latency, whatever the plan, so any mix-up of signatures, specs or the rest constant shows.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from stresnet.cli import main
from stresnet.cost import profile
from stresnet.deploy.latency_table import (ANCHOR, LatencyTable, format_prediction, measure_layers, predict_plan,
                                           predict_vs_measured, search_latency)
from stresnet.plan import Plan, build
from stresnet.search.budgets import BudgetError, parse_budget
from stresnet.search.latency_costs import LatencyError, LayerSignature
from stresnet.search.pipeline import attach_latency, build_space, searched_plan

ENV = {"onnxruntime": "fake", "cpu": "test", "cpu_count": 1}


class FakeTimer:
    """``bench_latency``'s interface; a model's "latency" is its MACs / 1e6 on the given input size plus a
    per-call overhead, the same for every model of one call (``overheads``: one value per call, cycled)."""

    def __init__(self, overheads: tuple[float, ...] = (0.25,)) -> None:
        self.timed: list[str] = []
        self.overheads, self.calls = overheads, 0

    def __call__(self, models, input_size, **kwargs) -> dict:
        assert kwargs["backends"] == ("onnxruntime",) and kwargs["baseline"] is None
        overhead = self.overheads[self.calls % len(self.overheads)]
        self.calls += 1
        self.timed += [name for name in models if name != ANCHOR]
        return {"models": {name: {"onnxruntime": {"median_ms": (ms := profile(m, tuple(input_size)).macs / 1e6
                                                                 + overhead), "p10_ms": ms, "samples": 3}}
                           for name, m in models.items()},
                "env": {"other_processes_cores": 0.0}}


def toy() -> nn.Module:
    """Four convs whose params and (fake) latency disagree: the last one holds most params at the smallest size."""
    torch.manual_seed(0)

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*block(3, 16, 1), *block(16, 32, 1), *block(32, 32, 2), *block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def toy_space():
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return build_space(toy(), images, estimator="mse", step=8, progress=False)


# the toy's plans before latency existed (computed with main at aa54fcf, before the latency cost existed)
PLANS_BEFORE = {"2x": {"9": {"type": "tucker2", "ranks": [8, 8]}},
                "4x": {"3": {"type": "tucker2", "ranks": [24, 16]}, "6": {"type": "tucker2", "ranks": [8, 8]},
                       "9": {"type": "tucker2", "ranks": [8, 8]}}}


def test_cache_hit_does_not_remeasure(tmp_path: Path) -> None:
    conv = nn.Conv2d(16, 32, 3, padding=1)
    sig = LayerSignature.of(conv, (16, 8, 8))
    specs = [{"type": "full"}, {"type": "tucker2", "ranks": [8, 8]}]
    requests = {sig.key(s, 2): (sig, s) for s in specs}
    timer = FakeTimer()
    first = measure_layers(LatencyTable(tmp_path / "t.json", ENV), requests, threads=2, timer=timer, rounds=3)
    assert sorted(timer.timed) == sorted(3 * list(requests))  # once per pass
    again = FakeTimer()
    second = measure_layers(LatencyTable.load(tmp_path / "t.json", ENV), requests, threads=2, timer=again)
    assert again.timed == [] and second == first
    assert first[sig.key(specs[1], 2)] < first[sig.key(specs[0], 2)]  # the factorised layer is cheaper
    with pytest.raises(LatencyError, match="measured on"):  # another machine's table is refused, not mixed in
        LatencyTable.load(tmp_path / "t.json", {**ENV, "cpu": "other"})


def test_signature_distinguishes_shapes() -> None:
    spec = {"type": "full"}
    key = LayerSignature.of(nn.Conv2d(16, 32, 3, padding=1), (16, 8, 8)).key(spec, 2)
    assert LayerSignature.of(nn.Conv2d(16, 32, 3, padding=1), (16, 8, 8)).key(spec, 2) == key  # same shape
    others = [
        LayerSignature.of(nn.Conv2d(16, 32, 3, padding=1), (16, 16, 16)).key(spec, 2),  # input size
        LayerSignature.of(nn.Conv2d(16, 32, 3, padding=1, stride=2), (16, 8, 8)).key(spec, 2),  # stride
        LayerSignature.of(nn.Conv2d(16, 48, 3, padding=1), (16, 8, 8)).key(spec, 2),  # channels
        LayerSignature.of(nn.Conv2d(16, 32, 1), (16, 8, 8)).key(spec, 2),  # kernel
        LayerSignature.of(nn.Conv2d(16, 32, 3, padding=1, groups=16), (16, 8, 8)).key(spec, 2),  # groups
        LayerSignature.of(nn.Conv2d(16, 32, 3, padding=1), (16, 8, 8)).key(spec, 1),  # threads
        LayerSignature.of(nn.Conv2d(16, 32, 3, padding=1), (16, 8, 8)).key({"type": "tucker2", "ranks": [8, 8]}, 2),
        LayerSignature.of(nn.Linear(16, 32), (16,)).key(spec, 2),
    ]
    assert len({key, *others}) == 1 + len(others)


@pytest.mark.parametrize(("text", "ms", "label"), [("latency<=12ms", 12.0, "latency12ms"),
                                                    ("LATENCY <= 1500us", 1.5, "latency1500us"),
                                                    ("latency<=0.012s", 12.0, "latency0.012s")])
def test_latency_budget_units(text: str, ms: float, label: str) -> None:
    budget = parse_budget(text)
    assert budget.absolute == {"latency": pytest.approx(ms)} and budget.label == label
    assert parse_budget(f"8x,{text}").limits({"params": 8.0}) == {"params": 1.0, "latency": pytest.approx(ms)}


def test_relative_budget_is_a_share_of_the_base_cost() -> None:
    budget = parse_budget("8x, latency<=25%, macs<=40%")
    assert budget.absolute == {} and budget.relative == {"latency": 0.25, "macs": 0.4}
    assert budget.metrics == {"latency", "macs"} and budget.label == "8x_macs40pct_latency25pct"
    base = {"params": 800.0, "macs": 1000.0, "latency": 12.0}
    assert budget.limits(base) == {"params": 100.0, "macs": pytest.approx(400.0), "latency": pytest.approx(3.0)}
    with pytest.raises(BudgetError, match="latency table"):  # the base's latency is only known from a table
        budget.limits({"params": 800.0, "macs": 1000.0})


def test_relative_latency_budget_in_the_search(tmp_path: Path) -> None:
    model, space = toy(), toy_space()
    attach_latency(space, search_latency(model, space, LatencyTable(tmp_path / "t.json", ENV), threads=2,
                                         timer=FakeTimer(), progress=False))
    dense = space.base_cost["latency"]
    plan = searched_plan(space, parse_budget("2x,latency<=60%"))
    assert space.size(plan, "latency") <= 0.6 * dense + 1e-9 < space.size(searched_plan(space, parse_budget("2x")),
                                                                          "latency")


@pytest.mark.parametrize(("text", "why"), [("latency<=12", "no unit"), ("latency<=12kb", "unknown unit"),
                                           ("latency<=0ms", "must be > 0"), ("latency<=0%", "above 0%"),
                                           ("macs<=150%", "at most 100%")])
def test_bad_latency_budgets_name_the_term(text: str, why: str) -> None:
    with pytest.raises(BudgetError, match=why):
        parse_budget(text)


def test_without_a_latency_table_the_plan_is_unchanged() -> None:
    space = toy_space()
    for budget, layers in PLANS_BEFORE.items():
        assert searched_plan(space, parse_budget(budget)).layers == layers
    assert "latency" not in space.fixed_cost and all("latency" not in o.cost for o in space.options["0"])
    with pytest.raises(BudgetError, match="latency table"):
        searched_plan(space, parse_budget("2x,latency<=1ms"))


def test_latency_budget_changes_the_plan(tmp_path: Path) -> None:
    model, space = toy(), toy_space()
    before = searched_plan(space, parse_budget("2x"))
    attach_latency(space, search_latency(model, space, LatencyTable(tmp_path / "t.json", ENV), threads=2,
                                         timer=FakeTimer(), progress=False))
    assert searched_plan(space, parse_budget("2x")).layers == before.layers  # a cost alone changes nothing
    lo = space.fixed_cost["latency"] + sum(min(o.cost["latency"] for o in opts) for opts in space.options.values())
    hi = space.size(before, "latency")
    assert lo < hi
    limit = (lo + hi) / 2
    after = searched_plan(space, parse_budget(f"2x,latency<={limit}ms"))
    assert after.layers != before.layers
    assert space.size(after, "latency") <= limit + 1e-9 and space.size(after) <= space.base_cost["params"] / 2


def test_prediction_is_exact_when_latency_is_additive(tmp_path: Path) -> None:
    plan = Plan(base={"arch": "resnet18", "num_classes": 10},
                layers={"layer1.0.conv1": {"type": "tucker2", "ranks": [16, 16]},
                        "layer3.1.conv2": {"type": "tucker2", "ranks": [32, 64]},
                        "fc": {"type": "svd", "rank": 8}})
    size = (3, 32, 32)
    truth = profile(build(plan), size).macs / 1e6
    table = LatencyTable(tmp_path / "t.json", ENV)
    for reference in ("floor", "dense"):
        pred = predict_plan(table, plan, size, threads=2, reference=reference, timer=FakeTimer())
        assert pred["predicted_ms"] == pytest.approx(truth + 0.25, rel=1e-9)  # the network's one call overhead
    again = FakeTimer()
    predict_plan(LatencyTable.load(tmp_path / "t.json", ENV), plan, size, threads=2, timer=again)
    assert again.timed == []  # every layer and both reference networks came from the cache file
    measured = 2 * (truth + 0.25)
    bench = {"input_size": list(size), "threads": 2,
             "models": {"m": {"onnxruntime": {"median_ms": measured, "p10_ms": measured}}}}
    rows = predict_vs_measured(bench, {"m": plan}, table, timer=again)
    assert rows["m"]["rel_error"] == pytest.approx(-0.5)
    assert "-50.0%" in format_prediction(rows)


def test_the_plans_a_check_predicts_are_timed_in_one_fill(tmp_path: Path) -> None:
    """``bench latency --predict`` times the layers of all its plans in one fill (chunks by input shape, as a
    search does), not plan by plan: a layer of the second plan shares its chunk with the first plan's layers of
    the same input shape (timed plan by plan, small chunks measured higher on a real machine)."""

    class Calls(FakeTimer):
        def __init__(self) -> None:
            super().__init__()
            self.chunks: list[set[str]] = []

        def __call__(self, models, input_size, **kwargs) -> dict:
            self.chunks.append(set(models) - {ANCHOR})
            return super().__call__(models, input_size, **kwargs)

    base = {"arch": "resnet18", "num_classes": 10}
    a = Plan(base=base, layers={"layer1.0.conv1": {"type": "tucker2", "ranks": [16, 16]}})
    b = Plan(base=base, layers={"layer1.0.conv1": {"type": "tucker2", "ranks": [24, 24]}})
    size = (3, 32, 32)
    bench = {"input_size": list(size), "threads": 2,
             "models": {n: {"onnxruntime": {"median_ms": 1.0, "p10_ms": 1.0}} for n in "ab"}}
    timer = Calls()
    predict_vs_measured(bench, {"a": a, "b": b}, LatencyTable(tmp_path / "t.json", ENV), timer=timer)
    conv = build(Plan(base=base)).get_submodule("layer1.0.conv1")
    sig = LayerSignature.of(conv, (64, 8, 8))
    ka, kb = (sig.key(p.layers["layer1.0.conv1"], 2) for p in (a, b))
    assert any({ka, kb} <= chunk for chunk in timer.chunks)


def test_a_drifting_call_overhead_is_paid_once_not_per_layer(tmp_path: Path) -> None:
    """Each chunk's overhead differs (as it drifts on a real machine): the layers' own latencies must not carry
    it, so the prediction is off by at most the drift of one call, not one per layer (26 layers here)."""
    plan = Plan(base={"arch": "resnet18", "num_classes": 10},
                layers={"layer1.0.conv1": {"type": "tucker2", "ranks": [16, 16]}, "fc": {"type": "svd", "rank": 8}})
    size = (3, 32, 32)
    truth = profile(build(plan), size).macs / 1e6
    overheads = (0.2, 0.6, 0.35, 0.5)
    pred = predict_plan(LatencyTable(tmp_path / "t.json", ENV), plan, size, threads=2, timer=FakeTimer(overheads))
    assert pred["layers"] > 20
    assert min(overheads) - 1e-9 <= pred["predicted_ms"] - truth <= max(overheads) + 1e-9


def test_a_burst_spoils_one_pass_not_the_entry_and_a_killed_fill_resumes_at_its_pass(tmp_path: Path) -> None:
    """Each layer is timed once per pass, passes spread over the whole fill: a pass caught in a burst (here every
    model 3 ms slower in the second of three calls) leaves the entry at the quiet value; the passes done are in
    the file, so a fill interrupted after one pass times only the passes left."""
    conv = nn.Conv2d(16, 32, 3, padding=1)
    sig = LayerSignature.of(conv, (16, 8, 8))
    specs = [{"type": "full"}, {"type": "tucker2", "ranks": [8, 8]}]
    requests = {sig.key(s, 2): (sig, s) for s in specs}
    quiet = measure_layers(LatencyTable(tmp_path / "q.json", ENV), requests, threads=2, timer=FakeTimer(), rounds=3)

    class Burst(FakeTimer):
        def __call__(self, models, input_size, **kwargs) -> dict:
            out = super().__call__(models, input_size, **kwargs)
            for row in out["models"].values():
                if self.calls == 2 and row["onnxruntime"]["p10_ms"] > 0.3:  # the burst slows real work, not calls
                    row["onnxruntime"]["p10_ms"] += 3.0
            return out

    assert measure_layers(LatencyTable(tmp_path / "b.json", ENV), requests, threads=2, timer=Burst(),
                          rounds=3) == pytest.approx(quiet)

    class Killed(FakeTimer):
        def __call__(self, models, input_size, **kwargs) -> dict:
            if self.calls == 1:
                raise KeyboardInterrupt
            return super().__call__(models, input_size, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        measure_layers(LatencyTable(tmp_path / "k.json", ENV), requests, threads=2, timer=Killed(), rounds=3)
    rest = FakeTimer()
    resumed = measure_layers(LatencyTable.load(tmp_path / "k.json", ENV), requests, threads=2, timer=rest, rounds=3)
    assert rest.calls == 2 and resumed == pytest.approx(quiet)
    assert json.loads((tmp_path / "k.json").read_text())["pending"] == {}


def test_search_cli_refuses_a_latency_budget_without_a_table(tmp_path: Path, capsys) -> None:
    code = main(["search", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--budget", "8x,latency<=5ms"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "latency table" in err[0]


def test_table_file_is_readable_json(tmp_path: Path) -> None:
    sig = LayerSignature.of(nn.Conv2d(8, 8, 3, padding=1), (8, 4, 4))
    measure_layers(LatencyTable(tmp_path / "t.json", ENV), {"k": (sig, {"type": "full"})}, threads=1,
                   timer=FakeTimer())
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["format"] == "stresnet-latency/3" and data["env"] == ENV and set(data["layers"]) == {"k"}
    assert data["layers"]["k"]["overhead_ms"] == 0.25  # the anchor's median of the same call
    old = tmp_path / "old.json"
    for older in ("stresnet-latency/1", "stresnet-latency/2"):  # unanchored, or timed without the subnormal flush
        old.write_text(json.dumps({**data, "format": older}))
        with pytest.raises(LatencyError, match="measure a new one"):  # never mixed in
            LatencyTable.load(old, ENV)


def test_search_run_reports_predicted_latency(tree: Path, tmp_path: Path) -> None:
    from functools import partial

    from stresnet.search.run import search_and_write

    source = partial(search_latency, table=LatencyTable(tmp_path / "t.json", ENV), threads=1,
                     timer=FakeTimer(overheads=(0.0,)), progress=False)
    report = search_and_write("resnet18", None, tree, ["4x", "4x,latency<=7.5ms"], tmp_path / "out", num_classes=3,
                              size=32, calib=6, step=32, tied=True, baselines=("uniform",), progress=False,
                              latency=source)
    assert report["latency"]["rest_ms"] == report["fixed_cost"]["latency"]
    free, timed = (report["budgets"][k]["methods"]["searched"] for k in ("4x", "4x_latency7.5ms"))
    # fake latency = MACs / 1e6: the prediction of a plan is its MACs (the report's analytic count) at 32 px
    assert free["predicted_latency_ms"] == pytest.approx(free["macs"] / 1e6)
    assert free["predicted_latency_ms"] > 7.5 >= timed["predicted_latency_ms"]
    assert "predicted_latency_ms" in report["budgets"]["4x"]["methods"]["uniform"]


def test_a_reference_timed_in_the_bench_run_is_the_one_the_prediction_uses(tmp_path: Path) -> None:
    """`bench latency --predict` times each plan's reference network with the networks it checks; the prediction
    must take that timing (same machine state), not time the reference again at another moment."""
    from stresnet.deploy.latency_table import adopt_networks, plan_reference

    plan = Plan(base={"arch": "resnet18", "num_classes": 10}, layers={"layer1.0.conv1": {"type": "tucker2",
                                                                                         "ranks": [16, 16]}})
    size = [3, 32, 32]
    table = LatencyTable(tmp_path / "t.json", ENV)
    truth = predict_plan(table, plan, size, threads=2, timer=FakeTimer())["predicted_ms"]
    ref = plan_reference(plan, size, reference="floor")
    bench = {"input_size": size, "threads": 2, "env": {"other_processes_cores": 0.0},
             "models": {"ref": {"onnxruntime": {"median_ms": 100.0, "p10_ms": 100.0, "samples": 50}}}}
    adopt_networks(table, bench, {"ref": ref})  # the state of this run: every network 100 ms slower, say
    timer = FakeTimer()
    shifted = predict_plan(LatencyTable.load(tmp_path / "t.json", ENV), plan, size, threads=2, timer=timer)
    assert timer.calls == 0  # layers from the cache, the reference from the bench run
    fake_ref = profile(ref, tuple(size)).macs / 1e6 + 0.25
    assert shifted["predicted_ms"] == pytest.approx(truth + 100.0 - fake_ref)


def test_bench_latency_predict_runs_end_to_end_on_this_machine(tmp_path: Path, capsys) -> None:
    """The real path, tiny: onnxruntime times a zoo plan, its reference and its layers at 32 px; the table is
    written for this machine and a second run reuses every layer. No timed assertion."""
    cache = tmp_path / "t.json"
    args = ["bench", "latency", "stresnet18_32x", "--input-size", "32", "--iters", "3", "--predict",
            "--latency-cache", str(cache), "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    rows = first["prediction"]
    assert set(rows) == {"resnet18", "stresnet18_32x"} and all(r["predicted_ms"] > 0 for r in rows.values())
    assert any(name.startswith("reference 1") for name in first["models"])
    table = json.loads(cache.read_text())
    assert table["format"] == "stresnet-latency/3" and table["layers"]
    assert all("overhead_ms" in e for e in table["layers"].values())
    layers = dict(table["layers"])
    assert main(args) == 0
    capsys.readouterr()
    assert json.loads(cache.read_text())["layers"] == layers  # every layer came from the cache


def test_the_timed_input_sits_at_one_fixed_unaligned_place() -> None:
    """Where the input lands changed a layer's onnxruntime latency 3.6x here (cache aliasing on a 256 KiB
    boundary); every bench run places it at the same offset from a 64 KiB boundary, whatever came before."""
    import numpy as np

    from stresnet.deploy.latency import INPUT_OFFSET, _placed

    for n in (7, 3 * 224 * 224, 1 << 16):
        x = np.random.default_rng(n).standard_normal((1, n)).astype(np.float32)
        y = _placed(x)
        assert np.array_equal(x, y) and y.shape == x.shape and y.dtype == x.dtype
        assert y.ctypes.data % (1 << 16) == INPUT_OFFSET


def _subnormal_onnx(path: Path) -> tuple[Path, torch.Tensor]:
    """A Linear whose outputs on its input are subnormal floats (about 1e-40), exported to ONNX."""
    from stresnet.deploy.export import export_onnx

    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1e-20)
    return export_onnx(lin.eval(), path, (4,), dynamic_batch=False), torch.full((1, 4), 1e-20)


def test_timed_sessions_compute_subnormals_as_zero_and_the_process_gets_ieee_back(tmp_path: Path) -> None:
    """Subnormal arithmetic is tens of times slower on x86 and random weights reach it in some draws only:
    a session timed the way bench_latency times it flushes it; afterwards parity and accuracy sessions get
    IEEE results again (the calling thread's mode is restored)."""
    from stresnet.deploy.export import ort_session
    from stresnet.deploy.latency import subnormals_flushed

    path, x = _subnormal_onnx(tmp_path / "sub.onnx")
    feed = x.numpy()
    with subnormals_flushed():
        flushed = ort_session(path, 2, denormal_as_zero=True)
        assert (flushed.run(None, {flushed.get_inputs()[0].name: feed})[0] == 0).all()
    plain = ort_session(path, 2)
    out = plain.run(None, {plain.get_inputs()[0].name: feed})[0]
    assert 0 < abs(out).min() < torch.finfo(torch.float32).tiny  # a plain session computes the subnormal


def test_bench_latency_times_with_subnormals_flushed(monkeypatch) -> None:
    """Every session bench_latency times is a flushing one (the fix for tables that disagreed between
    processes), the calling thread flushes while it times and is back to IEEE afterwards."""
    import stresnet.deploy.latency as latency

    seen, real = [], latency.ort_session
    flush_during = []

    def spy(path, threads=None, denormal_as_zero=False):
        seen.append(denormal_as_zero)
        flush_during.append(torch.tensor([1e-40]).item() == 0.0)
        return real(path, threads, denormal_as_zero)

    monkeypatch.setattr(latency, "ort_session", spy)
    result = latency.bench_latency({"a": nn.Linear(4, 2), "b": nn.Linear(4, 3)}, (4,), iters=2, warmup=1,
                                   rounds=1, baseline=None, backends=("onnxruntime",))
    assert seen == [True, True] and result["env"]["denormal_as_zero"] is True
    assert all(flush_during) and torch.tensor([1e-40]).item() != 0.0


def test_a_table_fill_times_layers_without_profiling_their_macs(tmp_path: Path, monkeypatch) -> None:
    """A fill reads only times, so ``bench_latency`` skips ``cost.profile`` for it (about a quarter of a fill's
    time went there); a bench asked for speedups still profiles, and refuses a baseline without MACs."""
    import stresnet.cost as cost
    import stresnet.deploy.latency as latency

    def refuse(*args, **kwargs):
        raise AssertionError("a latency-table fill profiled a layer")

    monkeypatch.setattr(cost, "profile", refuse)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    sig = LayerSignature.of(conv, (8, 8, 8))
    specs = [{"type": "full"}, {"type": "tucker2", "ranks": [4, 4]}]
    ms = measure_layers(LatencyTable(tmp_path / "t.json", ENV), {sig.key(s, 1): (sig, s) for s in specs},
                        threads=1, iters=2, rounds=1, warmup=1)
    assert len(ms) == 2 and all(v == v for v in ms.values())  # timed, no NaN
    with pytest.raises(AssertionError, match="profiled"):
        latency.bench_latency({"a": conv}, (8, 8, 8), iters=1, warmup=0, rounds=1, baseline=None,
                              backends=("onnxruntime",))
    with pytest.raises(ValueError, match="with_macs"):
        latency.bench_latency({"a": conv}, (8, 8, 8), baseline="a", with_macs=False)
