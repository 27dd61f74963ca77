"""ONNX export of a model and onnxruntime runs of the file: parity with PyTorch, accuracy on an ImageFolder."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..utils.metrics import TopK
from ..utils.modes import eval_mode

__all__ = ["export_onnx", "onnx_ops", "onnx_parity", "onnx_accuracy", "ort_session", "INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


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
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
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


def onnx_ops(path: str | Path) -> dict[str, int]:
    """``{op_type: count}`` of the nodes of an ONNX file's main graph."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def ort_session(path: str | Path, threads: int | None = None, denormal_as_zero: bool = False):
    """An onnxruntime CPU session (sequential execution, ``threads`` intra-op threads when given).

    ``denormal_as_zero`` flushes subnormal floats to zero (the CPU's FTZ/DAZ modes), as latency benchmarks want:
    see :func:`stresnet.deploy.latency.bench_latency`. Outputs change by less than the smallest normal float.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if denormal_as_zero:
        opts.add_session_config_entry("session.set_denormal_as_zero", "1")
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


def onnx_parity(model: nn.Module, onnx_path: str | Path, x: Tensor) -> float:
    """Max absolute difference between PyTorch's and onnxruntime's (CPU) outputs on ``x``."""
    with eval_mode(model), torch.inference_mode():
        ref = model(x).float().cpu()
    session = ort_session(onnx_path)
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

    from ..data import eval_loader

    session = ort_session(onnx_path, threads)
    fixed = _fixed_batch(session)
    loader = eval_loader(data_dir, size, batch_size if fixed is None else fixed * max(1, batch_size // fixed))
    acc = TopK()
    for i, (x, y) in enumerate(tqdm(loader, desc="onnx eval", disable=not progress, leave=False)):
        if limit is not None and i >= limit:
            break
        if fixed is not None and len(x) % fixed:  # last partial batch of a fixed-batch model: pad
            pad = fixed - len(x) % fixed
            logits = _run_batched(session, torch.cat([x, x[:1].expand(pad, *x.shape[1:])]), fixed)[: len(x)]
        else:
            logits = _run_batched(session, x, fixed)
        acc.update(logits, y)
    return acc.result()
