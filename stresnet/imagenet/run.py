"""Measure an ImageNet base on the 1000-way evaluation split: the record a results JSON holds (one row per
centre-crop fraction, the data config used, provenance)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..resolve import model_from_name
from ..utils.provenance import data_fingerprint, provenance, utc_now
from .evaluate import data_config, imagenet_accuracy
from .split import imagenet_val_samples
from .weights import checkpoint_cfg, checkpoint_metadata

__all__ = ["base_model", "measure_base"]


def base_model(arch: str, checkpoint: str | Path) -> nn.Module:
    """``arch`` with the safetensors ``checkpoint`` loaded (shapes checked), its timm ``pretrained_cfg`` updated
    with the overrides stored in the checkpoint (:func:`~stresnet.imagenet.weights.checkpoint_cfg`)."""
    model = model_from_name(arch, checkpoint=checkpoint)
    model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **checkpoint_cfg(checkpoint)}
    return model


def measure_base(arch: str, checkpoint: str | Path, folder: str | Path, crop_pcts: Sequence[float | None] = (None,),
                 limit: int | None = None, batch_size: int = 50, progress: bool = False) -> dict[str, Any]:
    """1000-way top-1 / top-5 of ``arch`` + ``checkpoint`` on the ``ILSVRC2012_val_*`` images of the Imagenette
    root ``folder`` (the first ``limit`` of them when given), once per crop fraction (None: the cfg's own)."""
    started, t0 = utc_now(), time.perf_counter()
    model = base_model(arch, checkpoint)
    samples = imagenet_val_samples(folder)
    if limit is not None:
        samples = samples[:limit]
    rows = []
    for crop in crop_pcts:
        config = data_config(model, {"crop_pct": crop})
        rows.append({**config, **imagenet_accuracy(model, samples, config, batch_size=batch_size, progress=progress)})
    return {"model": arch, "checkpoint": str(checkpoint), "checkpoint_metadata": checkpoint_metadata(checkpoint),
            "split": {"folder": str(folder), "images": len(samples), "what": "ILSVRC2012_val_* files of train/ and "
                      "val/, labelled by their folder's synset (ImageNet-1k index from timm.data.ImageNetInfo)"},
            "results": rows,
            "provenance": provenance(started, time.perf_counter() - t0, checkpoint, [data_fingerprint(folder)])}
