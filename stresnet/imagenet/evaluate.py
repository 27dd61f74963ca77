"""1000-way top-1 / top-5 of a model on a list of labelled image files, with the transform of the model's timm
pretrained cfg (``timm.data.resolve_data_config`` + ``create_transform``): each checkpoint is scored with the
pre-processing it was trained with, not the recipes' Imagenette transform."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..utils.metrics import TopK
from ..utils.modes import eval_mode

__all__ = ["LabelledFiles", "data_config", "imagenet_accuracy", "image_files", "agreement"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class LabelledFiles(Dataset):
    """``(path, label)`` pairs as a dataset of ``(transform(image), label)``; images open as RGB (torchvision's
    ``default_loader``)."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        image = default_loader(path)
        return (self.transform(image) if self.transform is not None else image), label


def data_config(model: nn.Module, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """timm's eval data config of ``model`` (its ``pretrained_cfg``), with ``overrides`` (e.g. ``crop_pct``) on top."""
    from timm.data import resolve_data_config

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return resolve_data_config(pretrained_cfg=cfg)


@torch.no_grad()
def imagenet_accuracy(model: nn.Module, samples: Sequence[tuple[str, int]], config: Mapping[str, Any],
                      batch_size: int = 50, workers: int = 1, progress: bool = False) -> dict[str, float]:
    """``{"top1", "top5", "images", "predicted_classes"}`` of ``model`` on ``samples`` (paths with 1000-way
    labels), each image put through ``timm.data.create_transform(**config)`` (a :func:`data_config`).

    ``predicted_classes`` (distinct top-1 classes) exposes a collapsed model: one that answers the same class for
    every image still scores that class's share of a 10-class split (e.g. 45 / 435 = 10.3 %)."""
    loader = DataLoader(LabelledFiles(samples, create_transform_of(config)), batch_size=batch_size,
                        num_workers=workers)
    acc = TopK()
    predicted: set[int] = set()
    device = next(model.parameters()).device
    with eval_mode(model):
        for x, y in tqdm(loader, desc="eval", disable=not progress, leave=False):
            logits = model(x.to(device))
            acc.update(logits, y.to(device))
            predicted.update(logits.argmax(1).tolist())
    return {**acc.result(), "predicted_classes": len(predicted)}


def image_files(folder: str | Path) -> list[str]:
    """Every image under ``folder`` (recursively, sorted: a fixed order), for unlabelled evaluation sets."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"images {folder}: no such folder")
    files = sorted(str(f) for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


@torch.no_grad()
def agreement(model: nn.Module, reference: nn.Module, files: Sequence[str], config: Mapping[str, Any],
              batch_size: int = 50, workers: int = 1) -> dict[str, float]:
    """How closely ``model`` follows ``reference`` on unlabelled images: ``top1_agreement`` (share of images where
    both give the same top-1 class), ``kl`` (mean KL(reference || model) of the softmax outputs, nats) and
    ``images``. Why: a model distilled on a few classes can score *above* its teacher on images of those classes
    (it learns their prior); on images of other content only fidelity to the teacher shows what it kept."""
    loader = DataLoader(LabelledFiles([(f, 0) for f in files], create_transform_of(config)), batch_size=batch_size,
                        num_workers=workers)
    same, kl, n = 0, 0.0, 0
    device = next(model.parameters()).device
    with eval_mode(model, reference):
        for x, _ in loader:
            x = x.to(device)
            log_p, log_q = reference(x).log_softmax(1), model(x).log_softmax(1)
            same += int((log_p.argmax(1) == log_q.argmax(1)).sum())
            kl += float((log_p.exp() * (log_p - log_q)).sum())
            n += len(x)
    return {"top1_agreement": same / n, "kl": kl / n, "images": n}


def create_transform_of(config: Mapping[str, Any]) -> Callable:
    """timm's eval transform of a data config."""
    from timm.data import create_transform

    return create_transform(**config)
