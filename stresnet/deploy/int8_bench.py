"""Top-1 of each model's fp32 and int8 ONNX files on a validation folder: the int8 accuracy cost."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .export import export_onnx, onnx_accuracy, onnx_parity
from .quantize import cpu_saturates_u8s8, quantize_int8
from .tables import text_table

__all__ = ["bench_int8", "format_int8"]


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
    from ..data import calibration_images

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
    return "\n".join([title, *text_table(header, rows)])
