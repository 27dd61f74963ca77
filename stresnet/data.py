"""Image-folder data for recipes, search calibration and evaluation (Imagenette, ImageNet layouts)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_transform(size: int, crop_pct: float = 0.875):
    """Resize to ``size / crop_pct`` then centre-crop ``size`` (timm's eval pipeline; 128 -> 146 -> 128)."""
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(int(round(size / crop_pct))),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def image_folder(root: str | Path, size: int) -> Dataset:
    """An ImageFolder (class index = sorted folder names) with the eval transform."""
    from torchvision import datasets

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root}: not found")
    return datasets.ImageFolder(str(root), eval_transform(size))


def eval_loader(root: str | Path, size: int, batch_size: int = 128, workers: int = 1) -> DataLoader:
    return DataLoader(image_folder(root, size), batch_size=batch_size, num_workers=workers)


SELECTION_PER_CLASS = 100  # Imagenette: 10 classes -> 1000 selection images out of 9469 in train/
ILSVRC_VAL_PREFIX = "ILSVRC2012_val_"


def is_ilsvrc_val(path: str | Path) -> bool:
    """Imagenette's ``train/`` holds ImageNet *validation* images (``ILSVRC2012_val_*``); they are never used to
    fit, calibrate or select, so that ImageNet-val numbers of anything built here stay clean."""
    return Path(path).name.startswith(ILSVRC_VAL_PREFIX)


def _name_key(path: str) -> str:
    return hashlib.sha256(Path(path).name.encode()).hexdigest()


def split_indices(samples: Sequence[tuple[str, int]], per_class: int = SELECTION_PER_CLASS) -> dict[str, list[int]]:
    """THE selection split of a training ImageFolder (its ``samples``): indices ``fit``, ``selection``, ``excluded``.

    ``selection``: per class, the ``per_class`` files whose name has the smallest sha256 (deterministic, independent
    of the listing order, the seed and the machine), at most half of the class (a small folder keeps images to
    fit); every configuration choice (estimator, grid step, route, ...) is scored on it, never on ``val``.
    ``excluded``: ``ILSVRC2012_val_*`` files. ``fit``: the rest, the only images calibration may draw. The three
    are disjoint and cover ``samples``.
    """
    if per_class < 0:
        raise ValueError(f"selection per_class must be >= 0, got {per_class}")
    excluded = [i for i, (path, _) in enumerate(samples) if is_ilsvrc_val(path)]
    by_class: dict[int, list[int]] = {}
    for i, (path, label) in enumerate(samples):
        if not is_ilsvrc_val(path):
            by_class.setdefault(label, []).append(i)
    selection = sorted(i for idx in by_class.values()
                       for i in sorted(idx, key=lambda i: _name_key(samples[i][0]))[:min(per_class, len(idx) // 2)])
    chosen = set(selection) | set(excluded)
    return {"fit": [i for i in range(len(samples)) if i not in chosen], "selection": selection, "excluded": excluded}


def _stack(ds: Dataset, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(DataLoader(Subset(ds, list(idx)), batch_size=64, num_workers=1))
    if not batches:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def calibration_images(root: str | Path, n: int, size: int, seed: int = 0,
                       per_class: int = SELECTION_PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images drawn at random (fixed ``seed``) from the ``fit`` part of an ImageFolder (never the selection
    split, never ``ILSVRC2012_val_*``): one eval-transformed batch and its labels."""
    ds = image_folder(root, size)
    fit = split_indices(ds.samples, per_class)["fit"]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(fit), generator=g)[: min(n, len(fit))].sort().values.tolist()
    return _stack(ds, [fit[i] for i in pick])


def selection_images(root: str | Path, size: int,
                     per_class: int = SELECTION_PER_CLASS) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole selection split of the ImageFolder ``root`` (see :func:`split_indices`), eval-transformed."""
    ds = image_folder(root, size)
    return _stack(ds, split_indices(ds.samples, per_class)["selection"])
