"""Deployment: ONNX fp32 / int8 export, onnxruntime parity and accuracy, and the benchmarks, one module each.

Every factorised layer is a composition of stock ``nn.Conv2d`` / ``nn.Linear``
plus reshapes, so a compressed model exports with the stock exporter and
quantises with stock onnxruntime tools:

* :mod:`.export` -- :func:`export_onnx` (fp32 ONNX, TorchScript exporter, eval
  mode, checked), :func:`onnx_ops`, and onnxruntime runs of a file:
  :func:`onnx_parity` (vs PyTorch logits) and :func:`onnx_accuracy` (top-1 /
  top-5 on an ImageFolder);
* :mod:`.quantize` -- :func:`quantize_int8`: static int8 (QDQ, per-channel
  weights) calibrated on a batch of images;
* :mod:`.latency` -- :func:`bench_latency`: batch-1 CPU latency in PyTorch and
  onnxruntime, measured round-robin so machine-load drift hits every model
  alike, with the speedup over a baseline beside its MAC reduction;
* :mod:`.latency_table` -- each layer option timed alone in onnxruntime once per
  shape signature, cached in a JSON table; a network's latency predicted as a
  constant plus a sum over its layers (``stresnet bench latency --predict``), and
  the per-option latency the search's ``latency<=`` budgets need (imported on use);
* :mod:`.int8_bench` -- :func:`bench_int8`: top-1 of the fp32 and the int8 ONNX
  file of each model on a validation folder, side by side;
* :mod:`.mcu` -- :func:`mcu_report`: int8 flash and peak RAM
  (``stresnet.cost.profile``) against flash / RAM budgets;
* :mod:`.decompose_bench` -- :func:`bench_decompose`: our Tucker-2 against
  tensorly's ``partial_tucker``.

``format_latency``, ``format_int8``, ``format_mcu`` and ``format_bench`` render
the results as text tables (:mod:`.tables`). onnx and onnxruntime are the
``export`` extra; they are imported on first use.
"""
from __future__ import annotations

from .decompose_bench import bench_decompose, format_bench
from .export import export_onnx, onnx_accuracy, onnx_ops, onnx_parity
from .int8_bench import bench_int8, format_int8
from .latency import bench_latency, format_latency
from .mcu import format_mcu, mcu_report
from .quantize import cpu_saturates_u8s8, quantize_int8

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
    "bench_decompose",
    "format_bench",
]
