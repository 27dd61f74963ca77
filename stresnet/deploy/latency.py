"""Batch-1 CPU latency of models in PyTorch and onnxruntime, with speedups over a baseline in the same run."""
from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..utils.modes import eval_mode
from .export import export_onnx, ort_session
from .tables import text_table

__all__ = ["QUIET", "WARMUP_MS", "bench_latency", "format_latency", "isolated", "subnormals_flushed"]


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _machine_busy_seconds() -> float | None:
    """CPU-seconds spent by all processes on this machine so far (Linux ``/proc/stat``), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in fields]
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


QUIET = "p10_ms"
"""The statistic latency tables, predictions and latency budgets use: the 10th percentile of a model's samples.

Why not the median: this 2-vCPU VM loses most of its second core for spells of a fraction of a second to
minutes (not visible as steal time), and in them a 2-thread small network runs at about its 1-thread speed
(pico at 224 px: 4.2-5.7 instead of 2.4 ms, ResNet-18 +1-2 ms). Measured here over six fresh runs of 100
samples in 10 rounds, the p10 of pico ranged 2.34-2.51 ms and its median 2.42-2.98 ms: short spells move the
p10 less. A spell longer than a whole run moves it as much as the median (seen: pico p10 4.1-4.3 ms in such
runs). Speedups stay median-based.
"""

WARMUP_MS = 10.0
"""The least time (ms) every block's untimed runs last, whatever ``warmup`` counts.

Why time and not a count: on this VM the first 2-thread runs after the cores sat idle for a moment (a session
being created, the Python between blocks) are slow, and a count sized for a network is a few milliseconds
for a small layer. Measured here: one Tucker-2 layer (64 channels, ranks 16, 56x56) timed 6 times after 0.5 s
idle, five times over: with 5 warm-up runs and no time floor its p10 was 0.265, 0.467, 0.466, 0.308, 0.470 ms;
with a floor of 5, 10 or 25 ms, 0.262-0.269 ms every time. A latency table filled with 5 warm-up runs had that
layer at 0.45 ms in two fresh runs, and over-predicted the zoo's 32x model by 42-50 %."""

INPUT_OFFSET = 1024 + 3 * 64  # bytes past a 64 KiB boundary where the timed input sits (see _placed)


def _placed(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` at a fixed offset from a 64 KiB boundary.

    Why: where the input lands in memory changed a layer's onnxruntime latency by up to 3.6x on this machine
    (ResNet-18's stem as Tucker-2 ranks (8, 3) at 224 px: 0.61 ms, or 2.19 ms when the process's earlier
    allocations happened to leave the input on a 256 KiB boundary, which aliases in the cache with the
    layer's other page-aligned buffers). Which case a run got depended on what the process had allocated
    before, so tables filled in different processes disagreed. A fixed, deliberately unaligned placement
    makes every run time the same case, the one an arbitrary caller's input almost always gets.
    """
    buf = np.empty(x.nbytes + (1 << 16) + INPUT_OFFSET, dtype=np.uint8)
    start = (-buf.ctypes.data) % (1 << 16) + INPUT_OFFSET
    out = buf[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Subnormal floats flushed to zero on the calling thread for the block, IEEE behaviour again after it.

    Why both this and onnxruntime's ``session.set_denormal_as_zero``: the session option reaches the session's
    worker threads, but the calling thread (which computes its share of every 2-thread op) takes the option of
    the first session the process ever created, whatever later sessions ask for.
    """
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:  # the default is off; leave the process as parity and accuracy checks expect it
            torch.set_flush_denormal(False)


def bench_latency(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int] = (3, 128, 128),
    threads: int = 2,
    warmup: int = 10,
    iters: int = 50,
    baseline: str | None = "resnet18",
    rounds: int = 5,
    backends: Iterable[str] = ("torch", "onnxruntime"),
    warmup_ms: float = WARMUP_MS,
    with_macs: bool = True,
) -> dict[str, Any]:
    """Batch-1 CPU latency of every model in PyTorch and onnxruntime, with speedups over ``baseline``.

    PyTorch runs under ``torch.inference_mode()`` with ``torch.set_num_threads(threads)``
    (restored afterwards); onnxruntime runs a fresh fp32 export (temporary
    directory) with ``intra_op_num_threads=threads``. One backend is timed at a
    time, and its ``iters`` timed runs per model are spread over ``rounds``
    round-robin rounds (every model once per round), so drifts in machine load
    affect all models alike. Both backends flush subnormal floats to zero (onnxruntime's
    ``session.set_denormal_as_zero``, ``torch.set_flush_denormal``): arithmetic on subnormals is tens of times
    slower on x86, and random-weight networks (every table entry and ``bench latency`` model) underflow into them
    in some draws and not in others. Measured here: the same random-initialised pico at 224 px took 4.2 ms in
    about one process in five and 2.4 ms in the rest; with the flush, ten processes in a row measured 2.3-2.5
    ms. Every (round, model) block starts with ``warmup``
    untimed runs, continued until ``warmup_ms`` have passed (:data:`WARMUP_MS`), and an onnxruntime session lives
    for one block only: each
    session owns a thread pool whose workers spin after a run, and with several
    sessions alive the idle ones' spinning steals the cores of the one being
    timed (seen here: 2-thread medians of small models inflated up to 2x).

    For each model: ``macs`` (``cost.profile`` at ``input_size``; ``with_macs=False`` leaves it out, as a
    latency-table fill does: profiling every layer it times cost it about a quarter of its time), ``mac_ratio``
    = baseline MACs / model MACs, and per backend ``median_ms``, ``p90_ms``,
    ``mean_ms``, ``min_ms``, ``p10_ms`` (:data:`QUIET`), ``speedup`` = baseline median / model median (same
    run) and ``efficiency`` = speedup / mac_ratio (1.0: latency falls as fast as
    MACs). ``baseline=None`` skips the ratios.
    """
    from ..cost import profile

    backends = tuple(backends)
    unknown = [b for b in backends if b not in ("torch", "onnxruntime")]
    if unknown or not backends:
        raise ValueError(f"backends {list(backends)}: expected some of 'torch', 'onnxruntime'")
    if not models:
        raise ValueError("bench_latency: no models given")
    if baseline is not None and baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models ({', '.join(models)})")
    if baseline is not None and not with_macs:
        raise ValueError(f"baseline {baseline!r}: the speedups are read against MACs, so with_macs must be True")
    if iters < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"iters={iters}, warmup={warmup}, rounds={rounds}: need iters >= 1, warmup >= 0, rounds >= 1")
    input_size = tuple(int(s) for s in input_size)
    rounds = min(rounds, iters)
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    x_np = _placed(x.numpy())
    old_threads = torch.get_num_threads()
    busy_before, own_before, wall_before = _machine_busy_seconds(), time.process_time(), time.perf_counter()
    times: dict[tuple[str, str], list[float]] = {(n, b): [] for n in models for b in backends}
    macs = {name: profile(model, input_size).macs for name, model in models.items()} if with_macs else {}
    try:
        torch.set_num_threads(int(threads))
        with eval_mode(*models.values()), subnormals_flushed(), \
                tempfile.TemporaryDirectory(prefix="stresnet-bench-") as tmp:
            onnx_files = ({name: export_onnx(model, Path(tmp) / f"m{i}.onnx", input_size, dynamic_batch=False)
                           for i, (name, model) in enumerate(models.items())} if "onnxruntime" in backends else {})
            with torch.inference_mode():
                for backend in backends:
                    for per_round in _split(iters, rounds):
                        for name, model in models.items():
                            if backend == "torch":
                                run: Callable[[], Any] = (lambda m=model: m(x))
                            else:
                                sess = ort_session(onnx_files[name], threads, denormal_as_zero=True)
                                feed = {sess.get_inputs()[0].name: x_np}
                                run = (lambda s=sess, f=feed: s.run(None, f))
                            _warm_up(run, max(warmup, 1), warmup_ms)
                            for _ in range(per_round):
                                t0 = time.perf_counter()
                                run()
                                times[name, backend].append((time.perf_counter() - t0) * 1e3)
                            del run
                            sess = None  # release the session (and its spinning thread pool) before the next one
    finally:
        torch.set_num_threads(old_threads)
    busy_after = _machine_busy_seconds()
    other_cores = (None if busy_before is None or busy_after is None else
                   max(0.0, (busy_after - busy_before) - (time.process_time() - own_before))
                   / (time.perf_counter() - wall_before))

    out_models: dict[str, Any] = {}
    for name in models:
        row: dict[str, Any] = {"macs": macs[name]} if with_macs else {}
        if baseline is not None:
            row["mac_ratio"] = macs[baseline] / macs[name] if macs[name] else float("inf")
        for backend in backends:
            t = times[name, backend]
            row[backend] = {"median_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90)),
                            "p10_ms": float(np.percentile(t, 10)), "mean_ms": statistics.fmean(t), "min_ms": min(t),
                            "samples": len(t)}
        out_models[name] = row
    if baseline is not None:
        for name, row in out_models.items():
            for backend in backends:
                speedup = out_models[baseline][backend]["median_ms"] / row[backend]["median_ms"]
                row[backend]["speedup"] = speedup
                row[backend]["efficiency"] = speedup / row["mac_ratio"] if row["mac_ratio"] else float("nan")
    import onnxruntime

    return {
        "input_size": list(input_size),
        "batch": 1,
        "threads": int(threads),
        "warmup": int(warmup),
        "warmup_ms": float(warmup_ms),
        "iters": int(iters),
        "rounds": int(rounds),
        "baseline": baseline,
        "backends": list(backends),
        "models": out_models,
        "env": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "denormal_as_zero": True,
            # cores' worth of CPU time that other processes used while the bench ran
            "other_processes_cores": other_cores,
        },
    }




def _warm_up(run: Callable[[], Any], count: int, least_ms: float,
             clock: Callable[[], float] = time.perf_counter) -> int:
    """``count`` untimed runs, and more until ``least_ms`` have passed (see :data:`WARMUP_MS`); how many ran."""
    start, done = clock(), 0
    while done < count or (clock() - start) * 1e3 < least_ms:
        run()
        done += 1
    return done


def format_latency(result: Mapping[str, Any]) -> str:
    """A text table: per model GMACs, MAC ratio, and per backend median / p90 ms, speedup, speedup / MAC ratio."""
    backends = result["backends"]
    has_base = result.get("baseline") is not None
    short = {"torch": "torch", "onnxruntime": "ort"}
    header = ["model", "GMACs"] + (["MAC ratio"] if has_base else [])
    for b in backends:
        header += [f"{short[b]} median ms", f"{short[b]} p90 ms"]
        if has_base:
            header += [f"{short[b]} speedup", f"{short[b]} speedup/MACr"]
    rows = []
    for name, row in result["models"].items():
        cells = [name, f"{row['macs'] / 1e9:.3f}"] + ([f"{row['mac_ratio']:.2f}x"] if has_base else [])
        for b in backends:
            r = row[b]
            cells += [f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}"]
            if has_base:
                cells += [f"{r['speedup']:.2f}x", f"{r['efficiency']:.2f}"]
        rows.append(cells)
    c, h, w = result["input_size"]
    other = result.get("env", {}).get("other_processes_cores")
    title = (f"batch-1 CPU latency at {c}x{h}x{w}, {result['threads']} thread(s), {result['iters']} iters "
             f"in {result['rounds']} round-robin rounds after {result['warmup']} warm-up"
             + (f" (at least {result['warmup_ms']:g} ms)" if result.get("warmup_ms") else "")
             + (f"; speedup vs {result['baseline']} in the same run" if has_base else "")
             + (f"; other processes used {other:.2f} cores meanwhile" if other is not None else ""))
    lines = [title, *text_table(header, rows)]
    if other is not None and other > 0.25:
        lines.append(f"warning: other processes used {other:.2f} cores during the bench: they competed for the "
                     "cores; timings (PyTorch's OpenMP pool especially) are unreliable")
    return "\n".join(lines)


@contextmanager
def isolated() -> Iterator[Callable[..., dict]]:
    """:func:`bench_latency`, run in one fresh spawned process for as long as the block lasts.

    Why: the same onnxruntime model timed inside a process that had just trained measured 25 % slower than in
    a fresh process a minute later on an idle machine (the 8x latency-bounded model: 6.77 vs 5.31 ms,
    ResNet-18 17.87 vs 17.06 ms; measured before the input placement was fixed, see :func:`_placed`, which
    may have been the cause). The recipe ``latency`` stage times in a clean process anyway; the models are
    pickled to it, so this costs one interpreter start per block. The caller's main module must be
    import-safe (``if __name__ == "__main__":``), as for any spawned process.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda *args, **kwargs: pool.submit(bench_latency, *args, **kwargs).result()

