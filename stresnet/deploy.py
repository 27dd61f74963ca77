"""Deployment: ONNX fp32 / int8 export, onnxruntime parity and accuracy, CPU latency, MCU budget report.

Every factorised layer is a composition of stock ``nn.Conv2d`` / ``nn.Linear``
plus reshapes, so a compressed model exports with the stock exporter and
quantises with stock onnxruntime tools:

* :func:`export_onnx` -- fp32 ONNX (TorchScript exporter, eval mode, checked);
* :func:`quantize_int8` -- static int8 (QDQ, per-channel weights) calibrated on
  a batch of images;
* :func:`onnx_parity` / :func:`onnx_accuracy` -- onnxruntime vs PyTorch logits,
  and top-1 / top-5 of an ONNX file on an ImageFolder;
* :func:`bench_latency` -- batch-1 CPU latency in PyTorch and onnxruntime,
  measured round-robin so machine-load drift hits every model alike, with the
  speedup over a baseline beside its MAC reduction;
* :func:`bench_int8` -- top-1 of the fp32 and the int8 ONNX file of each model
  on a validation folder, side by side (the int8 accuracy cost);
* :func:`mcu_report` -- int8 flash and peak RAM (``stresnet.cost.profile``)
  against flash / RAM budgets.

``format_latency``, ``format_int8`` and ``format_mcu`` render the results as text tables.
onnx and onnxruntime are the ``export`` extra; they are imported on first use.
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "export_onnx",
    "quantize_int8",
    "onnx_parity",
    "onnx_accuracy",
    "onnx_ops",
    "cpu_saturates_u8s8",
    "bench_latency",
    "format_latency",
    "bench_int8",
    "format_int8",
    "mcu_report",
    "format_mcu",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the duration; every submodule's training flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session (sequential execution, ``threads`` intra-op threads when given)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _fixed_batch(session) -> int | None:
    """The model's batch size when its first input has a fixed batch dimension, else None."""
    dim = session.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def _run_batched(session, x: Tensor, batch: int | None) -> Tensor:
    """Run ``session`` on ``x``, in chunks of the model's fixed batch size when it has one."""
    name = session.get_inputs()[0].name
    arr = x.detach().to(torch.float32).cpu().contiguous().numpy()
    if batch is None or batch == len(arr):
        return torch.from_numpy(session.run(None, {name: arr})[0])
    if len(arr) % batch:
        raise ValueError(f"the ONNX model has a fixed batch of {batch}; got {len(arr)} inputs")
    outs = [session.run(None, {name: arr[i:i + batch]})[0] for i in range(0, len(arr), batch)]
    return torch.from_numpy(np.concatenate(outs))


def onnx_ops(path: str | Path) -> dict[str, int]:
    """``{op_type: count}`` of the nodes of an ONNX file's main graph."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- export and int8


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int] = (3, 128, 128),
    opset: int = 17,
    dynamic_batch: bool = True,
    dynamo: bool = False,
) -> Path:
    """Export ``model`` (eval mode, fp32) to ``path`` and check it with ``onnx.checker``.

    Input ``"input"`` of shape ``(N, *input_size)``, output ``"logits"``; ``N``
    is symbolic (``"batch"``) when ``dynamic_batch``, else 1. The default
    exporter is TorchScript (``dynamo=False``): it needs nothing beyond torch
    and folds BatchNorm into the convs and ``MaskedConv2d``'s ``weight * mask``
    into a constant. ``dynamo=True`` uses ``torch.export`` and needs the
    ``onnxscript`` package. The model's training flags are restored.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ref = next((p for p in model.parameters()), None)
    x = torch.randn(1, *[int(s) for s in input_size], device=ref.device if ref is not None else "cpu")
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise RuntimeError("export_onnx(dynamo=True) needs the onnxscript package; "
                               "use dynamo=False (TorchScript exporter)") from None
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation / tracer warnings
        kwargs: dict[str, Any] = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                                      dynamo=dynamo)
        if dynamo:
            if dynamic_batch:
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
        else:
            kwargs.update(dynamic_axes=axes, do_constant_folding=True)
        torch.onnx.export(model, (x,), str(path), **kwargs)
    onnx.checker.check_model(str(path))
    return path


def cpu_saturates_u8s8() -> bool:
    """True on an x86 CPU without VNNI, where onnxruntime's 8-bit u8s8 kernels can saturate (use 7-bit weights)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # x86 of unknown features: the safe choice
    return not any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


class _BatchReader:
    """An onnxruntime ``CalibrationDataReader`` over one tensor of images, ``batch`` at a time."""

    def __init__(self, input_name: str, images: Tensor, batch: int, fixed: bool) -> None:
        arr = images.detach().to(torch.float32).cpu().contiguous().numpy()
        if fixed and len(arr) < batch:
            raise ValueError(f"the ONNX model has a fixed batch of {batch}; got only {len(arr)} calibration images")
        self._batches = [arr[i:i + batch] for i in range(0, len(arr), batch)
                         if not fixed or len(arr[i:i + batch]) == batch]  # a fixed batch drops the remainder
        self._name = input_name
        self._it = iter(self._batches)

    def get_next(self) -> dict | None:
        arr = next(self._it, None)
        return None if arr is None else {self._name: arr}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calib_images: Tensor,
    per_channel: bool = True,
    batch_size: int = 32,
    method: str = "minmax",
    preprocess: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """Static int8 quantisation of an fp32 ONNX file (QDQ, int8 activations and weights).

    ``calib_images`` (``(N, C, H, W)``, already normalised like the eval
    transform; 64-256 images is plenty) calibrate the activation ranges,
    ``batch_size`` at a time (the model's own batch size when it is fixed).
    ``method`` is ``minmax``, ``entropy`` or ``percentile``. ``preprocess`` runs
    onnxruntime's ``quant_pre_process`` (shape inference + graph optimisation)
    first; if it fails, the fp32 file is quantised as is, with a warning.

    ``reduce_range`` quantises weights to 7 bits. ``None`` (default) turns it on
    where onnxruntime's x86 u8s8 int8 kernels saturate: an x86 CPU without VNNI
    (AVX2 only). There, full 8-bit weights overflow the 16-bit pair sums of
    ``vpmaddubsw`` and cost several points of top-1 (timm resnet18 on
    Imagenette val at 128 px: 88.5 % fp32 -> 81.0 % with 8-bit, 88.5 % with 7-bit weights); with VNNI, on ARM
    or for a target other than onnxruntime-on-this-CPU, pass ``False``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    if reduce_range is None:
        reduce_range = cpu_saturates_u8s8()
    if calib_images.ndim != 4 or len(calib_images) == 0:
        raise ValueError(f"calib_images must be a non-empty (N, C, H, W) batch, got shape {list(calib_images.shape)}")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"calibration method {method!r}: expected one of {', '.join(methods)}")
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    graph_input = onnx.load(str(fp32_path), load_external_data=False).graph.input[0]
    dim0 = graph_input.type.tensor_type.shape.dim[0]
    fixed = dim0.HasField("dim_value") and dim0.dim_value > 0
    batch = dim0.dim_value if fixed else batch_size
    with tempfile.TemporaryDirectory(prefix="stresnet-q-") as tmp:
        source: Path = fp32_path
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            try:
                quant_pre_process(str(fp32_path), str(Path(tmp) / "pre.onnx"))
                source = Path(tmp) / "pre.onnx"
            except Exception as e:  # noqa: BLE001 - optional step; quantise the raw export instead
                warnings.warn(f"quant_pre_process failed on {fp32_path} ({type(e).__name__}: {e}); "
                              "quantising without it", stacklevel=2)
        reader = _BatchReader(graph_input.name, calib_images, batch, fixed)
        quantize_static(
            str(source), str(int8_path), reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    return int8_path


# --------------------------------------------------------------------------- checks


def onnx_parity(model: nn.Module, onnx_path: str | Path, x: Tensor) -> float:
    """Max absolute difference between PyTorch's and onnxruntime's (CPU) outputs on ``x``."""
    with _eval_mode(model), torch.inference_mode():
        ref = model(x).float().cpu()
    session = _session(onnx_path)
    out = _run_batched(session, x, _fixed_batch(session))
    if out.shape != ref.shape:
        raise ValueError(f"ONNX output shape {list(out.shape)} != PyTorch output shape {list(ref.shape)}")
    return float((out - ref).abs().max())


def onnx_accuracy(
    onnx_path: str | Path,
    data_dir: str | Path,
    size: int,
    batch_size: int = 64,
    threads: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 (fractions) and image count of an ONNX model on an ImageFolder (eval transform at ``size``).

    ``limit`` stops after that many batches (quick checks).
    """
    from tqdm import tqdm

    from .data import eval_loader

    session = _session(onnx_path, threads)
    fixed = _fixed_batch(session)
    loader = eval_loader(data_dir, size, batch_size if fixed is None else fixed * max(1, batch_size // fixed))
    correct1 = correct5 = n = 0
    for i, (x, y) in enumerate(tqdm(loader, desc="onnx eval", disable=not progress, leave=False)):
        if limit is not None and i >= limit:
            break
        if fixed is not None and len(x) % fixed:  # last partial batch of a fixed-batch model: pad
            pad = fixed - len(x) % fixed
            logits = _run_batched(session, torch.cat([x, x[:1].expand(pad, *x.shape[1:])]), fixed)[: len(x)]
        else:
            logits = _run_batched(session, x, fixed)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(1).sum())
        n += len(y)
    return {"top1": correct1 / max(n, 1), "top5": correct5 / max(n, 1), "images": n}


# --------------------------------------------------------------------------- latency


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of a non-empty sequence."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


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


def bench_latency(
    models: Mapping[str, nn.Module],
    input_size: Sequence[int] = (3, 128, 128),
    threads: int = 2,
    warmup: int = 10,
    iters: int = 50,
    baseline: str | None = "resnet18",
    rounds: int = 5,
    backends: Iterable[str] = ("torch", "onnxruntime"),
) -> dict[str, Any]:
    """Batch-1 CPU latency of every model in PyTorch and onnxruntime, with speedups over ``baseline``.

    PyTorch runs under ``torch.inference_mode()`` with ``torch.set_num_threads(threads)``
    (restored afterwards); onnxruntime runs a fresh fp32 export (temporary
    directory) with ``intra_op_num_threads=threads``. One backend is timed at a
    time, and its ``iters`` timed runs per model are spread over ``rounds``
    round-robin rounds (every model once per round), so drifts in machine load
    affect all models alike. Every (round, model) block starts with ``warmup``
    untimed runs, and an onnxruntime session lives for one block only: each
    session owns a thread pool whose workers spin after a run, and with several
    sessions alive the idle ones' spinning steals the cores of the one being
    timed (seen here: 2-thread medians of small models inflated up to 2x).

    For each model: ``macs`` (``cost.profile`` at ``input_size``), ``mac_ratio``
    = baseline MACs / model MACs, and per backend ``median_ms``, ``p90_ms``,
    ``mean_ms``, ``min_ms``, ``speedup`` = baseline median / model median (same
    run) and ``efficiency`` = speedup / mac_ratio (1.0: latency falls as fast as
    MACs). ``baseline=None`` skips the ratios.
    """
    from .cost import profile

    backends = tuple(backends)
    unknown = [b for b in backends if b not in ("torch", "onnxruntime")]
    if unknown or not backends:
        raise ValueError(f"backends {list(backends)}: expected some of 'torch', 'onnxruntime'")
    if not models:
        raise ValueError("bench_latency: no models given")
    if baseline is not None and baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not among the models ({', '.join(models)})")
    if iters < 1 or warmup < 0 or rounds < 1:
        raise ValueError(f"iters={iters}, warmup={warmup}, rounds={rounds}: need iters >= 1, warmup >= 0, rounds >= 1")
    input_size = tuple(int(s) for s in input_size)
    rounds = min(rounds, iters)
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    x_np = x.numpy()
    old_threads = torch.get_num_threads()
    flags = [(m, m.training) for model in models.values() for m in model.modules()]
    busy_before, own_before, wall_before = _machine_busy_seconds(), time.process_time(), time.perf_counter()
    times: dict[tuple[str, str], list[float]] = {(n, b): [] for n in models for b in backends}
    macs = {name: profile(model, input_size).macs for name, model in models.items()}
    try:
        torch.set_num_threads(int(threads))
        for model in models.values():
            model.eval()
        with tempfile.TemporaryDirectory(prefix="stresnet-bench-") as tmp:
            onnx_files = ({name: export_onnx(model, Path(tmp) / f"m{i}.onnx", input_size, dynamic_batch=False)
                           for i, (name, model) in enumerate(models.items())} if "onnxruntime" in backends else {})
            with torch.inference_mode():
                for backend in backends:
                    for per_round in _split(iters, rounds):
                        for name, model in models.items():
                            if backend == "torch":
                                run: Callable[[], Any] = (lambda m=model: m(x))
                            else:
                                sess = _session(onnx_files[name], threads)
                                feed = {sess.get_inputs()[0].name: x_np}
                                run = (lambda s=sess, f=feed: s.run(None, f))
                            for _ in range(max(warmup, 1)):
                                run()
                            for _ in range(per_round):
                                t0 = time.perf_counter()
                                run()
                                times[name, backend].append((time.perf_counter() - t0) * 1e3)
                            del run
                            sess = None  # release the session (and its spinning thread pool) before the next one
    finally:
        torch.set_num_threads(old_threads)
        for m, flag in flags:
            m.training = flag
    busy_after = _machine_busy_seconds()
    other_cores = (None if busy_before is None or busy_after is None else
                   max(0.0, (busy_after - busy_before) - (time.process_time() - own_before))
                   / (time.perf_counter() - wall_before))

    out_models: dict[str, Any] = {}
    for name in models:
        row: dict[str, Any] = {"macs": macs[name]}
        if baseline is not None:
            row["mac_ratio"] = macs[baseline] / macs[name] if macs[name] else float("inf")
        for backend in backends:
            t = times[name, backend]
            row[backend] = {"median_ms": statistics.median(t), "p90_ms": _percentile(t, 90),
                            "mean_ms": statistics.fmean(t), "min_ms": min(t), "samples": len(t)}
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
            # cores' worth of CPU time that other processes used while the bench ran
            "other_processes_cores": other_cores,
        },
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


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
             + (f"; speedup vs {result['baseline']} in the same run" if has_base else "")
             + (f"; other processes used {other:.2f} cores meanwhile" if other is not None else ""))
    lines = [title, *_table(header, rows)]
    if other is not None and other > 0.25:
        lines.append(f"warning: other processes used {other:.2f} cores during the bench: they competed for the "
                     "cores; timings (PyTorch's OpenMP pool especially) are unreliable")
    return "\n".join(lines)


# --------------------------------------------------------------------------- int8 accuracy


def bench_int8(
    models: Mapping[str, nn.Module],
    val_dir: str | Path,
    calib_dir: str | Path,
    size: int = 128,
    calib_images: int = 128,
    threads: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """For each model: fp32 ONNX parity with PyTorch, then top-1 of fp32 and int8 ONNX on ``val_dir``.

    The int8 file is :func:`quantize_int8` (QDQ, per-channel, static) calibrated
    on ``calib_images`` images drawn from ``calib_dir`` (a training folder: never
    the images it is scored on). Each row has ``parity_max_abs`` (fp32 ONNX vs
    PyTorch logits on two validation images), ``fp32`` / ``int8`` accuracies
    (:func:`onnx_accuracy`), ``drop_points`` = 100 * (fp32 - int8 top-1) and the
    two file sizes. ``limit`` evaluates only that many batches (quick checks).
    """
    from .data import calibration_images

    if not models:
        raise ValueError("bench_int8: no models given")
    calib, _ = calibration_images(calib_dir, calib_images, size)
    probe, _ = calibration_images(val_dir, 2, size)
    reduce_range = cpu_saturates_u8s8()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="stresnet-int8-") as tmp:
        for i, (name, model) in enumerate(models.items()):
            fp32 = export_onnx(model, Path(tmp) / f"m{i}.onnx", (probe.shape[1], size, size))
            int8 = quantize_int8(fp32, Path(tmp) / f"m{i}_int8.onnx", calib, reduce_range=reduce_range)
            acc = {k: onnx_accuracy(p, val_dir, size, threads=threads, limit=limit, progress=progress)
                   for k, p in (("fp32", fp32), ("int8", int8))}
            rows[name] = {
                "parity_max_abs": onnx_parity(model, fp32, probe),
                **acc,
                "drop_points": 100 * (acc["fp32"]["top1"] - acc["int8"]["top1"]),
                "fp32_bytes": fp32.stat().st_size,
                "int8_bytes": int8.stat().st_size,
            }
    return {"input_size": size, "calib_images": int(len(calib)), "calib_dir": str(calib_dir),
            "val_dir": str(val_dir), "reduce_range": reduce_range, "models": rows}


def format_int8(result: Mapping[str, Any]) -> str:
    """A text table: per model fp32 / int8 top-1, the drop in points, parity and the two ONNX file sizes."""
    header = ["model", "fp32 top-1", "int8 top-1", "drop (pt)", "fp32 parity", "fp32 MB", "int8 MB", "images"]
    rows = [[name, f"{100 * r['fp32']['top1']:.2f} %", f"{100 * r['int8']['top1']:.2f} %",
             f"{r['drop_points']:+.2f}", f"{r['parity_max_abs']:.1e}", f"{r['fp32_bytes'] / 1e6:.2f}",
             f"{r['int8_bytes'] / 1e6:.2f}", str(r["int8"]["images"])]
            for name, r in result["models"].items()]
    title = (f"onnxruntime fp32 vs int8 (QDQ, per-channel, {result['calib_images']} calibration images"
             f"{', 7-bit weights' if result['reduce_range'] else ''}) at {result['input_size']} px")
    return "\n".join([title, *_table(header, rows)])


# --------------------------------------------------------------------------- MCU budgets


def mcu_report(
    models: Mapping[str, nn.Module],
    resolutions: Sequence[int] = (224, 128),
    flash_budgets_kib: Sequence[float] = (1024, 2048),
    ram_budgets_kib: Sequence[float] = (512, 1024),
    in_chans: int = 3,
) -> dict[str, Any]:
    """int8 flash and peak activation RAM of each model at each resolution (``cost.profile``), against budgets.

    One row per (model, resolution) with ``params``, ``macs``, ``flash_bytes``,
    ``peak_ram_bytes`` (``cost.profile``'s numbers), ``flash_kib`` /
    ``peak_ram_kib``, ``flash_fits`` / ``ram_fits`` = ``{budget KiB: bytes <=
    budget * 1024}`` and ``fits`` = ``{"<flash>/<ram>": both fit}`` for every
    pair of budgets.
    """
    from .cost import profile

    rows = []
    for name, model in models.items():
        for res in resolutions:
            p = profile(model, (in_chans, int(res), int(res)))
            flash_fits = {b: p.flash_bytes <= b * 1024 for b in flash_budgets_kib}
            ram_fits = {b: p.peak_ram_bytes <= b * 1024 for b in ram_budgets_kib}
            rows.append({
                "model": name,
                "resolution": int(res),
                "params": p.params,
                "macs": p.macs,
                "flash_bytes": p.flash_bytes,
                "peak_ram_bytes": p.peak_ram_bytes,
                "flash_kib": p.flash_bytes / 1024,
                "peak_ram_kib": p.peak_ram_bytes / 1024,
                "peak_ram_at": p.peak_ram_at,
                "flash_fits": flash_fits,
                "ram_fits": ram_fits,
                "fits": {f"{_kib(f)}/{_kib(r)}": flash_fits[f] and ram_fits[r]
                         for f in flash_budgets_kib for r in ram_budgets_kib},
            })
    return {
        "resolutions": [int(r) for r in resolutions],
        "flash_budgets_kib": list(flash_budgets_kib),
        "ram_budgets_kib": list(ram_budgets_kib),
        "rows": rows,
    }


def _kib(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() else f"{v:g}"


def format_mcu(result: Mapping[str, Any]) -> str:
    """A text table: per (model, resolution) int8 flash KiB, peak RAM KiB and yes/no per flash and RAM budget."""
    fb, rb = result["flash_budgets_kib"], result["ram_budgets_kib"]
    header = (["model", "res", "params (M)", "GMACs", "flash KiB", "peak RAM KiB"]
              + [f"flash<={_kib(b)}K" for b in fb] + [f"RAM<={_kib(b)}K" for b in rb])
    yes = {True: "yes", False: "no"}
    rows = [
        [r["model"], str(r["resolution"]), f"{r['params'] / 1e6:.3f}", f"{r['macs'] / 1e9:.3f}",
         f"{r['flash_kib']:,.1f}", f"{r['peak_ram_kib']:,.1f}"]
        + [yes[r["flash_fits"][b]] for b in fb] + [yes[r["ram_fits"][b]] for b in rb]
        for r in result["rows"]
    ]
    note = ("int8 deployment budget (stresnet.cost rules: folded BN, int8 weights + int32 bias/scale per channel; "
            "peak = live int8 activations at batch 1)")
    return "\n".join([note, *_table(header, rows)])
